// Drives the official openai SDK, with its default retries, into the proxy's two "do not
// retry blindly" answers: the upstream's own 429 (RateLimitError, Retry-After kept) and the
// 504 after a timeout (x-should-retry: false, so the SDK starts no second generation).
// Prints one JSON line. Usage: ROUTE_BASE_URL=... ROUTE_TOKEN=... node errors.mjs
import OpenAI from "openai";

const messages = [{ role: "user", content: "Say hello" }];

async function attempt(client) {
  try {
    await client.chat.completions.create({ model: "gpt-4o-mini", messages });
    return { ok: true };
  } catch (e) {
    return {
      ok: false,
      name: e.constructor.name,
      status: e.status ?? null,
      retryAfter: e.headers?.get?.("retry-after") ?? null,
      message: e.message,
    };
  }
}

// 429: no retries here, or the SDK would honour Retry-After and sleep; what matters is what
// it raises and what it was told.
const rateLimited = await attempt(new OpenAI({
  baseURL: process.env.ROUTE_BASE_URL, apiKey: process.env.ROUTE_TOKEN, maxRetries: 0,
}));
// 504: the SDK's default retries (2) stay on; x-should-retry: false must keep it at one try.
const timedOut = await attempt(new OpenAI({
  baseURL: process.env.ROUTE_BASE_URL, apiKey: process.env.ROUTE_TOKEN, timeout: 30000,
}));
console.log(JSON.stringify({ rateLimited, timedOut }));
