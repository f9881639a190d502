"""File descriptors (issue 11, item 4): the soft RLIMIT_NOFILE is raised to the hard limit
(logged); max_connections, when not configured, fits the limit (two descriptors a stream);
past it, or when accept runs out of descriptors (EMFILE), a client gets a 503 it can read,
never a connection nobody answers; the log says why.

The server runs under a shell wrapper that sets its limits (`ulimit`), 400 clients at once."""

import os
import socket
import stat
import threading
import time

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatCompletion, Delay

CHAT = "/v1/chat/completions"
CLIENTS = 400


def limited(proxy, tmp_path, soft, hard):
    """Runs the proxy binary under `ulimit` (soft first: a hard limit under the soft one fails)."""
    w = tmp_path / ("limited-%d-%d.sh" % (soft, hard))
    w.write_text("#!/bin/sh\nulimit -Sn %d && ulimit -Hn %d || exit 97\nexec %s \"$@\"\n"
                 % (soft, hard, proxy.binary))
    w.chmod(w.stat().st_mode | stat.S_IXUSR)
    proxy.binary = str(w)
    return proxy


def one_client(port, raw, results, i, start, gate):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
    except OSError as e:
        results[i] = "connect: %s" % e
        return
    try:
        if gate:
            start.wait(30)
        s.settimeout(30)
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            d = s.recv(65536)
            if not d:
                break
            data += d
        results[i] = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") else \
            "no response (got %r)" % data[:100]
    except socket.timeout:
        results[i] = "hung: no response in 30 s"
    except OSError as e:
        results[i] = "error: %s" % e
    finally:
        s.close()


def storm(proxy, n=CLIENTS, gate=True):
    """n clients at once. gate: every connection is made before any request is sent; else
    each sends at once, as real clients do (its bytes may wait unread when it is refused)."""
    raw = proxy.raw_request("POST", CHAT, {"model": "fd", "messages": []},
                            headers={"Connection": "close"})
    results = [None] * n
    start = threading.Event()
    threads = [threading.Thread(target=one_client, args=(proxy.port, raw, results, i, start, gate))
               for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # let the connections pile up before any request is sent
    start.set()
    for t in threads:
        t.join(60)
    return results


def summary(results):
    out = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


@pytest.mark.deadline(120)
def test_soft_limit_is_raised_to_the_hard_limit(proxy_factory, mock, tmp_path):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], start=False)
    limited(p, tmp_path, 256, 1024).start()
    log = p.stderr_text()
    assert "soft limit raised from 256 to the hard limit 1024" in log, log[-2000:]
    assert "max_connections: 480 (fits the descriptor limit" in log, log[-2000:]
    assert p.request("POST", CHAT, {"model": "x"}).status == 200


@pytest.mark.deadline(150)
def test_default_max_connections_fits_256_fds(proxy_factory, mock, tmp_path):
    mock.set(CHAT, Delay(1.0, ChatCompletion("slow")))
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], start=False)
    limited(p, tmp_path, 256, 256).start()
    assert "max_connections: 96 (fits the descriptor limit" in p.stderr_text()
    results = storm(p, gate=False)
    s = summary(results)
    bad = {k: v for k, v in s.items() if k not in (200, 503)}
    assert not bad, "every client gets a 200 or a 503: %r" % s
    assert s.get(200, 0) > 0 and s.get(503, 0) > 0, s
    assert "connection limit 96 reached" in p.stderr_text()
    assert p.alive()
    mock.set(CHAT, ChatCompletion("after"))
    assert p.request("POST", CHAT, {"model": "x"}).status == 200


@pytest.mark.deadline(150)
def test_out_of_fds_clients_get_503(proxy_factory, mock, tmp_path):
    mock.set(CHAT, Delay(1.0, ChatCompletion("slow")))
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())],
                      config={"max_connections": 5000}, start=False)
    limited(p, tmp_path, 256, 256).start()
    assert "max_connections 5000 is more than 96 descriptors allow" in p.stderr_text()
    results = storm(p)
    s = summary(results)
    # A client accepted just before the upstream connect ran out of descriptors gets the
    # proxy's 502; none gets nothing.
    bad = {k: v for k, v in s.items() if k not in (200, 502, 503)}
    assert not bad, "every client gets a response: %r" % s
    assert s.get(503, 0) > 0, s
    log = p.stderr_text()
    assert "accept: Too many open files" in log and "client(s) 503" in log, log[-3000:]
    # Rate-limited: a handful of lines, not one per client.
    assert log.count("accept: Too many open files") <= 3, log[-3000:]
    assert p.alive()
    mock.set(CHAT, ChatCompletion("after"))
    routetest.wait_until(lambda: p.request("POST", CHAT, {"model": "x"}).status == 200,
                         timeout=10, message="the proxy to serve again")
