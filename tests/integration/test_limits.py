"""Limits and bad input (SPEC "Limits and bad input"): header block 64 KiB (431), body 32 MiB
(413), slow headers 30 s, malformed HTTP -> 400 and close; the server keeps serving.

One server for the module, so the abuse accumulates; each test then checks it still serves."""

import json
import time

import pytest

import routetest
from conftest import UPSTREAM_SK, check_proxy_health, require_binary
from mock_upstream import Echo, MockUpstream
from routetest import assert_cors, assert_error_shape

CHAT = "/v1/chat/completions"
MAX_HEADER = 64 * 1024
MAX_BODY = 32 * 1024 * 1024


@pytest.fixture(scope="module")
def mock():
    m = MockUpstream("limits").start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, mock):
    require_binary()
    p = routetest.Proxy(tmp_path_factory.mktemp("limits"),
                        upstreams=[(UPSTREAM_SK, mock.endpoint())])
    yield p
    p.stop()
    why = check_proxy_health(p)
    if why:
        pytest.fail(why, pytrace=False)


@pytest.fixture(autouse=True)
def fresh_mock(mock):
    mock.reset()
    mock.set_default(Echo())
    yield


def assert_serves(proxy, mock):
    """A normal proxied request works, on a new connection."""
    assert proxy.alive(), "the server died: " + proxy.stderr_text()[-3000:]
    r = proxy.request("POST", CHAT, {"model": "after", "messages": []}, timeout=10)
    assert r.status == 200, r
    assert json.loads(r.json()["body"])["model"] == "after"


def head_bytes(extra_lines):
    return ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
            % (CHAT, routetest.TOKEN)).encode() + extra_lines


# --------------------------------------------------------------------------- header block

