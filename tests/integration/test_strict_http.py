"""Strict HTTP (issue 11, item 5): chunk data not followed by CRLF, dot-segments in the path
(plain and percent-encoded), request lines other than HTTP/1.0 and 1.1, transfer codings other
than chunked, absolute-form targets. Each case over a raw socket: the status, the close, and
nothing forwarded (the mock sees no request).

One server for the module; each test then checks it still serves."""

import json

import pytest

import routetest
from conftest import UPSTREAM_SK, check_proxy_health, require_binary
from mock_upstream import Echo, MockUpstream
from routetest import assert_cors, assert_error_shape

CHAT = "/v1/chat/completions"
AUTH = "Authorization: Bearer %s\r\n" % routetest.TOKEN


@pytest.fixture(scope="module")
def mock():
    m = MockUpstream("strict").start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, mock):
    require_binary()
    p = routetest.Proxy(tmp_path_factory.mktemp("strict"),
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


def assert_serves(proxy):
    assert proxy.alive(), "the server died: " + proxy.stderr_text()[-3000:]
    r = proxy.request("POST", CHAT, {"model": "after", "messages": []}, timeout=10)
    assert r.status == 200, r


def rejected(proxy, mock, raw, status):
    """Sends raw, expects `status` as a JSON error, then the close; nothing forwarded.
    Returns the error message."""
    with proxy.connect() as c:
        c.send(raw)
        r = c.read_response(timeout=10)
        assert r.status == status, r
        assert_cors(r, str(status))
        msg = assert_error_shape(r, status)
        assert "User callback error" not in msg, msg
        assert c.wait_closed(5), "the connection should close after a %d" % status
    assert mock.requests == [], "forwarded: %r" % mock.requests
    assert_serves(proxy)
    return msg


# --------------------------------------------------------------------------- chunk framing

def test_chunk_data_not_followed_by_crlf_is_400(proxy, mock):
    raw = ("POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (CHAT, AUTH)
           ).encode() + b"10\r\n" + b"a" * 16 + b"XX0\r\n\r\n"
    rejected(proxy, mock, raw, 400)


def test_well_formed_chunks_still_pass(proxy, mock):
    body = b'{"model":"chunky"}'
    raw = ("POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n"
           "Content-Type: application/json\r\n\r\n" % (CHAT, AUTH)).encode()
    raw += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with proxy.connect() as c:
        c.send(raw)
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    assert json.loads(r.json()["body"])["model"] == "chunky"


# --------------------------------------------------------------------------- dot-segments

@pytest.mark.parametrize("path", [
    "/v1/../x", "/v1/../../x", "/v1/%2e%2e/x", "/v1/%2E%2E/x", "/v1/.%2e/x", "/v1/%2e./x",
    "/v1/./models", "/v1/%2e/models", "/v1/chat/..", "/v1/chat/%2e%2e", "/v1/..%2fx",
    "/v1/..%5cx", "/v1/x/..?a=b",
])
def test_dot_segment_is_400(proxy, mock, path):
    raw = ("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, AUTH)).encode()
    msg = rejected(proxy, mock, raw, 400)
    assert "dot-segment" in msg, msg


def test_backslash_dot_segment_is_400(proxy, mock):
    raw = ("GET /v1\\..\\x HTTP/1.1\r\nHost: x\r\n%s\r\n" % AUTH).encode()
    rejected(proxy, mock, raw, 400)


@pytest.mark.parametrize("path", ["/v1/files/file-abc.jsonl", "/v1/a..b", "/v1/...", "/v1/.x"])
def test_dots_inside_a_segment_pass(proxy, mock, path):
    with proxy.connect() as c:
        c.send(("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, AUTH)).encode())
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    assert r.json()["path"] == path


# --------------------------------------------------------------------------- versions

@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0"])
def test_other_versions_are_505(proxy, mock, version):
    raw = ("POST %s %s\r\nHost: x\r\n%sContent-Length: 2\r\n\r\n{}" % (CHAT, version, AUTH)
           ).encode()
    rejected(proxy, mock, raw, 505)


def test_http09_is_closed(proxy, mock):
    with proxy.connect() as c:
        c.send(b"GET /v1/models HTTP/0.9\r\n\r\n")
        assert c.wait_closed(5), "an HTTP/0.9 request line should be closed"
        assert bytes(c.buf) == b"", "no status line for HTTP/0.9: %r" % bytes(c.buf[:200])
    assert mock.requests == []
    assert_serves(proxy)


def test_http10_still_works(proxy, mock):
    with proxy.connect() as c:
        c.send(("POST %s HTTP/1.0\r\n%sContent-Length: 2\r\n\r\n{}" % (CHAT, AUTH)).encode())
        r = c.read_response(timeout=10)
    assert r.status == 200, r


# --------------------------------------------------------------------------- transfer codings

@pytest.mark.parametrize("coding", ["gzip, chunked", "gzip", "deflate,chunked", "identity"])
def test_other_transfer_codings_are_501(proxy, mock, coding):
    raw = ("POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: %s\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
           % (CHAT, AUTH, coding)).encode()
    rejected(proxy, mock, raw, 501)


def test_chunked_twice_is_400(proxy, mock):
    raw = ("POST %s HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked, chunked\r\n\r\n"
           "2\r\n{}\r\n0\r\n\r\n" % (CHAT, AUTH)).encode()
    rejected(proxy, mock, raw, 400)


# --------------------------------------------------------------------------- absolute-form

def test_absolute_form_is_answered_by_its_path(proxy, mock):
    with proxy.connect() as c:
        c.send(("POST http://127.0.0.1:%d%s?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n%s"
                "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                % (proxy.port, CHAT, AUTH)).encode())
        r = c.read_response(timeout=10)
    assert r.status == 200, r
    assert r.json()["path"] == "/v1/chat/completions"
    assert r.json()["query"] in ("x=1", "?x=1"), r.json()


def test_absolute_form_with_dot_segment_is_400(proxy, mock):
    raw = ("GET http://h/v1/%%2e%%2e/x HTTP/1.1\r\nHost: h\r\n%s\r\n" % AUTH).encode()
    rejected(proxy, mock, raw, 400)


@pytest.mark.parametrize("line", ["CONNECT api.openai.com:443 HTTP/1.1",
                                  "GET ftp://h/v1/models HTTP/1.1",
                                  "GET http:///v1/models HTTP/1.1"])
def test_other_targets_are_400_with_a_reason(proxy, mock, line):
    raw = ("%s\r\nHost: h\r\n%s\r\n" % (line, AUTH)).encode()
    rejected(proxy, mock, raw, 400)
