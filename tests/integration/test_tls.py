"""TLS with mbedTLS (SPEC: "Parts and libraries", flags -ca-file, -tls-cert, -tls-key; "Proxy"
step 5): https upstreams verified against -ca-file or the system bundle, hostname checks,
connection reuse and session resumption per origin, and the HTTPS listener.

Every certificate is made here with the openssl CLI (tls_util.make_pki) in tmp_path; upstream
endpoints say "localhost" (a DNS name: mbedTLS 2.28 does not check IP SANs) and resolve to
127.0.0.1 where the TLS mock listens. Loopback only."""

import hashlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import UPSTREAM_SK
from mock_upstream import (ChatCompletion, ChatStream, Chunked, CloseDelimited, Echo, Json, Raw,
                           Status)
import routetest
from routetest import (TOKEN, FramingError, assert_cors, assert_error_shape, free_port,
                       route_binary, wait_port, wait_until)
from tls_util import TlsMockUpstream, https_request, make_pki

CHAT = "/v1/chat/completions"


def chat_body(stream=False, content="hello over tls"):
    b = {"model": "gpt-tls", "messages": [{"role": "user", "content": content}]}
    if stream:
        b["stream"] = True
    return b


def localhost_resolves():
    try:
        return any(ai[4][0] == "127.0.0.1" for ai in socket.getaddrinfo("localhost", 80))
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not localhost_resolves() or shutil.which("openssl") is None,
                                reason="needs openssl and localhost -> 127.0.0.1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_mock(pki):
    m = TlsMockUpstream("tls", pki.localhost).start()
    yield m
    m.stop()


def sse_events(body):
    return [ln[6:] for ln in body.decode().split("\n") if ln.startswith("data: ")]


# --------------------------------------------------------------------------- upstream TLS

def test_https_upstream_json_with_ca_file(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, ChatCompletion(content="secure hello", usage=(3, 2, 5)))
    r = p.request("POST", CHAT, chat_body())
    assert r.status == 200, r
    j = r.json()
    assert j["choices"][0]["message"]["content"] == "secure hello"
    assert j["mock"] == "tls"
    assert_cors(r)
    # The request really went over TLS, with the key, to the mapped path and SNI host.
    req = tls_mock.last
    assert req.path == CHAT
    assert req.header("authorization") == "Bearer %s" % UPSTREAM_SK
    assert req.header("host") == "localhost:%d" % tls_mock.port
    assert tls_mock.handshakes == 1 and not tls_mock.handshake_errors
    rec = p.wait_for_records(1)[-1]
    assert rec["status"] == 200 and not rec["error"], rec
    assert rec["upstream_endpoint"] == tls_mock.endpoint()
    assert rec["response"] == "secure hello"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (3, 2, 5)


def test_https_upstream_sse_with_ca_file(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, ChatStream(["se", "cu", "re"], usage=(4, 3, 7), delay=0.02))
    with p.connect() as c:
        c.send(p.raw_request("POST", CHAT, dict(chat_body(stream=True),
                                                stream_options={"include_usage": True})))
        head = c.read_head()
        assert head.status == 200, head
        assert head.headers["content-type"].startswith("text/event-stream")
        assert head.framing == "chunked"
        body = head.reader.read_all()
    evs = sse_events(body)
    assert evs[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in evs[:-1] if json.loads(e)["choices"])
    assert text == "secure"
    rec = p.wait_for_records(1)[-1]
    assert rec["status"] == 200 and not rec["error"], rec
    assert rec["response"] == "secure"
    assert rec["total_tokens"] == 7


def test_system_bundle_does_not_trust_a_private_ca(proxy_factory, tls_mock):
    # No -ca-file: the system bundle, which has never heard of our throwaway CA.
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())])
    t = time.monotonic()
    r = p.request("POST", CHAT, chat_body())
    assert time.monotonic() - t < 5
    msg = assert_error_shape(r, 502)
    assert "certificate verify failed" in msg, msg
    assert routetest.upstream_label(tls_mock.endpoint(), 1) in msg, msg
    assert UPSTREAM_SK not in msg
    # The handshake was refused by the proxy: the mock never got a request.
    assert tls_mock.requests == []
    wait_until(lambda: tls_mock.handshake_errors, timeout=5, message="mock saw the abort")
    assert tls_mock.handshakes == 0
    rec = p.wait_for_records(1)[-1]
    assert rec["status"] == 502 and "certificate verify failed" in rec["error"], rec
    wait_until(lambda: p.upstream_rows()[0]["failed_count"] == 1, timeout=5,
               message="failed_count counted")


