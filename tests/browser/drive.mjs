// Opens a page in headless Chromium (Debian's /usr/bin/chromium, or $ROUTE_CHROMIUM) through
// puppeteer-core, waits for the page to leave window.__result, and prints JSON lines:
//   {"event":"launched","browser_pid":N}   as soon as the browser runs (Chromium leads its own
//                                          process group, so the test can end it by that PID
//                                          if this driver is killed)
//   {"event":"result","result":...,"log":[...],"preflights":[...]}   at the end
//   {"event":"error","error":"..."}        instead, when something failed
// The browser is always closed before this exits. Exit status 0 when a result was printed.
// Usage: node drive.mjs <page-url> [timeout-ms]
import { accessSync, constants } from "node:fs";
import puppeteer from "puppeteer-core";

const [url, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg ?? 30000);
const executablePath = process.env.ROUTE_CHROMIUM || "/usr/bin/chromium";

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

if (!url) {
  emit({ event: "error", error: "usage: node drive.mjs <page-url> [timeout-ms]" });
  process.exit(2);
}
try {
  accessSync(executablePath, constants.X_OK);
} catch {
  emit({
    event: "error",
    error: `no Chromium at ${executablePath} (third_party/bootstrap.sh installs Debian's chromium)`,
  });
  process.exit(2);
}

let browser;
try {
  browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // CI runs as root, where Chromium's sandbox cannot start; a container's /dev/shm may be
    // too small for it.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
      "--no-default-browser-check"],
    timeout: timeoutMs,
    protocolTimeout: timeoutMs,
  });
} catch (err) {
  emit({ event: "error", error: `Chromium did not start: ${err?.stack ?? err}` });
  process.exit(1);
}
emit({ event: "launched", browser_pid: browser.process()?.pid ?? null });

const log = [];
const preflights = [];
let status = 1;
try {
  const page = await browser.newPage();
  page.on("console", (m) => log.push(`console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => log.push(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => log.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  // Chromium shows a CORS preflight on the DevTools protocol as an OPTIONS request whose
  // initiator is "preflight"; its answer says which request headers the server allowed.
  const cdp = await page.createCDPSession();
  await cdp.send("Network.enable");
  const header = (headers, name) =>
    Object.entries(headers ?? {}).find(([k]) => k.toLowerCase() === name)?.[1] ?? null;
  const preflightById = new Map();
  cdp.on("Network.requestWillBeSent", (e) => {
    if (e.initiator?.type !== "preflight" && e.request.method !== "OPTIONS") return;
    const p = {
      url: e.request.url,
      method: e.request.method,
      requestHeaders: header(e.request.headers, "access-control-request-headers"),
      status: null,
      allowHeaders: null,
    };
    preflightById.set(e.requestId, p);
    preflights.push(p);
  });
  cdp.on("Network.responseReceived", (e) => {
    const p = preflightById.get(e.requestId);
    if (!p) return;
    p.status = e.response.status;
    p.allowHeaders = header(e.response.headers, "access-control-allow-headers");
  });

  await page.goto(url, { waitUntil: "load", timeout: timeoutMs });
  await page.waitForFunction(() => window.__result !== undefined, { timeout: timeoutMs });
  const result = await page.evaluate(() => window.__result);
  emit({ event: "result", result, log, preflights });
  status = 0;
} catch (err) {
  emit({ event: "error", error: String(err?.stack ?? err), log, preflights });
} finally {
  await browser.close();
}
process.exit(status);
