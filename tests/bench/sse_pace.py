#!/usr/bin/env python3
"""sse_pace.py: the paced SSE upstream and the two SSE clients of tests/bench/bench.sh.

nginx cannot pace a stream, so this asyncio server does (at 20 events per second per stream
Python is far from being the bottleneck), and the clients timestamp what they receive.

  sse_pace.py serve PORT [--events 20] [--interval-ms 50]
      An HTTP/1.1 upstream (keep-alive). Any request whose path has "hold" gets the SSE head and
      one event, then nothing until the client goes away (idle streams). Any other request
      gets EVENTS chunked SSE events INTERVAL ms apart, each carrying "t": the server's
      CLOCK_MONOTONIC in ns when it was written, then `data: [DONE]`. Prints "ready" when it
      listens.
  sse_pace.py paced NAME=URL... [--requests 5]
      One keep-alive connection per target; one stream each to warm up (not counted: the
      proxy's first upstream connection and first hook calls), then REQUESTS rounds of one
      stream per target, the targets interleaved. Prints one line per target, "NAME
      ttfb_p50_ms=.. ttfb_p99_ms=.. event_p50_ms=.. event_p99_ms=.. events=N": time from the
      request's send to the first response byte, and, for every event after the first, its
      arrival time minus the "t" the server stamped (both CLOCK_MONOTONIC on this machine).
  sse_pace.py idle URL --streams N --pid PID [--timeout 120]
      Opens N streams on the "hold" path at once, waits until each has its first event, then
      prints "streams=N rss_before_kib=.. rss_kib=.. hwm_kib=.. fds=.." for process PID (the
      proxy), and closes them all.
The URLs are http://127.0.0.1:PORT/path. The client sends `Authorization: Bearer $BENCH_TOKEN`.
"""

import argparse
import asyncio
import os
import re
import resource
import socket
import statistics
import sys
import time
from urllib.parse import urlsplit

BODY = (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Stream a few words for '
        b'the paced benchmark."}],"stream":true}')
T_RE = re.compile(rb'"t":(\d+)\}')


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def request_bytes(path, host):
    token = os.environ.get("BENCH_TOKEN", "bench")
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), host.encode(), token.encode(),
                                            len(BODY))) + BODY


# --------------------------------------------------------------------------- the server

def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def event(i):
    return (b'data: {"id":"chatcmpl-paced","object":"chat.completion.chunk","model":'
            b'"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"word %d "},'
            b'"finish_reason":null}],"t":%d}\n\n' % (i, time.monotonic_ns()))


async def serve_conn(reader, writer, events, interval):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            path = head.split(b" ", 2)[1]
            if b"hold" in path:
                writer.write(SSE_HEAD + chunk(event(0)))
                await writer.drain()
                await reader.read()  # until the client (or the proxy) goes away
                return
            writer.write(SSE_HEAD + chunk(event(0)))
            await writer.drain()
            for i in range(1, events):
                await asyncio.sleep(interval)
                writer.write(chunk(event(i)))
                await writer.drain()
            writer.write(chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port, events, interval):
    server = await asyncio.start_server(
        lambda r, w: serve_conn(r, w, events, interval), "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- the clients

def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


class PacedTarget:
    """One keep-alive connection to one target, as an SDK keeps one: the TTFB is then the
    request's way through the proxy, not a TCP accept in this Python mock."""

    def __init__(self, name, url):
        self.name, self.url = name, url
        u = urlsplit(url)
        self.req = request_bytes(u.path + ("?" + u.query if u.query else ""), u.netloc)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ttfbs, self.lat = [], []

    def stream(self, counted):
        buf = b""
        seen = 0
        first = None
        t0 = time.monotonic_ns()
        self.sock.sendall(self.req)
        # The end of the chunked body after [DONE] (every target here answers chunked).
        while not (b"[DONE]" in buf and buf.endswith(b"\r\n0\r\n\r\n")):
            data = self.sock.recv(65536)
            now = time.monotonic_ns()
            if not data:
                raise SystemExit("paced: %s closed the stream early: %r" % (self.url, buf[-300:]))
            if first is None:
                first = now
                if counted:
                    self.ttfbs.append((now - t0) / 1e6)
            buf += data
            stamps = T_RE.findall(buf)
            for i, t in enumerate(stamps[seen:], start=seen):
                if i > 0 and counted:  # the first event comes with the head: that is the TTFB
                    self.lat.append((now - int(t)) / 1e6)
            seen = len(stamps)
        if seen == 0:
            raise SystemExit("paced: no event from %s: %r" % (self.url, buf[:300]))

    def summary(self):
        return ("%s ttfb_p50_ms=%.4f ttfb_p99_ms=%.4f event_p50_ms=%.4f event_p99_ms=%.4f "
                "events=%d" % (self.name, statistics.median(self.ttfbs), pct(self.ttfbs, 99),
                               statistics.median(self.lat), pct(self.lat, 99), len(self.lat)))


def paced(targets, requests):
    ts = [PacedTarget(*t.split("=", 1)) for t in targets]
    try:
        for n in range(requests + 1):  # the targets interleaved: the same machine noise
            for t in ts:
                t.stream(counted=n > 0)
    finally:
        for t in ts:
            t.sock.close()
    for t in ts:
        print(t.summary())


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


async def idle(url, streams, pid, timeout):
    u = urlsplit(url)
    req = request_bytes(u.path, u.netloc)
    before = proc_status(pid)["VmRSS"]
    gate = asyncio.Semaphore(256)  # connects in flight: stays under every accept backlog
    writers = []

    async def one():
        async with gate:
            r, w = await asyncio.open_connection(u.hostname, u.port)
            writers.append(w)
            w.write(req)
            buf = b""
            while b"data:" not in buf:
                data = await r.read(4096)
                if not data:
                    raise ConnectionError("stream closed before its first event: %r" % buf[:200])
                buf += data

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(streams)),
                                                    return_exceptions=True), timeout)
    errors = [r for r in results if isinstance(r, BaseException)]
    st = proc_status(pid)
    fds = len(os.listdir("/proc/%d/fd" % pid))
    print("streams=%d rss_before_kib=%d rss_kib=%d hwm_kib=%d fds=%d errors=%d%s"
          % (streams - len(errors), before, st["VmRSS"], st["VmHWM"], fds, len(errors),
             (" first_error=%r" % str(errors[0])[:200].replace(" ", "_")) if errors else ""))
    for w in writers:
        w.close()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("--events", type=int, default=20)
    s.add_argument("--interval-ms", type=float, default=50)
    p = sub.add_parser("paced")
    p.add_argument("targets", nargs="+", metavar="NAME=URL")
    p.add_argument("--requests", type=int, default=5)
    i = sub.add_parser("idle")
    i.add_argument("url")
    i.add_argument("--streams", type=int, required=True)
    i.add_argument("--pid", type=int, required=True)
    i.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()
    raise_nofile()
    if a.cmd == "serve":
        asyncio.run(serve(a.port, a.events, a.interval_ms / 1000.0))
    elif a.cmd == "paced":
        paced(a.targets, a.requests)
    else:
        asyncio.run(idle(a.url, a.streams, a.pid, a.timeout))


if __name__ == "__main__":
    sys.exit(main())
