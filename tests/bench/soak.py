#!/usr/bin/python3
"""soak.py: a long run of the proxy under a bad day's load (issue 11, item 9).

For --minutes (default 10): --conns (32) keep-alive clients send a mix of JSON and SSE chat
completions, some aborting mid-answer; the upstream (tests/integration/mock_upstream.py)
answers most requests well and some with a 500, a reset, a dropped connection or a stall
past the proxy's timeouts; every 10 s the scripts are reloaded (POST /admin/reload, or the
.lua touched, in turn); every 60 s another process holds the database's write lock for 5 s
(BEGIN EXCLUSIVE). Every 10 s it samples the proxy's RSS, its open fds and records_queue_depth
from /metrics (when the build has it). At the end it stops the load, sends SIGTERM and
compares what the clients sent, the rows in `records` and the upstream counters.

Prints the samples and a verdict: RSS and fds flat (the last third of the run against the
first, after a warm-up), lost records (requests fully sent with no row), crashes (the proxy
died or exited non-zero). Exit status 1 on a crash, a lost record or no traffic; a growth of
RSS or fds is reported, and fails the run only with --strict (a 1-minute smoke run is too
short to judge it).

  tests/bench/soak.py --binary build/openai-api-route                # 10 minutes
  tests/bench/soak.py --binary build/openai-api-route --minutes 1    # the smoke run (ctest)
"""
import argparse
import http.client
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import mock_upstream as mu  # noqa: E402
import routetest as rt  # noqa: E402

SAMPLE_EVERY = 10.0
RELOAD_EVERY = 10.0
LOCK_EVERY = 60.0
LOCK_SECONDS = 5.0
# The proxy's timeouts, short so a stalled upstream costs a client seconds, not minutes.
TIMEOUTS = {"connect_timeout": 2, "timeout": 3, "stream_timeout": 3, "idle_timeout": 3}


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0  # requests whose bytes all went out (each must leave a record)
        self.answered = 0  # complete responses read
        self.aborted = 0  # the client closed mid-answer on purpose
        self.failed = 0  # the connection broke before a complete response
        self.not_sent = 0  # the request could not be written
        self.by_status = {}

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                if k == "status":
                    self.by_status[v] = self.by_status.get(v, 0) + 1
                else:
                    setattr(self, k, getattr(self, k) + v)


def upstream_answer(rng, lock):
    """The flaky upstream's choice for one request."""

    def choose(req):
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            body = {}
        with lock:
            x = rng.random()
        if x < 0.04:
            return mu.Status(500)
        if x < 0.06:
            return mu.Reset()
        if x < 0.07:
            return mu.Drop()
        if x < 0.08:
            return mu.Hang(timeout=5.0)  # past the proxy's 3 s: a timeout, then a close
        if body.get("stream"):
            return mu.ChatStream(pieces=["soak"] * 8, usage=(3, 8, 11), delay=0.002)
        return mu.ChatCompletion(content="soak " * 40)

    return choose


