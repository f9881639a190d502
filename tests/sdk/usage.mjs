// The same streamed chat completion, without stream_options, once through the proxy (which
// forces include_usage upstream and keeps the usage chunk and "usage": null from the client)
// and once straight to the upstream: what the SDK assembles must be the same. Both the raw
// chunks of `for await` and the stream helper's finalChatCompletion() are printed, as one
// JSON line. Usage: ROUTE_BASE_URL=... ROUTE_DIRECT_URL=... ROUTE_TOKEN=... node usage.mjs
import OpenAI from "openai";

const messages = [{ role: "user", content: "Say hello" }];

async function run(baseURL) {
  const client = new OpenAI({ baseURL, apiKey: process.env.ROUTE_TOKEN, maxRetries: 0,
                              timeout: 20000 });
  const chunks = [];
  let text = "";
  const stream = await client.chat.completions.create({ model: "gpt-4o-mini", messages,
                                                        stream: true });
  for await (const chunk of stream) {
    chunks.push(chunk);
    text += chunk.choices[0]?.delta?.content ?? "";
  }
  const helper = client.chat.completions.stream({ model: "gpt-4o-mini", messages });
  const final = await helper.finalChatCompletion();
  return { text, chunks, final };
}

const proxied = await run(process.env.ROUTE_BASE_URL);
const direct = await run(process.env.ROUTE_DIRECT_URL);
console.log(JSON.stringify({ proxied, direct }));
