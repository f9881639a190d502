#!/usr/bin/env python3
"""bench_records_query.py: filtered GET /admin/request_records on a large `records` table,
through the real binary (issue 10, item 8: "with 1,000,000 rows a filtered page answers in
< 50 ms").

Usage: tests/bench/bench_records_query.py [--rows N] [--quick] [--binary PATH] [--db PATH]
           [--reps N] [--keep] [--check]

  --rows    rows to generate (default 1,000,000)
  --quick   20,000 rows and 3 repetitions: a few seconds, for ctest (bench.records_query); the
            numbers mean nothing there, --check only proves every query answers correctly
  --db      reuse (or, when missing, generate and keep) this database file
  --check   exit 1 unless every query answered 200 with the rows it should
  --keep    keep the work folder

What it does:
  1. a database with the binary's schema (`-set authorization=...`), its records indexes
     dropped, so the first start shows what an existing large file pays once; then N rows in
     one transaction through one prepared INSERT: ~1.1 KB of body and response each, 8 models
     (one of them 0.1% of the rows), status 200 (96%), 429, 500 and 400, upstreams 1..4 (0 for
     a few), created_at over the last 30 days in time order, as the store writes it
     ("2023-08-10 13:32:51.123456789+08:00");
  2. the server started on it: the time to accept connections, and the index build the store
     logs ("store: built 4 index(es) of records in X s");
  3. each query below --reps times on one keep-alive connection (a warm-up first): min, median,
     p95, max of the client-side time in ms, and the rows each page returned.
Python 3 standard library only. Never run by the pass/fail suite except --quick.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

TOKEN = "bench-records-token"
DAY = 86400
MODELS = [("gpt-4o-mini", 40), ("gpt-4o", 25), ("gpt-4.1", 12), ("o3-mini", 8),
          ("claude-via-proxy", 6), ("text-embedding-3-small", 5), ("whisper-1", 3.9),
          ("gpt-rare", 0.1)]
STATUSES = [(200, 96), (429, 2), (500, 1), (400, 1)]


def pick_table(pairs, n, rng):
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs], k=n)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def db_text(epoch, frac_ns, offset_h=8):
    t = time.gmtime(epoch + offset_h * 3600)
    return "%04d-%02d-%02d %02d:%02d:%02d.%09d+%02d:00" % (
        t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, frac_ns, offset_h)


def generate(binary, db, rows, now):
    r = subprocess.run([binary, "-database", str(db), "-set", "authorization=" + TOKEN],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        sys.exit("cannot create the database: " + r.stderr)
    c = sqlite3.connect(str(db))
    for name in ("idx_records_created_at", "idx_records_model", "idx_records_failed",
                 "idx_records_upstream_id"):
        c.execute("DROP INDEX IF EXISTS %s" % name)
    rng = random.Random(42)
    models = pick_table(MODELS, rows, rng)
    statuses = pick_table(STATUSES, rows, rng)
    user = "Summarize the following text in three sentences. " * 12
    bodies = {m: json.dumps({"model": m, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": user}], "stream": False}) for m, _ in MODELS}
    response = "Here is a summary of the text in three sentences. " * 8
    start = now - 30 * DAY
    step = 30 * DAY / rows

    def gen():
        for i in range(rows):
            t = start + i * step
            sec = int(t)
            st = statuses[i]
            yield ("%08x-0000-7000-8000-%012x" % (sec, i), db_text(sec, int((t - sec) * 1e9)),
                   "10.0.%d.%d" % (i % 200, i % 250), bodies[models[i]],
                   response if st == 200 else "", 1500000000 + i % 1000, models[i], st,
                   0 if i % 97 == 0 else 1 + i % 4, "https://api%d.example/v1" % (i % 4),
                   50, 120, 170, 300000000, "OpenAI/Python 1.51.0",
                   "" if st == 200 else "upstream said %d" % st)

    t0 = time.monotonic()
    c.execute("BEGIN")
    c.executemany("INSERT INTO records (id, created_at, ip, body, response, elapsed_time, model,"
                  " status, upstream_id, upstream_endpoint, prompt_tokens, completion_tokens,"
                  " total_tokens, response_time, user_agent, error)"
                  " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", gen())
    c.execute("COMMIT")
    c.close()
    return time.monotonic() - t0


class Server:
    def __init__(self, binary, db, work):
        self.port = free_port()
        scripts = work / "scripts"
        scripts.mkdir(exist_ok=True)
        self.err_path = work / "server.stderr"
        self.err = open(self.err_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen([binary, "-addr", "127.0.0.1:%d" % self.port, "-database",
                                      str(db), "-scripts", str(scripts)],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = t0 + 600
        while True:
            if self.proc.poll() is not None:
                sys.exit("the server exited: " + self.err_path.read_text())
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    sys.exit("the server did not start within 600 s")
                time.sleep(0.05)
        self.start_s = time.monotonic() - t0

    def log(self):
        return self.err_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


def instant(text):
    """RFC 3339 with up to 9 fraction digits, as seconds since the epoch."""
    head, dot, rest = text.partition(".")
    if dot:
        i = 0
        while i < len(rest) and rest[i].isdigit():
            i += 1
        text = head + "." + rest[:i][:6].ljust(6, "0") + rest[i:]
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def cases(now):
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    mid = now - 15 * DAY
    return [
        ("newest page, no filter", "", None),
        ("model (40% of rows)", "model=gpt-4o-mini", lambda r: r["Model"] == "gpt-4o-mini"),
        ("model (0.1% of rows)", "model=gpt-rare", lambda r: r["Model"] == "gpt-rare"),
        ("status=500 (1%)", "status=500", lambda r: r["Status"] == 500),
        ("status=200 (96%: the time index)", "status=200", lambda r: r["Status"] == 200),
        ("status=200 + since", "status=200&since=" + iso(now - 7 * DAY),
         lambda r: r["Status"] == 200),
        ("rare model + status=200", "model=gpt-rare&status=200",
         lambda r: r["Model"] == "gpt-rare" and r["Status"] == 200),
        ("upstream_id=3", "upstream_id=3", lambda r: r["UpstreamID"] == 3),
        ("since 7 days ago", "since=" + iso(now - 7 * DAY), None),
        ("one hour 15 days ago", "since=%s&until=%s" % (iso(mid), iso(mid + 3600)), None),
        ("model + status=429", "model=gpt-4o&status=429",
         lambda r: r["Model"] == "gpt-4o" and r["Status"] == 429),
        ("model + status + since", "model=gpt-4o&status=429&since=" + iso(now - 10 * DAY),
         lambda r: r["Model"] == "gpt-4o" and r["Status"] == 429),
        ("rare model + upstream", "model=gpt-rare&upstream_id=2",
         lambda r: r["Model"] == "gpt-rare" and r["UpstreamID"] == 2),
        ("model, offset 10000", "model=gpt-4o-mini&offset=10000",
         lambda r: r["Model"] == "gpt-4o-mini"),
        ("no match", "model=nope", None),
    ]


def run_queries(port, now, reps):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    hdr = {"Authorization": "Bearer " + TOKEN}
    results, ok = [], True
    for name, query, pred in cases(now):
        path = "/admin/request_records" + ("?" + query if query else "")
        times, rows, size, good = [], 0, 0, True
        for i in range(reps + 1):
            t0 = time.perf_counter()
            conn.request("GET", path, headers=hdr)
            resp = conn.getresponse()
            body = resp.read()
            dt = (time.perf_counter() - t0) * 1000
            if i:  # the first is a warm-up
                times.append(dt)
            if resp.status != 200:
                good = False
                continue
            page = json.loads(body)
            rows, size = len(page), len(body)
            stamps = [instant(r["CreatedAt"]) for r in page]
            if pred and not all(pred(r) for r in page):
                good = False
            if stamps != sorted(stamps, reverse=True):
                good = False
        if query == "model=nope" and rows:
            good = False
        ok &= good
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        results.append((name, query, rows, size, times[0], statistics.median(times), p95,
                        times[-1], good))
    conn.close()
    return results, ok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--binary", default=str(Path(__file__).resolve().parents[2] / "build" /
                                            "openai-api-route"))
    ap.add_argument("--db")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.reps = 20000, 3
    work = Path(tempfile.mkdtemp(prefix="bench-records-"))
    db = Path(a.db) if a.db else work / "db.sqlite"
    now = int(time.time())
    gen_s = None
    if not db.exists():
        gen_s = generate(a.binary, db, a.rows, now)
    else:  # a kept database: its rows end when it was made
        c = sqlite3.connect(str(db))
        a.rows = c.execute("SELECT count(*) FROM records").fetchone()[0]
        c.close()
    server = Server(a.binary, db, work)
    try:
        results, ok = run_queries(server.port, now, a.reps)
    finally:
        server.stop()
    built = [l for l in server.log().splitlines() if "index(es) of records" in l]
    print("## records query, %d rows (%s, %.0f MB)\n" % (a.rows, db, db.stat().st_size / 1e6))
    if gen_s is not None:
        print("- generated in %.1f s (one transaction, one prepared INSERT)" % gen_s)
    print("- first start: accepting after %.2f s; %s" % (
        server.start_s, built[0].split("store: ")[-1] if built else "no index to build"))
    print("- %d timed requests per query on one keep-alive connection, after a warm-up\n" % a.reps)
    print("| query | parameters | rows | bytes | min ms | median ms | p95 ms | max ms | ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, q, rows, size, mn, med, p95, mx, good in results:
        print("| %s | `%s` | %d | %d | %.1f | %.1f | %.1f | %.1f | %s |" % (
            name, q or "-", rows, size, mn, med, p95, mx, "yes" if good else "NO"))
    if a.keep or a.db:
        print("\nwork folder: %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if a.check and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
