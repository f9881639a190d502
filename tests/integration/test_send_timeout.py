"""Send timeout (issue 11, item 3): a client that takes no response bytes for `send_timeout`
seconds while some wait for it is closed, its upstream request ends (the mock sees the close)
and the exchange is recorded with "client send timeout"; a slow client that keeps reading is
never cut, however long the response takes."""

import socket
import time

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatStream
from routetest import wait_for_records, wait_until

CHAT = "/v1/chat/completions"
SEND_TIMEOUT = 2


def big_stream(mb):
    """A chat stream of about `mb` MB, in 1 KB pieces."""
    return ChatStream(["x" * 1000] * (mb * 1000))


def small_window_conn(port, rcvbuf=4096):
    """A raw connection with a small receive buffer, so a client that stops reading makes the
    proxy's bytes wait soon."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    c = routetest.RawConn.__new__(routetest.RawConn)
    c.sock, c.buf, c.eof, c.reset = s, bytearray(), False, False
    return c


@pytest.fixture
def proxy(proxy_factory, mock):
    return proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())],
                         config={"send_timeout": SEND_TIMEOUT, "idle_timeout": 120})


def chat(stream=True):
    return {"model": "st", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.deadline(90)
def test_client_that_stops_reading_is_closed_and_upstream_ends(proxy, mock):
    sse = mock.set(CHAT, big_stream(40))
    c = small_window_conn(proxy.port)
    try:
        c.send(proxy.raw_request("POST", CHAT, chat()))
        head = c.read_head(timeout=10)
        assert head.status == 200, head
        head.reader.read_until(b"xxxx", timeout=10)
        stopped = time.monotonic()
        # Read nothing more: the upstream's side must end within send_timeout plus slack.
        wait_until(lambda: sse.aborted.is_set() or sse.finished.is_set(), timeout=40,
                   interval=0.1, message="the upstream stream to end")
        took = time.monotonic() - stopped
        assert sse.aborted.is_set() and not sse.finished.is_set(), \
            "the mock should see the proxy close its connection mid-stream"
        assert took >= SEND_TIMEOUT * 0.9, "cut after %.1f s, before send_timeout" % took
        # Our connection was closed: draining it ends in EOF or a reset.
        c.sock.settimeout(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if not c.sock.recv(1 << 20):
                    break
            except (ConnectionResetError, socket.timeout):
                break
        else:
            raise AssertionError("the client connection was not closed")
    finally:
        c.close()
    rows = wait_for_records(proxy.db_path, 1, timeout=10)
    assert rows[-1]["error"] == "client send timeout", rows[-1]
    assert "send_timeout" in proxy.stderr_text(), proxy.stderr_text()[-2000:]
    # The proxy serves on.
    r = proxy.request("POST", CHAT, chat(stream=False))
    assert r.status == 200


# A slow reader shows its progress to the sender only when its TCP window reopens, and Linux
# reopens a closed window in steps (receiver-side silly-window avoidance, the sender's persist
# timer backing off): on loopback a reader at 1 KB/s with default buffers acknowledges nothing
# for tens of seconds, with a 4 KB buffer every 6 s or so; at 10 KB/s with a 4 KB buffer every
# 0.6 s. So this reader takes 10 KB/s (the upstream sends 16 MB at once) for 6 send_timeouts of
# 2 s; a 1 KB/s reader needs a send_timeout above its window cadence (the default 60 s is).


@pytest.mark.deadline(120)
def test_slow_reader_is_not_cut(proxy, mock):
    sse = mock.set(CHAT, big_stream(16))
    c = small_window_conn(proxy.port, rcvbuf=4096)
    try:
        c.send(proxy.raw_request("POST", CHAT, chat()))
        head = c.read_head(timeout=10)
        assert head.status == 200, head
        # Slow for 6 send_timeouts: always something taken, never much.
        slow_until = time.monotonic() + 6 * SEND_TIMEOUT
        while time.monotonic() < slow_until:
            data = c.sock.recv(1024)
            assert data, "the proxy closed a slow but reading client"
            c.buf += data
            time.sleep(0.1)
        assert not sse.finished.is_set(), \
            "the upstream finished: the slow phase did not make bytes wait in the proxy"
        # Then read the rest at full speed: the whole stream arrives.
        body = head.reader.read_all(timeout=60)
        assert body.endswith(b"data: [DONE]\n\n"), body[-200:]
    finally:
        c.close()
    rows = wait_for_records(proxy.db_path, 1, timeout=10)
    assert rows[-1]["status"] == 200 and not rows[-1]["error"], \
        {k: rows[-1][k] for k in ("status", "error")}


@pytest.mark.deadline(60)
def test_send_timeout_zero_never_cuts(proxy_factory, mock):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], config={"send_timeout": 0})
    sse = mock.set(CHAT, big_stream(20))
    c = small_window_conn(p.port)
    try:
        c.send(p.raw_request("POST", CHAT, chat()))
        head = c.read_head(timeout=10)
        assert head.status == 200
        time.sleep(3)  # nothing to wait on: the absence of a cut is what is checked
        assert not sse.aborted.is_set() and not sse.finished.is_set()
    finally:
        c.close()
