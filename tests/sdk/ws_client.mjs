// A WebSocket client (the `ws` package, as Node apps use for the Realtime API) through the
// proxy. Driven by tests/integration/test_websocket.py; prints one JSON line.
// Usage: ROUTE_WS_URL=ws://127.0.0.1:PORT/v1/realtime?model=x ROUTE_TOKEN=... node ws_client.mjs SCENARIO
//   exchange      text and binary frames both ways, then the upstream closes (code, reason)
//   client-close  the client closes first
//   idle          opens, then stays silent until the connection closes
//   rejected      expects no upgrade: reports the HTTP status and body it got instead
import WebSocket from "ws";

const scenario = process.argv[2] || "exchange";
const url = process.env.ROUTE_WS_URL;
const headers = { Authorization: "Bearer " + process.env.ROUTE_TOKEN, "OpenAI-Beta": "realtime=v1" };
const out = { scenario, messages: [], opened: false };
const started = Date.now();

function finish(extra) {
  console.log(JSON.stringify({ ...out, ...extra, ms: Date.now() - started }));
  process.exit(0);
}
setTimeout(() => finish({ error: "client timed out" }), 20000).unref();

const ws = new WebSocket(url, ["realtime", "openai-beta.realtime-v1"], { headers });
const big = Buffer.alloc(300 * 1024);
for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;

ws.on("unexpected-response", (req, res) => {
  let body = "";
  res.setEncoding("utf8");
  res.on("data", (d) => (body += d));
  res.on("end", () => finish({ status: res.statusCode, body, headers: res.headers }));
});
ws.on("error", (e) => { out.error = String(e.message || e); });
ws.on("open", () => { out.opened = true; out.protocol = ws.protocol; });
ws.on("message", (data, isBinary) => {
  const m = isBinary ? { binary: data.length, sha: checksum(data) } : { text: data.toString() };
  out.messages.push(m);
  if (scenario === "exchange") {
    if (m.text === "hello from upstream") ws.send("ping-text");
    else if (m.text === "echo:ping-text") ws.send(Buffer.from([1, 2, 3, 250, 0]));
    else if (m.binary === 5) ws.send(big);
    else if (m.binary === big.length) ws.send("close-please");
  } else if (scenario === "client-close" && m.text === "hello from upstream") {
    ws.close(4002, "client done");
  }
});
ws.on("close", (code, reason) => finish({ closeCode: code, closeReason: reason.toString() }));

function checksum(buf) {
  let s = 0;
  for (const b of buf) s = (s * 31 + b) >>> 0;
  return s;
}
