// A streamed chat completion whose upstream breaks mid-stream: the SDK must raise (the proxy
// ends the stream with an error event) instead of returning the cut text as if complete.
// Prints one JSON line. Usage: ROUTE_BASE_URL=... ROUTE_TOKEN=... node stream_error.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.ROUTE_BASE_URL, apiKey: process.env.ROUTE_TOKEN,
                            maxRetries: 0, timeout: 20000 });
let text = "";
let raised = null;
try {
  const stream = await client.chat.completions.create({
    model: "gpt-4o-mini", messages: [{ role: "user", content: "Say hello" }], stream: true,
  });
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
} catch (e) {
  raised = { name: e.constructor.name, message: e.message, type: e.type ?? e.error?.type ?? null };
}
console.log(JSON.stringify({ text, raised }));
