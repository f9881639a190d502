"""A real browser: headless Chromium (Debian's, installed by third_party/bootstrap.sh), driven by
puppeteer-core (pinned in tests/browser/package-lock.json), opens a page served from another
origin that runs the official openai SDK (`dangerouslyAllowBrowser`) through the proxy: a chat
completion (JSON) whose x-request-id the page reads, and a stream whose pieces reach the page
one by one, as the mock sends them. This proves the proxy's CORS in the browser that enforces
it: the preflight allows the SDK's x-stainless-* headers, and Access-Control-Expose-Headers
lets the page read x-request-id and the rate-limit headers."""

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatCompletion, ChatStream

BROWSER_DIR = Path(__file__).resolve().parent.parent / "browser"
CHROMIUM = os.environ.get("ROUTE_CHROMIUM", "/usr/bin/chromium")
DRIVER_TIMEOUT = 75  # s: the driver's whole run, browser start included
PIECE_DELAY = 0.2  # s the mock waits before each event of the stream
PIECES = ("Hel", "lo", " from", " the", " browser")


def _installed(package):
    """The version of tests/browser/node_modules/<package>, or None."""
    try:
        return json.loads((BROWSER_DIR / "node_modules" / package / "package.json")
                          .read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def browser_dir():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are needed (third_party/bootstrap.sh installs them)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("no Chromium at %s: third_party/bootstrap.sh installs Debian's chromium "
                    "(or set ROUTE_CHROMIUM)" % CHROMIUM, pytrace=False)
    locked = json.loads((BROWSER_DIR / "package-lock.json").read_text())["packages"]
    if any(_installed(p) != locked["node_modules/" + p]["version"]
           for p in ("openai", "puppeteer-core")):
        # npm ci installs exactly the lockfile's versions; puppeteer-core never downloads a
        # browser (the variable says so to anything that might).
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True,
                       timeout=300, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, PUPPETEER_SKIP_DOWNLOAD="1"))
    return BROWSER_DIR


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the page and the openai package's files, nothing else from tests/browser."""

    extensions_map = {".html": "text/html; charset=utf-8", ".mjs": "text/javascript",
                      ".js": "text/javascript", ".json": "application/json",
                      ".map": "application/json", "": "application/octet-stream"}
    served = None  # list of paths, set per server

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=str(BROWSER_DIR), **kw)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path not in ("/page.html", "/page.mjs") and (
                not path.startswith("/node_modules/openai/") or ".." in path):
            self.send_error(404)
            return
        self.server.served.append(path)
        super().do_GET()

    def log_message(self, fmt, *args):
        pass