@pytest.mark.parametrize("shape", ["one_big_header", "many_headers"])
def test_header_block_over_64k_is_431(proxy, mock, shape):
    if shape == "one_big_header":
        extra = b"X-Big: " + b"a" * (MAX_HEADER + 2048) + b"\r\n"
    else:
        line = b"X-Many-%05d: " + b"b" * 50 + b"\r\n"
        extra = b"".join(line % i for i in range(MAX_HEADER // 60 + 100))
    assert len(extra) > MAX_HEADER
    with proxy.connect() as c:
        # The block is sent without its end: the limit must hold while it arrives (and the
        # server has read everything sent, so its close can't reset the response away).
        c.send(head_bytes(extra))
        try:
            r = c.read_response(timeout=10)
        except TimeoutError:
            raise AssertionError("no 431 within 10 s after %d header bytes" % len(extra))
        assert r.status == 431, r
        assert_cors(r, "431")
        assert c.wait_closed(5), "after a 431 the connection should close"
    assert mock.requests == []
    assert_serves(proxy, mock)


def test_header_block_just_under_64k_is_accepted(proxy, mock):
    extra = b"X-Fill: " + b"c" * (MAX_HEADER - 2048) + b"\r\n\r\n"
    with proxy.connect() as c:
        c.send(head_bytes(b"Content-Length: 2\r\n" + extra) + b"{}")
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    assert_serves(proxy, mock)


# --------------------------------------------------------------------------- body

def test_body_over_32mib_by_content_length_is_413(proxy, mock):
    with proxy.connect() as c:
        c.send(head_bytes(b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % (MAX_BODY + 1)))
        try:
            r = c.read_response(timeout=10)
        except TimeoutError:
            raise AssertionError("no 413 within 10 s for a declared Content-Length of 32 MiB+1")
        assert r.status == 413, r
        assert_cors(r, "413")
        assert_error_shape(r, 413)
    assert mock.requests == []
    assert_serves(proxy, mock)


@pytest.mark.deadline(120)
def test_body_over_32mib_chunked_is_413(proxy, mock):
    with proxy.connect(timeout=60) as c:
        c.send(head_bytes(b"Content-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n"))
        piece = b"x" * (1024 * 1024)
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        sent = 0
        try:
            for _ in range(MAX_BODY // len(piece)):
                c.send(chunk)
                sent += len(piece)
            c.send(b"1\r\nx\r\n")  # one byte past the limit; no last-chunk
            sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer as soon as it knows; read below
        try:
            r = c.read_response(timeout=20)
        except TimeoutError:
            raise AssertionError("no 413 within 20 s after %d chunked body bytes" % sent)
        assert r.status == 413, r
        assert_cors(r, "413")
    assert mock.requests == []
    assert_serves(proxy, mock)


@pytest.mark.deadline(120)
def test_body_of_exactly_32mib_is_accepted(proxy, mock):
    prefix = b'{"model":"exact","pad":"'
    body = prefix + b"p" * (MAX_BODY - len(prefix) - 2) + b'"}'
    assert len(body) == MAX_BODY
    r = proxy.request("POST", CHAT, body, {"Content-Type": "application/json"}, timeout=60)
    assert r.status == 200, r
    assert r.json()["body_len"] == MAX_BODY
    assert_serves(proxy, mock)


# --------------------------------------------------------------------------- slow clients

def test_stalled_partial_header_does_not_block_others(proxy, mock):
    stalled = []
    try:
        for i in range(5):
            c = proxy.connect()
            c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial-%d: "
                   % i)
            stalled.append(c)
        t0 = time.monotonic()
        for i in range(5):
            r = proxy.request("POST", CHAT, {"model": "m%d" % i}, timeout=5)
            assert r.status == 200, r
        assert time.monotonic() - t0 < 5, "requests were slowed down by stalled clients"
        for c in stalled:
            assert c.is_open(0.05), "a stalled client was dropped well before 30 s"
    finally:
        for c in stalled:
            c.close()
    assert_serves(proxy, mock)


@pytest.mark.slow
@pytest.mark.deadline(58)
def test_slow_header_client_dropped_after_30s(proxy, mock):
    """The whole header block must arrive within 30 s: a client that stalls, or trickles a
    byte now and then, is dropped (at ~30 s; allowed 20..36 s)."""
    still = proxy.connect()
    trickle = proxy.connect()
    try:
        t0 = time.monotonic()
        still.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickle.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        closed = {}
        deadline = t0 + 36
        next_trickle = t0 + 4
        while time.monotonic() < deadline and len(closed) < 2:
            for name, c in (("still", still), ("trickle", trickle)):
                if name not in closed and not c.is_open(0.25):
                    closed[name] = time.monotonic() - t0
            if "trickle" not in closed and time.monotonic() >= next_trickle:
                try:
                    trickle.send(b"z")
                except OSError:
                    closed["trickle"] = time.monotonic() - t0
                next_trickle += 4
        assert "still" in closed, "a client stalled in its header block was not dropped in 36 s"
        assert "trickle" in closed, ("a client trickling its header block (a byte every 4 s) "
                                     "was not dropped in 36 s")
        for name, at in closed.items():
            assert at >= 20, "%s client dropped after only %.1f s (limit: 30 s)" % (name, at)
        # Whatever was sent before the close (e.g. a 408) must be a valid response, if any.
        for c in (still, trickle):
            if c.buf:
                assert c.buf.startswith(b"HTTP/1."), bytes(c.buf[:200])
    finally:
        still.close()
        trickle.close()
    assert mock.requests == []
    assert_serves(proxy, mock)


# --------------------------------------------------------------------------- malformed

MALFORMED = {
    "garbage_line": b"THIS IS NOT HTTP\r\n\r\n",
    "bad_version": b"GET /v1/models HTTP/1.x\r\nHost: x\r\n\r\n",
    "extra_token": b"GET /v1/models HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "no_target": b"GET HTTP/1.1\r\nHost: x\r\n\r\n",
    "binary": b"\x00\x01\x02\x03 / HTTP/1.1\r\n\r\n",
    "relative_target": b"GET v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    "space_in_header_name": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "space_before_colon": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad : y\r\n\r\n",
    "bad_content_length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: abc\r\n\r\n",
    "bad_chunk_size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_is_400_and_close(proxy, mock, name):
    with proxy.connect() as c:
        c.send(MALFORMED[name])
        try:
            r = c.read_response(timeout=10)
        except TimeoutError:
            raise AssertionError("no response within 10 s to %r" % MALFORMED[name])
        assert r.status == 400, r
        assert_error_shape(r, 400)
        assert_cors(r, "400")
        assert c.wait_closed(5), "the connection must close after a malformed request"
    assert mock.requests == []
    assert_serves(proxy, mock)


def test_malformed_after_a_good_request_on_the_same_connection(proxy, mock):
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, {"model": "good"}))
        r = c.read_response(timeout=10)
        assert r.status == 200, r
        c.send(b"NONSENSE\x01\r\n\r\n")
        r = c.read_response(timeout=10)
        assert r.status == 400, r
        assert c.wait_closed(5)
    assert_serves(proxy, mock)


def test_still_serves_normally_after_everything(proxy, mock):
    for i in range(3):
        assert_serves(proxy, mock)
    r = proxy.request("POST", CHAT, {"model": "x", "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]})
    assert r.status == 200
