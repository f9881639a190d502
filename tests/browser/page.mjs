// Runs in the browser page: one chat completion (JSON) and one streamed chat completion through
// the proxy with the official openai SDK, then leaves what it saw in window.__result for the
// driver (drive.mjs). Each streamed piece is stamped with the time it reached the page, so the
// test can tell a real stream from a body buffered and delivered at once.
import OpenAI from "openai";

const params = new URLSearchParams(location.search);
const client = new OpenAI({
  baseURL: params.get("base"),
  apiKey: params.get("token"),
  dangerouslyAllowBrowser: true,
  maxRetries: 0,
  timeout: 20000,
});
const messages = [{ role: "user", content: "Say hello" }];

// The headers a browser app reads; without Access-Control-Expose-Headers they read as null.
function exposed(headers) {
  const out = {};
  for (const name of ["x-request-id", "openai-processing-ms", "x-ratelimit-remaining-requests"]) {
    out[name] = headers.get(name);
  }
  return out;
}

async function run() {
  const plain = await client.chat.completions.create({ model: "gpt-4o-mini", messages })
    .withResponse();

  const started = performance.now();
  const streamed = await client.chat.completions
    .create({ model: "gpt-4o-mini", messages, stream: true })
    .withResponse();
  const headersAt = performance.now() - started;
  const arrivals = [];
  let text = "";
  for await (const chunk of streamed.data) {
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) {
      arrivals.push({ piece, ms: performance.now() - started });
      text += piece;
    }
  }
  return {
    origin: location.origin,
    plain: {
      content: plain.data.choices[0].message.content,
      model: plain.data.model,
      usage: plain.data.usage,
      status: plain.response.status,
      headers: exposed(plain.response.headers),
      sdkRequestId: plain.data._request_id ?? null,
    },
    stream: {
      text,
      arrivals,
      headersAt,
      status: streamed.response.status,
      headers: exposed(streamed.response.headers),
    },
  };
}

run().then(
  (result) => {
    window.__result = { ok: true, ...result };
    document.getElementById("out").textContent = "done";
  },
  (err) => {
    window.__result = {
      ok: false,
      error: String(err),
      name: err?.constructor?.name ?? null,
      cause: err?.cause ? String(err.cause) : null,
      stack: err?.stack ?? null,
    };
    document.getElementById("out").textContent = "failed: " + String(err);
  },
);
