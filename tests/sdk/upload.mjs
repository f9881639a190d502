// A 40 MiB upload (over the proxy's 32 MiB limit) through Node's fetch and through the
// official SDK's files.create, 10 times each: every try must read the proxy's 413 (no EPIPE,
// no "Connection error"). Driven by tests/integration/test_sdk_upload.py; prints one JSON line.
// Usage: ROUTE_BASE_URL=http://.../v1 ROUTE_TOKEN=... node upload.mjs
import OpenAI, { toFile } from "openai";

const TRIES = 10;
const base = process.env.ROUTE_BASE_URL;
const token = process.env.ROUTE_TOKEN;
const big = Buffer.alloc(40 * 1024 * 1024, 0x61);

function describe(e) {
  const cause = e.cause ? ` (${e.cause.code || e.cause.message || e.cause})` : "";
  return `${e.constructor.name}: ${e.message}${cause}`;
}

const fetched = [];
for (let i = 0; i < TRIES; i++) {
  try {
    const r = await fetch(`${base}/files`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/octet-stream" },
      body: big,
    });
    const body = await r.json().catch(() => null);
    fetched.push({ status: r.status, type: body?.error?.type ?? null });
  } catch (e) {
    fetched.push({ status: null, error: describe(e) });
  }
}

// No retries: a connection error must show, not be papered over by a second try.
const client = new OpenAI({ baseURL: base, apiKey: token, maxRetries: 0, timeout: 60000 });
const sdk = [];
for (let i = 0; i < TRIES; i++) {
  try {
    await client.files.create({ file: await toFile(big, "big.jsonl"), purpose: "fine-tune" });
    sdk.push({ status: 200 });
  } catch (e) {
    sdk.push({ status: e.status ?? null, name: e.constructor.name, error: describe(e) });
  }
}
console.log(JSON.stringify({ fetched, sdk }));
