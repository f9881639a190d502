// The Responses API through the proxy with the official SDK: responses.create (JSON),
// responses.create with stream: true (typed events) and the responses.stream helper
// (finalResponse). Prints one JSON line.
// Usage: ROUTE_BASE_URL=... ROUTE_TOKEN=... node responses.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.ROUTE_BASE_URL, apiKey: process.env.ROUTE_TOKEN,
                            maxRetries: 0, timeout: 20000 });

const created = await client.responses.create({ model: "gpt-4.1-mini", input: "Say hello" });

const events = [];
let deltas = "";
const raw = await client.responses.create({ model: "gpt-4.1-mini", input: "Say hello",
                                            stream: true });
for await (const ev of raw) {
  events.push(ev.type);
  if (ev.type === "response.output_text.delta") deltas += ev.delta;
}

const helper = client.responses.stream({ model: "gpt-4.1-mini", input: "Say hello" });
let helperDeltas = "";
helper.on("response.output_text.delta", (ev) => { helperDeltas += ev.delta; });
const final = await helper.finalResponse();
// The helper's final response carries output, not the output_text convenience field.
const finalText = final.output.filter((o) => o.type === "message")
  .flatMap((o) => o.content).filter((c) => c.type === "output_text").map((c) => c.text).join("");

console.log(JSON.stringify({
  created: { text: created.output_text, usage: created.usage, model: created.model },
  streamed: { deltas, events },
  helper: { text: finalText, deltas: helperDeltas, usage: final.usage },
}));