@pytest.fixture
def page_server():
    """The page's origin: 127.0.0.1 on a port of its own, so the proxy is another origin."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    srv.daemon_threads = True
    srv.served = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _events(out):
    return [json.loads(line) for line in (out or "").splitlines() if line.startswith("{")]


def run_driver(url):
    """Runs drive.mjs in its own process group; returns (status, its JSON lines, stderr). On a
    timeout (its own or the test's deadline) it kills the driver's group, then the browser's by
    the PID the driver announced (Chromium leads a group of its own), and fails."""
    page_timeout_ms = str((DRIVER_TIMEOUT - 15) * 1000)
    proc = subprocess.Popen([shutil.which("node") or "node", "drive.mjs", url, page_timeout_ms],
                            cwd=BROWSER_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DRIVER_TIMEOUT)
    except BaseException as e:  # TimeoutExpired, or the deadline's TimeoutError
        _kill_group(proc.pid)
        out, err = proc.communicate(timeout=10)
        # A driver that exits normally has closed its browser; a killed one could not.
        for ev in _events(out):
            if ev.get("event") == "launched" and ev.get("browser_pid"):
                _kill_group(ev["browser_pid"])
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        raise AssertionError("drive.mjs did not finish in %d s\nstdout: %s\nstderr: %s"
                             % (DRIVER_TIMEOUT, out[-3000:], err[-3000:]))
    return proc.returncode, _events(out), err


@pytest.mark.deadline(150)
def test_browser_sdk_chat_and_stream_cross_origin(browser_dir, mock, proxy_factory,
                                                  page_server):
    mock.enqueue(ChatCompletion(content="Hi from the plain mock, browser.",
                                model="gpt-4o-mini-2024", usage=(11, 6, 17),
                                headers={"x-request-id": "req_browser_plain_0001",
                                         "openai-processing-ms": "42",
                                         "x-ratelimit-remaining-requests": "4999"}))
    stream = mock.enqueue(ChatStream(pieces=PIECES, model="gpt-4o-mini-2024", delay=PIECE_DELAY,
                                     headers={"x-request-id": "req_browser_stream_0002"}))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    page_origin = "http://127.0.0.1:%d" % page_server.server_address[1]
    assert page_origin != proxy.url
    url = "%s/page.html?base=%s/v1&token=%s" % (page_origin, proxy.url, routetest.TOKEN)

    rc, events, err = run_driver(url)
    final = events[-1] if events else {}
    assert rc == 0 and final.get("event") == "result", (
        "the driver failed (status %s)\nevents: %s\nstderr: %s" % (rc, events, err[-3000:]))
    got = final["result"]
    assert got["ok"], "the page's SDK calls failed: %s\nbrowser log: %s" % (
        json.dumps(got, indent=1), "\n".join(final["log"]))

    # The page ran on its own origin and loaded the SDK from it.
    assert got["origin"] == page_origin
    assert "/node_modules/openai/index.mjs" in page_server.served
    # The browser asked before sending the SDK's headers, and the proxy let them through.
    # (Chromium caches its answer for Access-Control-Max-Age, so one may serve both calls.)
    preflights = final["preflights"]
    assert preflights, "no CORS preflight seen: %s" % final
    for p in preflights:
        assert p["method"] == "OPTIONS" and p["url"] == proxy.url + "/v1/chat/completions", p
        asked = [n.strip().lower() for n in (p["requestHeaders"] or "").split(",")]
        assert "x-stainless-os" in asked and "authorization" in asked, p
        allowed = [n.strip().lower() for n in (p["allowHeaders"] or "").split(",")]
        assert p["status"] == 200 and set(asked) <= set(allowed), p

    plain = got["plain"]
    assert plain["status"] == 200
    assert plain["content"] == "Hi from the plain mock, browser."
    assert plain["usage"]["total_tokens"] == 17
    # Readable from JS only because the proxy exposes them.
    assert plain["headers"] == {"x-request-id": "req_browser_plain_0001",
                                "openai-processing-ms": "42",
                                "x-ratelimit-remaining-requests": "4999"}
    assert plain["sdkRequestId"] == "req_browser_plain_0001"

    s = got["stream"]
    assert s["status"] == 200
    assert s["headers"]["x-request-id"] == "req_browser_stream_0002"
    assert s["text"] == "".join(PIECES)
    assert [a["piece"] for a in s["arrivals"]] == list(PIECES)
    # The mock spaced the pieces PIECE_DELAY apart: they reached the page spread over time, not
    # buffered and delivered together at the end. (Only the whole spread is checked: a busy
    # machine may stall the page long enough to merge two neighbours.)
    times = [a["ms"] / 1000.0 for a in s["arrivals"]]
    expected_spread = (len(PIECES) - 1) * PIECE_DELAY
    assert times[-1] - times[0] >= 0.75 * expected_spread, times
    assert stream.finished.is_set()

    # The mock got the upstream key, never the page's token; the proxy recorded both exchanges.
    reqs = mock.requests
    assert len(reqs) == 2, reqs
    assert all(r.header("authorization") == "Bearer " + UPSTREAM_SK for r in reqs)
    assert reqs[1].json()["stream"] is True
    rows = proxy.wait_for_records(2)
    by_response = {r["response"]: r for r in rows}
    assert set(by_response) == {"Hi from the plain mock, browser.", "".join(PIECES)}, rows
    assert all(r["status"] == 200 and r["model"] == "gpt-4o-mini" for r in rows)
