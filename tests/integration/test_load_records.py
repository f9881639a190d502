"""Records under full load (issue 8, "Tests that must exist"): 20,000 requests at full speed on
32 keep-alive connections, JSON and SSE mixed, through the proxy with its default hooks to a
fast C upstream; then SIGTERM. Every request must have its `records` row and its success
counted: exactly 20,000 rows, `success_count` summed over upstreams 20,000, no failure.

The load comes from tests/bench/loadgen.c (C, epoll + llhttp: it sends exactly N requests and
counts every answer) and the upstream is tests/bench/fast_upstream.c (canned JSON, or a 40-chunk
SSE stream when the body has "stream":true). ctest passes their paths in ROUTE_LOADGEN and
ROUTE_FAST_UPSTREAM, as it passes ROUTE_BINARY; without them the test looks in the build
folders and skips when they are not built.
"""

import glob
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

import routetest
from conftest import UPSTREAM_SK

REQUESTS = 20000
CONNECTIONS = 32
LOADGEN_TIMEOUT = 90.0


def helper_binary(env_name, file_name):
    env = os.environ.get(env_name)
    if env:
        if not os.access(env, os.X_OK):
            pytest.fail("%s=%s is not an executable file" % (env_name, env), pytrace=False)
        return env
    root = routetest.repo_root()
    for c in sorted(glob.glob(str(root / "build*" / "tests" / file_name))):
        if os.access(c, os.X_OK):
            return c
    pytest.skip("%s is not built (set %s or build in %s/build)" % (file_name, env_name, root))


@pytest.fixture
def fast_upstream():
    """A started fast_upstream on a port it chose; yields its endpoint; killed after."""
    path = helper_binary("ROUTE_FAST_UPSTREAM", "fast_upstream")
    proc = subprocess.Popen([path, "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("port "), "fast_upstream did not start: %r %r" % (
            line, proc.stderr.read1(4096) if proc.poll() is not None else b"")
        yield "http://127.0.0.1:%d/v1" % int(line.split()[1])
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.deadline(150)
def test_every_request_of_a_full_speed_run_has_its_record(proxy_factory, fast_upstream,
                                                          tmp_path):
    loadgen = helper_binary("ROUTE_LOADGEN", "loadgen")
    # warn: no log line per request, so the run measures the request path, not the log file.
    p = proxy_factory(upstreams=[(UPSTREAM_SK, fast_upstream)],
                      env={"ROUTE_LOG_LEVEL": "warn"})
    started = time.monotonic()
    cp = subprocess.run([loadgen, "-port", str(p.port), "-n", str(REQUESTS), "-c",
                         str(CONNECTIONS), "-sse-every", "2", "-token", p.token,
                         "-timeout", str(LOADGEN_TIMEOUT)],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=LOADGEN_TIMEOUT + 15)
    elapsed = time.monotonic() - started
    summary = dict(kv.split("=", 1) for kv in cp.stdout.split())
    assert cp.returncode == 0, "loadgen: %s %s" % (cp.stdout, cp.stderr)
    assert int(summary["answered"]) == REQUESTS and int(summary["status_2xx"]) == REQUESTS
    assert int(summary["sse_done"]) == REQUESTS // 2, summary

    rc = p.stop()
    assert rc == 0 and not p.killed, "SIGTERM after the run: exit status %r, killed %r\n%s" % (
        rc, p.killed, p.stderr_text()[-3000:])

    rows = routetest.db_query(p.db_path, "SELECT COUNT(*) AS n, SUM(status = 200) AS ok"
                                         " FROM records")[0]
    ups = routetest.db_query(p.db_path, "SELECT SUM(success_count) AS s,"
                                        " SUM(failed_count) AS f FROM openai_upstreams")[0]
    print("loadgen: %s (%.1f s); records %r; upstreams %r" % (cp.stdout.strip(), elapsed,
                                                            rows, ups))
    assert rows["n"] == REQUESTS, "records rows: %d, expected %d" % (rows["n"], REQUESTS)
    assert rows["ok"] == REQUESTS, "rows with status 200: %d" % rows["ok"]
    assert ups["s"] == REQUESTS, "success_count summed: %r, expected %d" % (ups["s"], REQUESTS)
    assert ups["f"] == 0, "failed_count summed: %r" % ups["f"]