def test_hostname_mismatch_fails(proxy_factory, pki):
    # Signed by the trusted CA, but for wrong.example: reached as "localhost" it must fail.
    with TlsMockUpstream("wrong", pki.wrong_name) as m:
        p = proxy_factory(upstreams=[(UPSTREAM_SK, m.endpoint())], args=["-ca-file", pki.ca])
        r = p.request("POST", CHAT, chat_body())
        msg = assert_error_shape(r, 502)
        assert "certificate verify failed" in msg, msg
        assert "CN" in msg or "name" in msg.lower(), msg  # says why, not just "failed"
        assert m.requests == []


def test_https_to_a_plain_http_server_fails_cleanly(proxy_factory, mock_factory, pki):
    plain = mock_factory("plain")
    p = proxy_factory(upstreams=[(UPSTREAM_SK, "https://localhost:%d/v1" % plain.port)],
                      args=["-ca-file", pki.ca])
    t = time.monotonic()
    r = p.request("POST", CHAT, chat_body())
    assert time.monotonic() - t < 5
    msg = assert_error_shape(r, 502)
    assert "TLS" in msg or "tls" in msg or "closed" in msg, msg


def test_tls_failure_fails_over_to_the_next_upstream(proxy_factory, mock_factory, pki):
    good = mock_factory("good")
    with TlsMockUpstream("wrong", pki.wrong_name) as bad:
        p = proxy_factory(upstreams=[(UPSTREAM_SK, bad.endpoint()), ("sk-good", good.endpoint())],
                          args=["-ca-file", pki.ca])
        r = p.request("POST", CHAT, chat_body())
        assert r.status == 200, r
        assert r.json()["mock"] == "good"
        def counted():
            rows = p.upstream_rows()
            return rows if sum(u["failed_count"] + u["success_count"] for u in rows) == 2 else None

        rows = wait_until(counted, timeout=5, message="counters")
        by_ep = {u["endpoint"]: u for u in rows}
        assert by_ep[bad.endpoint()]["failed_count"] == 1
        assert by_ep[good.endpoint()]["success_count"] == 1


def test_tls_connection_reused_across_requests(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, Echo())
    n = 6
    for i in range(n):
        r = p.request("POST", CHAT, chat_body(content="req %d" % i))
        assert r.status == 200, r
        assert r.json()["body"] and ("req %d" % i) in r.json()["body"]
    assert len(tls_mock.requests) == n
    assert tls_mock.connection_count() == 1, tls_mock.connections
    assert tls_mock.handshakes == 1
    assert len({q.conn_id for q in tls_mock.requests}) == 1


def test_tls_connection_reused_after_streams(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    for i in range(4):
        r = p.request("POST", CHAT, chat_body(stream=True))
        assert r.status == 200, r
        assert sse_events(r.body)[-1] == "[DONE]"
    assert tls_mock.connection_count() == 1
    assert tls_mock.handshakes == 1


def test_tls_session_resumed_on_new_connections(proxy_factory, tls_mock, pki):
    # The mock closes after each answer: every request needs a new connection, and the
    # saved session of the origin makes the handshakes after the first abbreviated.
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, Json({"ok": True}, headers={"Connection": "close"}))
    n = 4
    for _ in range(n):
        r = p.request("POST", CHAT, chat_body())
        assert r.status == 200, r
    assert tls_mock.connection_count() == n
    assert tls_mock.handshakes == n
    assert tls_mock.resumed >= n - 1, (tls_mock.resumed, tls_mock.versions)