def request_bytes(stream, token, n):
    body = json.dumps({"model": "gpt-soak", "stream": stream,
                       "stream_options": {"include_usage": True} if stream else None,
                       "messages": [{"role": "user", "content": "soak %d" % n}]}).encode()
    head = ("POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (token, len(body)))
    return head.encode() + body


def client(port, token, stats, stop, seed):
    """One keep-alive client: mostly complete exchanges, 5% aborted after the first bytes."""
    rng = random.Random(seed)
    conn = None
    n = 0
    while not stop.is_set():
        n += 1
        stream = rng.random() < 0.5
        abort = rng.random() < 0.05
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.connect()
            data = request_bytes(stream, token, n)
            try:
                conn.sock.sendall(data)
            except OSError:
                stats.add(not_sent=1)
                conn.close()
                conn = None
                continue
            stats.add(sent=1)
            resp = http.client.HTTPResponse(conn.sock, method="POST")
            resp.begin()
            if abort:
                resp.read(rng.randint(1, 64))
                # A reset, as a client killed mid-answer.
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                conn = None
                stats.add(aborted=1)
                continue
            resp.read()
            stats.add(answered=1, status=resp.status)
            if resp.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            stats.add(failed=1)
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def metric(port, token, name):
    """A gauge from /metrics (summed over its labels), or None when absent."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
        text = c.getresponse().read().decode("utf-8", "replace")
        c.close()
    except (OSError, http.client.HTTPException):
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in (" ", "{")):
            total += float(line.rsplit(None, 1)[1])
            seen = True
    return total if seen else None


def reload_scripts(port, token, scripts_dir, turn):
    """POST /admin/reload, or (every other time) a touch of route.lua for the watcher."""
    if turn % 2:
        os.utime(scripts_dir / "route.lua")
        return "touch"
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/admin/reload", headers={"Authorization": "Bearer " + token})
        st = c.getresponse().status
        c.close()
        return "reload %d" % st
    except (OSError, http.client.HTTPException) as e:
        return "reload failed: %s" % e


LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


def verdict_flat(values, slack_abs, slack_rel):
    """Flat when the last third's peak is within the slack of the first third's (after the
    first sample, which is the warm-up)."""
    vals = values[1:] if len(values) > 3 else values
    if len(vals) < 3:
        return True, "too few samples to judge"
    third = max(1, len(vals) // 3)
    first, last = max(vals[:third]), max(vals[-third:])
    ok = last <= first * (1 + slack_rel) + slack_abs
    return ok, "first third peak %s, last third peak %s" % (first, last)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=None, help="openai-api-route (default: ROUTE_BINARY)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--strict", action="store_true", help="RSS or fd growth fails the run")
    args = ap.parse_args()
    if args.binary:
        os.environ["ROUTE_BINARY"] = str(Path(args.binary).resolve())

    tmp = Path(tempfile.mkdtemp(prefix="route-soak-"))
    scripts = tmp / "scripts"
    scripts.mkdir()
    (scripts / "route.lua").write_bytes((HERE.parent.parent / "scripts" / "route.lua").read_bytes())
    rng, rng_lock = random.Random(args.seed), threading.Lock()
    mock = mu.MockUpstream(name="soak", default=upstream_answer(rng, rng_lock)).start()
    proxy = rt.Proxy(tmp, upstreams=[("sk-soak", mock.endpoint())], config=dict(TIMEOUTS),
                     scripts_dir=scripts)
    pid, port, token = proxy.proc.pid, proxy.port, proxy.token
    print("soak: %.1f min, %d connections, proxy pid %d on port %d, folder %s"
          % (args.minutes, args.conns, pid, port, tmp), flush=True)

    stats, stop = Stats(), threading.Event()
    threads = [threading.Thread(target=client, args=(port, token, stats, stop, args.seed * 1000 + i),
                                daemon=True) for i in range(args.conns)]
    for t in threads:
        t.start()

    samples, events = [], []
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    next_sample, next_reload, next_lock = t0, t0 + RELOAD_EVERY, t0 + LOCK_EVERY / 2
    lockers, reload_turn, crashed = [], 0, None
    print("%6s %8s %5s %7s %9s %8s %8s %s" % ("t (s)", "RSS KiB", "fds", "queue", "sent",
                                            "answered", "aborted", "events"), flush=True)
    while True:
        now = time.monotonic()
        if not proxy.alive():
            crashed = "the proxy died at t=%.0f s (status %s)" % (now - t0, proxy.proc.poll())
            break
        if now >= next_reload:
            events.append(reload_scripts(port, token, scripts, reload_turn))
            reload_turn += 1
            next_reload += RELOAD_EVERY
        if now >= next_lock:
            lockers.append(subprocess.Popen([sys.executable, "-c", LOCKER, str(proxy.db_path),
                                             str(LOCK_SECONDS)]))
            events.append("db lock %gs" % LOCK_SECONDS)
            next_lock += LOCK_EVERY
        if now >= next_sample:
            try:
                s = (round(now - t0), rss_kib(pid), fd_count(pid),
                     metric(port, token, "records_queue_depth"))
            except OSError:
                continue
            samples.append(s)
            print("%6d %8d %5d %7s %9d %8d %8d %s"
                  % (s[0], s[1], s[2], "-" if s[3] is None else "%d" % s[3], stats.sent,
                     stats.answered, stats.aborted, ", ".join(events)), flush=True)
            events = []
            next_sample += SAMPLE_EVERY
        if now >= end:
            break
        time.sleep(min(0.2, max(0.0, min(next_sample, next_reload, next_lock, end) - now)))

    stop.set()
    for t in threads:
        t.join(40)
    for p in lockers:
        p.wait(30)
    exit_status = proxy.stop(timeout=60)
    mock.stop()
    if crashed is None and exit_status != 0:
        crashed = "exit status %s after SIGTERM" % exit_status

    c = sqlite3.connect(str(proxy.db_path), timeout=30)
    records = c.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    rec_status = dict(c.execute("SELECT status, COUNT(*) FROM records GROUP BY status").fetchall())
    rec_errors = c.execute("SELECT COALESCE(error, ''), COUNT(*) FROM records GROUP BY 1"
                           " ORDER BY 2 DESC LIMIT 8").fetchall()
    disconnects = c.execute("SELECT COUNT(*) FROM records WHERE error LIKE '%client%'"
                            " OR status = 499").fetchone()[0]
    counters = c.execute("SELECT COALESCE(SUM(success_count),0), COALESCE(SUM(failed_count),0)"
                         " FROM openai_upstreams").fetchone()
    c.close()
    lost = stats.sent - records
    counted = counters[0] + counters[1]
    # A client disconnect counts for no upstream; every other record is one counted attempt
    # (one upstream, so no failover).

    rss_ok, rss_why = verdict_flat([s[1] for s in samples], 8 * 1024, 0.25)
    fd_ok, fd_why = verdict_flat([s[2] for s in samples], 16, 0.0)
    print()
    print("requests: %d sent, %d answered, %d aborted by the client, %d broken, %d not sent"
          % (stats.sent, stats.answered, stats.aborted, stats.failed, stats.not_sent))
    print("answered by status: %s" % dict(sorted(stats.by_status.items())))
    print("records: %d written (by status %s); lost: %d" % (records, dict(sorted(rec_status.items())),
                                                           max(lost, 0)))
    print("records by error: %s" % ", ".join("%r: %d" % (e[:60], n) for e, n in rec_errors))
    print("counters: success %d + failed %d = %d; records less the %d client disconnects = %d%s"
          % (counters[0], counters[1], counted, disconnects, records - disconnects,
             "" if counted == records - disconnects else " (MISMATCH)"))
    print("RSS: %s (%s)" % ("flat" if rss_ok else "GROWING", rss_why))
    print("fds: %s (%s)" % ("flat" if fd_ok else "GROWING", fd_why))
    print("crashes: %s" % (crashed or "none"))
    bad = crashed is not None or lost > 0 or stats.answered == 0
    if args.strict and not (rss_ok and fd_ok):
        bad = True
    if not args.keep and not bad:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print("soak: %s" % ("FAILED" if bad else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
