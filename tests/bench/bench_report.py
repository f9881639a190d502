#!/usr/bin/env python3
"""bench_report.py RUNS_DIR OUT_FILE [--check]: the tables of tests/bench/bench.sh.

Reads what bench.sh left in RUNS_DIR (raw wrk outputs, CPU tick deltas, memory figures, the
paced and idle clients' lines), prints markdown tables and writes them to OUT_FILE.
--check: exit 1 when a target answered with errors or a cell of a table has no value (the
numbers themselves never decide anything).
"""

import os
import re
import statistics
import sys
from pathlib import Path

TARGETS = ["direct", "nginx", "haproxy", "route", "quiet", "meta", "unrec", "engine"]
LABELS = {
    "direct": "direct to the mock (ceiling)",
    "nginx": "nginx `proxy_pass`, 1 worker, keepalive pool, `proxy_buffering off`",
    "haproxy": "HAProxy, `nbthread 1`, `http-reuse always`, `option http-no-delay`",
    "route": "openai-api-route, default hooks + recording (+ metrics, access log; force_stream_usage=0)",
    "quiet": "openai-api-route, the same with the access log off (`access_log=0`)",
    "meta": "openai-api-route, the same with rows without the texts (`records_bodies=0`)",
    "unrec": "openai-api-route, the same with every row vetoed (default authorize and pick in C)",
    "engine": "openai-api-route, engine alone (hooks return at once, no records, no access log)",
}
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def ms(text):
    m = re.match(r"^([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(path):
    t = path.read_text(errors="replace")
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    r["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", t)
    r["requests"] = int(m.group(1)) if m else 0
    for p in ("50", "99"):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+(\S+)" % p, t, re.M)
        r["p" + p] = ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    r["sockerr"] = sum(map(int, m.groups())) if m else 0
    cpu = path.with_suffix(".cpu")
    if cpu.exists():
        ticks = int(cpu.read_text().split("=")[1])
        r["cpu10k"] = (ticks / CLK_TCK) / r["requests"] * 10000 if r["requests"] else None
    return r


def kv(path):
    try:
        return dict(x.split("=", 1) for x in path.read_text().split() if "=" in x)
    except OSError:
        return {}


def med(values):
    v = [x for x in values if x is not None]
    return statistics.median(v) if v else None


def fmt(x, nd=2):
    if x is None:
        return "?"
    if isinstance(x, str):
        return x
    if abs(x) >= 1000:
        return "{:,.0f}".format(x)
    return "%.*f" % (nd, x)


def ratio(a, b):
    return "%.2f×" % (a / b) if a is not None and b else "?"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def main():
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    check = "--check" in sys.argv[3:]
    meta = {}
    for line in (runs / "meta").read_text().splitlines():
        k, _, v = line.partition("=")
        meta[k] = v
    problems = []

    res = {}  # (kind, target, mode) -> list of parsed runs
    for f in sorted(runs.glob("*.wrk")):
        kind, target, mode, _ = f.name[:-4].split(".")
        r = parse_wrk(f)
        res.setdefault((kind, target, mode), []).append(r)
        if kind != "perf" and (r["rps"] is None or r["requests"] == 0 or r["non2xx"]):
            problems.append("%s: %d requests, %d non-2xx: %s" % (
                f.name, r["requests"], r["non2xx"], f.read_text(errors="replace")[-300:]))

    def m(kind, target, mode, key):
        return med([r.get(key) for r in res.get((kind, target, mode), [])])

    sockerr = {t: sum(r["sockerr"] for k, v in res.items() if k[1] == t for r in v)
               for t in TARGETS}

    lines = ["# openai-api-route benchmark", "",
             "%s; %s; nginx %s, HAProxy %s, wrk %s; binary `%s`." % (
                 meta["date"], meta["cpu"], meta["nginx"], meta["haproxy"], meta["wrk"],
                 meta["binary"]),
             "wrk -t1 -c32, POST of a 190-byte chat request with `Authorization: Bearer`; "
             "a 613-byte chat.completion JSON or a 12.8 KB SSE stream of 40 chunks served from "
             "memory by an nginx mock. %s; medians of %s interleaved round(s) of %s s per run.%s"
             % ("wrk and the mocks pinned to core 0, the proxy to core 1"
                if meta["pinned"] == "1" else "not pinned", meta["rounds"], meta["duration"],
                " **--quick: the numbers mean nothing.**" if meta["quick"] == "1" else ""), ""]

    head = ["target", "JSON req/s", "SSE req/s", "JSON p50 ms", "JSON p99 ms", "SSE p50 ms",
            "SSE p99 ms", "JSON ×direct", "JSON ×nginx", "JSON ×HAProxy", "SSE ×direct",
            "SSE ×nginx", "SSE ×HAProxy", "RSS idle MiB", "RSS peak MiB",
            "CPU s/10k JSON", "CPU s/10k SSE"]
    rps = {(t, md): m("c32", t, md, "rps") for t in TARGETS for md in ("json", "sse")}
    rows = []
    for t in TARGETS:
        mem = kv(runs / ("mem." + t))
        is_direct = t == "direct"
        rows.append([
            LABELS[t], fmt(rps[t, "json"]), fmt(rps[t, "sse"]),
            fmt(m("c32", t, "json", "p50")), fmt(m("c32", t, "json", "p99")),
            fmt(m("c32", t, "sse", "p50")), fmt(m("c32", t, "sse", "p99")),
            ratio(rps[t, "json"], rps["direct", "json"]),
            ratio(rps[t, "json"], rps["nginx", "json"]),
            ratio(rps[t, "json"], rps["haproxy", "json"]),
            ratio(rps[t, "sse"], rps["direct", "sse"]),
            ratio(rps[t, "sse"], rps["nginx", "sse"]),
            ratio(rps[t, "sse"], rps["haproxy", "sse"]),
            "-" if is_direct else fmt(int(mem["idle_kib"]) / 1024 if "idle_kib" in mem else None, 1),
            "-" if is_direct else fmt(int(mem["hwm_kib"]) / 1024 if "hwm_kib" in mem else None, 1),
            "-" if is_direct else fmt(m("c32", t, "json", "cpu10k"), 3),
            "-" if is_direct else fmt(m("c32", t, "sse", "cpu10k"), 3),
        ])
    lines += table(head, rows)
    errs = ", ".join("%s %d" % (t, n) for t, n in sockerr.items() if n)
    if errs:
        lines += ["", "wrk socket errors (all runs): " + errs]

    def cost(what, it, with_t, without_t):
        """A feature's cost: with_t has it, without_t is the same target without it."""
        return ["", "%s (same run): JSON %s, SSE %s of the throughput without %s; CPU per 10k "
                "JSON requests %s with %s, %s without." % (
                    what, ratio(rps[with_t, "json"], rps[without_t, "json"]),
                    ratio(rps[with_t, "sse"], rps[without_t, "sse"]), it,
                    fmt(m("c32", with_t, "json", "cpu10k"), 3), it,
                    fmt(m("c32", without_t, "json", "cpu10k"), 3))]

    lines += cost("The access log's cost", "it", "route", "quiet")
    lines += cost("The records' cost, the access log off in both", "them", "quiet", "unrec")
    lines += cost("The texts' cost in the records (body and response)", "them", "quiet", "meta")

    lines += ["", "## One connection (`wrk -t1 -c1`, JSON)", ""]
    d50, d99 = m("c1", "direct", "json", "p50"), m("c1", "direct", "json", "p99")
    rows = []
    for t in TARGETS:
        p50, p99 = m("c1", t, "json", "p50"), m("c1", t, "json", "p99")
        rows.append([LABELS[t], fmt(m("c1", t, "json", "rps")), fmt(p50, 3), fmt(p99, 3),
                     "-" if t == "direct" else fmt(p50 - d50 if None not in (p50, d50) else None, 3),
                     "-" if t == "direct" else fmt(p99 - d99 if None not in (p99, d99) else None, 3)])
    lines += table(["target", "req/s", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"], rows)

    lines += ["", "## Paced SSE (%s events %s ms apart, %s stream(s) per target)" % (
        meta["events"].split()[0], kv(runs / "meta").get("interval_ms", "?"),
        kv(runs / "meta").get("paced_requests", "?")), ""]
    paced = {t: kv(runs / ("paced." + t)) for t in ("direct", "nginx", "haproxy", "route")}
    for t, v in paced.items():
        if "event_p50_ms" not in v:
            problems.append("paced %s: %s" % (t, (runs / ("paced." + t)).read_text()[-300:]))

    def pf(t, k):
        v = paced[t].get(k)
        return float(v) if v is not None else None

    rows = []
    for t in paced:
        ttfb, ev = pf(t, "ttfb_p50_ms"), pf(t, "event_p50_ms")
        dt, de = pf("direct", "ttfb_p50_ms"), pf("direct", "event_p50_ms")
        rows.append([LABELS[t], fmt(ttfb, 3),
                     "-" if t == "direct" else fmt(ttfb - dt if None not in (ttfb, dt) else None, 3),
                     fmt(ev, 3),
                     "-" if t == "direct" else fmt(ev - de if None not in (ev, de) else None, 3),
                     fmt(pf(t, "event_p99_ms"), 3)])
    lines += table(["target", "TTFB p50 ms", "added TTFB ms", "event delay p50 ms",
                    "added per event ms", "event delay p99 ms"], rows)

    idle = kv(runs / "idle.route")
    lines += ["", "## Idle SSE streams through openai-api-route (default hooks)", ""]
    n = int(idle["streams"]) if "streams" in idle else None
    per = ((int(idle["rss_kib"]) - int(idle["rss_before_kib"])) / n
           if n and "rss_kib" in idle else None)
    if n is None or int(idle.get("errors", "1")):
        problems.append("idle streams: %s" % (runs / "idle.route").read_text()[-400:])
    lines += table(["streams open (asked)", "fd limit", "RSS before MiB", "RSS with streams MiB",
                    "KiB per stream", "proxy fds"],
                   [["%s (%s)" % (fmt(n, 0) if n is not None else "?", idle.get("asked", "?")),
                     idle.get("fd_limit", "?"),
                     fmt(int(idle["rss_before_kib"]) / 1024 if "rss_before_kib" in idle else None, 1),
                     fmt(int(idle["rss_kib"]) / 1024 if "rss_kib" in idle else None, 1),
                     fmt(per, 1), idle.get("fds", "?")]])
    lines += ["", "Each stream holds two fds in the proxy (client and upstream sockets): with a "
              "hard limit of %s, %s streams fit. Errors: %s." % (
                  idle.get("fd_limit", "?"), idle.get("streams", "?"), idle.get("errors", "?"))]

    rec = kv(runs / "records.route")
    done = sum(r["requests"] for k, v in res.items() if k[1] == "route" for r in v)
    lines += ["", "Records written by the default-hooks target: %s rows for %s completed "
              "requests by wrk (warm-up and profile runs included; plus the check requests and those in flight when a run ended)."
              % (rec.get("rows", "?"), "{:,}".format(done))]

    text = "\n".join(lines) + "\n"
    out.write_text(text)
    print(text)
    print("written to %s" % out)
    if check:
        for ln in lines:
            if ln.startswith("| ") and not ln.startswith("| target") and (
                    "| ? " in ln or ln.rstrip().endswith("| ?") or "| ? |" in ln):
                problems.append("a cell has no value: " + ln)
        if problems:
            print("bench.sh --check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        print("bench.sh --check: every target answered, every column has a value")
    return 0


if __name__ == "__main__":
    sys.exit(main())