def test_concurrent_https_requests(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    results = []

    def one(i):
        r = p.request("POST", CHAT, chat_body(stream=bool(i % 2)), timeout=15)
        results.append(r.status)

    ts = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert results == [200] * 12
    # Afterwards the pool holds what was opened; sequential requests reuse, not reconnect.
    before = tls_mock.connection_count()
    for _ in range(3):
        assert p.request("POST", CHAT, chat_body()).status == 200
    assert tls_mock.connection_count() == before


# --------------------------------------------------------------------------- the HTTPS listener

def tls_proxy(proxy_factory, pki, upstreams):
    return proxy_factory(upstreams=upstreams,
                         args=["-tls-cert", pki.localhost.cert, "-tls-key", pki.localhost.key])


def test_https_listener_with_python_ssl(proxy_factory, mock, pki):
    p = tls_proxy(proxy_factory, pki, [(UPSTREAM_SK, mock.endpoint())])
    auth = {"Authorization": "Bearer %s" % TOKEN}
    st, hs, body, version = https_request(p.port, "POST", CHAT, chat_body(), auth, pki.ca)
    assert st == 200, body
    assert json.loads(body)["mock"] == "mock"
    assert hs["access-control-allow-origin"] == "*"
    assert version in ("TLSv1.2", "TLSv1.3")
    assert mock.last.header("authorization") == "Bearer %s" % UPSTREAM_SK
    # Errors and non-proxied paths are served over TLS as well.
    st, _, body, _ = https_request(p.port, "POST", CHAT, chat_body(), {"Authorization": "x"},
                                   pki.ca)
    assert st == 403 and b"Bearer" in body
    st, _, _, _ = https_request(p.port, "OPTIONS", CHAT, None, None, pki.ca)
    assert st == 200


def test_https_listener_streams_and_keeps_alive(proxy_factory, mock, pki):
    p = tls_proxy(proxy_factory, pki, [(UPSTREAM_SK, mock.endpoint())])
    mock.set(CHAT, ChatStream(["a", "b", "c"], delay=0.02))
    conn = http.client.HTTPSConnection("localhost", p.port, context=pki.client_context(),
                                       timeout=10)
    try:
        socks = set()
        for _ in range(3):
            conn.request("POST", CHAT, json.dumps(chat_body(stream=True)),
                         {"Authorization": "Bearer %s" % TOKEN,
                          "Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200
            assert sse_events(data)[-1] == "[DONE]"
            socks.add(id(conn.sock))
        assert len(socks) == 1, "client connection was not kept alive"
    finally:
        conn.close()
    assert len(p.wait_for_records(3)) == 3


def test_https_listener_with_curl(proxy_factory, mock, pki):
    if not shutil.which("curl"):
        pytest.skip("no curl")
    p = tls_proxy(proxy_factory, pki, [(UPSTREAM_SK, mock.endpoint())])
    url = "https://localhost:%d%s" % (p.port, CHAT)
    cp = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", pki.ca,
                         "-H", "Authorization: Bearer %s" % TOKEN,
                         "-H", "Content-Type: application/json",
                         "-d", json.dumps(chat_body()), "-w", "\n%{http_code}", url],
                        capture_output=True, text=True, timeout=20)
    assert cp.returncode == 0, cp.stderr
    body, _, code = cp.stdout.rpartition("\n")
    assert code == "200", cp.stdout
    assert json.loads(body)["mock"] == "mock"
    # Without the CA curl refuses the certificate: the listener really presents ours.
    cp = subprocess.run(["curl", "-sS", "--max-time", "10", url], capture_output=True,
                        text=True, timeout=20)
    assert cp.returncode != 0


def test_https_listener_survives_garbage_and_plain_http(proxy_factory, mock, pki):
    p = tls_proxy(proxy_factory, pki, [(UPSTREAM_SK, mock.endpoint())])
    # Plain HTTP to the TLS port, and a client that leaves mid-handshake.
    with socket.create_connection(("127.0.0.1", p.port), timeout=5) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
        except (socket.timeout, ConnectionResetError):
            pass
    raw = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    ctx = ssl.create_default_context(cafile=pki.ca)
    outgoing = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    raw.sendall(outgoing.read())  # the ClientHello, then gone
    raw.close()
    # Still serving.
    st, _, _, _ = https_request(p.port, "POST", CHAT, chat_body(),
                                {"Authorization": "Bearer %s" % TOKEN}, pki.ca)
    assert st == 200
    assert p.alive()


@pytest.mark.parametrize("which", ["cert-only", "key-only"])
def test_tls_cert_without_key_exits_2(tmp_path, pki, which):
    binary = route_binary()
    port = free_port()
    flags = (["-tls-cert", pki.localhost.cert] if which == "cert-only"
             else ["-tls-key", pki.localhost.key])
    cp = subprocess.run([binary, "-addr", "127.0.0.1:%d" % port, "-database",
                         str(tmp_path / "db.sqlite")] + flags,
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=20,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "tls" in cp.stderr.lower()
    assert not wait_port(port, timeout=0.3)


def test_tls_listener_bad_key_file_is_an_error(tmp_path, pki):
    binary = route_binary()
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    cp = subprocess.run([binary, "-addr", "127.0.0.1:%d" % free_port(), "-database",
                         str(tmp_path / "db.sqlite"), "-tls-cert", pki.localhost.cert,
                         "-tls-key", str(bad)],
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=20,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode not in (0, None) and cp.returncode > 0, cp
    assert "key" in cp.stderr.lower()


# --------------------------------------------------------------------------- bytes over TLS

def test_large_request_body_over_tls_intact(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, Echo())
    blob = bytes(range(256)).hex() * 8192  # 4 MiB of text
    body = json.dumps({"model": "gpt-tls", "messages": [{"role": "user", "content": blob}]})
    r = p.request("POST", CHAT, body.encode(), {"Content-Type": "application/json"},
                  timeout=30)
    assert r.status == 200, r
    assert r.json()["body_sha256"] == hashlib.sha256(body.encode()).hexdigest()


def test_large_response_over_tls_with_a_slow_reader(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    # 16 MiB: more than the kernel's socket buffers and the proxy's write queue hold, so
    # the proxy must stop reading the upstream while the client sleeps, and go on after.
    big = (b'{"data": "' + (b"0123456789abcdef" * (16 * 65536)) + b'"}')
    tls_mock.set("/v1/files", Json(big))
    with p.connect(timeout=30) as c:
        c.send(p.raw_request("GET", "/v1/files"))
        head = c.read_head(timeout=10)
        assert head.status == 200
        time.sleep(1.0)  # let the proxy's buffers fill and the upstream pause
        data = head.reader.read_all(timeout=30)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(big).hexdigest()
    # The connection went back to the pool afterwards.
    assert p.request("GET", "/v1/files", timeout=30).status == 200
    assert tls_mock.connection_count() == 1


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_framings_over_tls(proxy_factory, tls_mock, pki, framing):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    pieces = [("piece-%03d," % i) * 50 for i in range(60)]
    want = "".join(pieces).encode()
    if framing == "chunked":
        tls_mock.set(CHAT, Chunked(pieces, delay=0.002))
    else:
        tls_mock.set(CHAT, CloseDelimited(want, pieces=20, delay=0.01))
    for _ in range(2):
        r = p.request("POST", CHAT, chat_body())
        assert r.status == 200 and r.body == want
    # Close-delimited bodies end the connection; chunked ones keep it.
    assert tls_mock.connection_count() == (1 if framing == "chunked" else 2)


@pytest.mark.parametrize("close_notify", [False, True])
def test_upstream_closing_idle_tls_connections(proxy_factory, pki, close_notify):
    # The mock drops a keep-alive connection 0.3 s after a response: the proxy must notice (or
    # retry once on a fresh connection), never fail a request for it.
    with TlsMockUpstream("idle", pki.localhost, read_timeout=0.3,
                         close_notify=close_notify) as m:
        p = proxy_factory(upstreams=[(UPSTREAM_SK, m.endpoint())], args=["-ca-file", pki.ca])
        for i in range(4):
            r = p.request("POST", CHAT, chat_body(stream=bool(i % 2)))
            assert r.status == 200, r
            time.sleep(0.6)
        assert m.connection_count() == 4
        assert m.resumed >= 3
        recs = p.wait_for_records(4)
        assert all(not x["error"] for x in recs), recs


def test_upstream_closing_right_after_a_keep_alive_response(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    # A keep-alive response (no Connection: close), then the mock closes anyway.
    tls_mock.set_default(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 11\r\n\r\n{\"ok\":true}", close=True))
    for _ in range(5):
        r = p.request("POST", CHAT, chat_body())
        assert (r.status, r.body) == (200, b'{"ok":true}'), r
    assert p.wait_for_records(5) and all(not x["error"] for x in p.records())


def test_concurrent_tls_streams(proxy_factory, tls_mock, pki):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca])
    tls_mock.set(CHAT, ChatStream(["%d" % i for i in range(20)], delay=0.01))
    out = []

    def one():
        r = p.request("POST", CHAT, chat_body(stream=True), timeout=20)
        out.append((r.status, sse_events(r.body)[-1]))

    ts = [threading.Thread(target=one) for _ in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert out == [(200, "[DONE]")] * 10


def test_https_webhook_verified_with_the_ca_file(proxy_factory, mock, pki):
    with TlsMockUpstream("hook", pki.localhost) as hook:
        hook.set_default(Json({"code": 0}))
        mock.set_default(Status(500))
        p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], args=["-ca-file", pki.ca],
                          env={"FEISHU_WEBHOOK": hook.url + "/hook?secret=1"})
        assert p.request("POST", CHAT, chat_body()).status == 502
        got = hook.wait_for_requests(1)[0]
        assert got.path == "/hook" and json.loads(got.body)["msg_type"] == "text"


def test_https_listener_large_upload_and_download(proxy_factory, mock, pki):
    p = tls_proxy(proxy_factory, pki, [(UPSTREAM_SK, mock.endpoint())])
    mock.set(CHAT, Echo())
    blob = "y" * (3 * 1024 * 1024)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": blob}]}).encode()
    st, _, data, _ = https_request(p.port, "POST", CHAT, body,
                                   {"Authorization": "Bearer %s" % TOKEN,
                                    "Content-Type": "application/json"}, pki.ca, timeout=30)
    assert st == 200
    assert json.loads(data)["body_sha256"] == hashlib.sha256(body).hexdigest()
    big = b"z" * (5 * 1024 * 1024)
    mock.set("/v1/files", Json(big, content_type="application/octet-stream"))
    st, _, data, _ = https_request(p.port, "GET", "/v1/files", None,
                                   {"Authorization": "Bearer %s" % TOKEN}, pki.ca, timeout=30)
    assert st == 200 and data == big


def test_missing_ca_file_is_an_error(tmp_path):
    binary = route_binary()
    cp = subprocess.run([binary, "-addr", "127.0.0.1:%d" % free_port(), "-database",
                         str(tmp_path / "db.sqlite"), "-ca-file", str(tmp_path / "nope.pem")],
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=20,
                        stdin=subprocess.DEVNULL)
    assert cp.returncode == 1, cp
    assert "nope.pem" in cp.stderr


def test_stalled_tls_stream_is_cut_by_idle_timeout(proxy_factory, tls_mock, pki):
    never = threading.Event()
    tls_mock.set(CHAT, ChatStream(["one", "two"], gates={2: never}, gate_timeout=20))
    p = proxy_factory(upstreams=[(UPSTREAM_SK, tls_mock.endpoint())], args=["-ca-file", pki.ca],
                      config={"idle_timeout": "1"})
    with p.connect(timeout=15) as c:
        c.send(p.raw_request("POST", CHAT, chat_body(stream=True)))
        head = c.read_head()
        assert head.status == 200
        head.reader.read_until(b'"one"')
        t = time.monotonic()
        # An SSE stream cut upstream ends with one error event and its proper end (issue 10).
        body = head.reader.read_all(timeout=10)
        assert body.count(b'"upstream_error"') == 1 and body.endswith(b"}}\n\n"), body
        assert time.monotonic() - t < 3
    never.set()
    rec = p.wait_for_records(1)[-1]
    assert "idle" in rec["error"], rec
    # The cut connection is not pooled: the next request gets a fresh, working one.
    tls_mock.set(CHAT, ChatCompletion(content="fresh"))
    r = p.request("POST", CHAT, chat_body())
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "fresh"
    assert tls_mock.connection_count() == 2


def test_failover_status_on_a_pooled_tls_connection(proxy_factory, pki, mock_factory):
    good = mock_factory("good")
    with TlsMockUpstream("flaky", pki.localhost) as m:
        p = proxy_factory(upstreams=[(UPSTREAM_SK, m.endpoint()), ("sk-good", good.endpoint())],
                          args=["-ca-file", pki.ca])
        assert p.request("POST", CHAT, chat_body()).json()["mock"] == "flaky"
        m.enqueue(Status(503))
        # The 503 arrives on the pooled connection; the request moves on to the next upstream.
        r = p.request("POST", CHAT, chat_body())
        assert r.status == 200 and r.json()["mock"] == "good"
        assert m.connection_count() == 1
