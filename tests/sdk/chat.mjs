// Drives the official openai SDK against the proxy: one plain and one streamed chat
// completion (with include_usage), printed as one JSON line for the test to check.
// Usage: ROUTE_BASE_URL=http://127.0.0.1:PORT/v1 ROUTE_TOKEN=tok node chat.mjs
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.ROUTE_BASE_URL,
  apiKey: process.env.ROUTE_TOKEN,
  maxRetries: 0,
  timeout: 20000,
});
const messages = [{ role: "user", content: "Say hello" }];

const plain = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
let streamed = "";
let usage = null;
let chunks = 0;
const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  chunks++;
  streamed += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
console.log(JSON.stringify({
  plain: { content: plain.choices[0].message.content, usage: plain.usage, model: plain.model },
  stream: { content: streamed, usage, chunks },
}));
