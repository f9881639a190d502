"""The streaming proxy engine over plain HTTP (SPEC: "Proxy: any method on /v1/*", "HTTP
interface", "Storage"): pass-through, streaming, framing, keep-alive, pipelining, path mapping,
header forwarding, CORS, errors, and a database the Go program wrote."""

import hashlib
import json
import os
import socket
import threading
import time

import pytest

from conftest import UPSTREAM_SK
from mock_upstream import (ChatCompletion, ChatStream, Chunked, CloseDelimited, Echo, Json,
                           Raw, Status)
import routetest
from routetest import (CORS_EXPECTED, GO_TIME_RE, RECORD_ADDED_COLUMNS, UUID_RE, TOKEN,
                       FramingError,
                       assert_cors, assert_error_shape, closed_port, db_query,
                       make_go_database, wait_for_records, wait_until)

CHAT = "/v1/chat/completions"


def chat_body(model="gpt-test", stream=False, **extra):
    b = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    if stream:
        b["stream"] = True
    b.update(extra)
    return b


# --------------------------------------------------------------------------- pass-through

def test_json_response_passes_through_byte_for_byte(proxy, mock):
    # Odd spacing, key order, unicode and a trailing newline: any re-encoding would show.
    body = ('{ "id":"chatcmpl-1",  "object" : "chat.completion", "model":"gpt-4o-mini",\n'
            ' "choices":[{"index":0,"message":{"role":"assistant","content":"h\\u00e9llo \u263a"},'
            '"finish_reason":"stop"}],\n "usage":{"prompt_tokens":3,"completion_tokens":2,'
            '"total_tokens":5}, "extra": [1.50, 2e3, null]}\n').encode("utf-8")
    ct = "application/json; charset=utf-8"
    mock.set(CHAT, Json(body, content_type=ct))
    r = proxy.request("POST", CHAT, chat_body())
    assert r.status == 200, r
    assert r.body == body, "body changed on the way: sent %r, got %r" % (body, r.body)
    assert r.headers.get("content-type") == ct
    assert_cors(r)


@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_error_status_passes_through(proxy, mock, status):
    body = json.dumps({"error": {"message": "upstream says no", "type": "invalid_request_error",
                                 "param": None, "code": "x"}}).encode()
    mock.set(CHAT, Json(body, status=status))
    r = proxy.request("POST", CHAT, chat_body())
    assert r.status == status, r
    assert r.body == body
    assert len(mock.requests) == 1, "a %d must not be retried" % status
    assert_cors(r)


def test_get_models_passes_through(proxy, mock):
    body = b'{"object":"list","data":[{"id":"gpt-mock","object":"model"}]}'
    mock.set("/v1/models", Json(body))
    r = proxy.request("GET", "/v1/models")
    assert (r.status, r.body) == (200, body)
    assert mock.last.method == "GET" and mock.last.path == "/v1/models"


# --------------------------------------------------------------------------- streaming

def test_sse_first_event_reaches_client_before_second_is_sent(proxy, mock):
    gate = threading.Event()
    sse = mock.set(CHAT, ChatStream(["Hello", " world", "!"], gates={2: gate}))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(stream=True),
                                 {"Accept": "text/event-stream"}))
        head = c.read_head(timeout=10)
        assert head.status == 200, head
        assert head.headers.get("content-type", "").startswith("text/event-stream")
        assert head.framing in ("chunked", "close"), (
            "a streamed response of unknown length must not carry Content-Length: %r"
            % head.header_list)
        # Events 0 (role) and 1 ("Hello") are out; event 2 waits on the gate.
        assert sse.sent[1].wait(10), "mock never sent the first content event"
        try:
            got = head.reader.read_until(b'"Hello"', timeout=5)
        except TimeoutError:
            raise AssertionError("the first SSE event did not reach the client within 5 s "
                                 "while the upstream held back the next one (buffered?)")
        assert not sse.sent[2].is_set(), "test bug: gate opened early"
        assert b'" world"' not in got
        gate.set()
        rest = head.reader.read_all(timeout=10)
    assert not sse.gate_timed_out
    events = [e for e in rest.decode().split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    contents = []
    for e in events[:-1]:
        assert e.startswith("data: "), e
        d = json.loads(e[len("data: "):])
        contents.append(d["choices"][0]["delta"].get("content") or "")
    assert "".join(contents) == "Hello world!"


def test_sse_events_stream_with_delays_arrive_intact(proxy, mock):
    mock.set(CHAT, ChatStream(["a", "b", "c", "d"], usage=(3, 4, 7), delay=0.05))
    r = proxy.request("POST", CHAT, chat_body(stream=True,
                                              stream_options={"include_usage": True}))
    assert r.status == 200
    text = r.body.decode()
    assert text.endswith("data: [DONE]\n\n")
    datas = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    assert "".join((d["choices"][0]["delta"].get("content") or "") for d in datas
                   if d["choices"]) == "abcd"
    assert datas[-1]["usage"]["total_tokens"] == 7


def test_chunked_upstream_body_arrives_intact_and_framed(proxy, mock):
    chunks = [b'{"object":"chat.completion",', b'"model":"m",', b'"choices":[' + b"x" * 0,
              b'{"index":0,"message":{"role":"assistant","content":"' + b"y" * 70000 + b'"}}]',
              b"}"]
    body = b"".join(chunks)
    mock.set(CHAT, Chunked(chunks, delay=0.01))
    with proxy.connect() as c:
        for i in range(2):  # the second exchange proves the first one was framed exactly
            c.send(proxy.raw_request("POST", CHAT, chat_body()))
            r = c.read_response(timeout=10)
            assert r.status == 200, r
            assert r.framing in ("length", "chunked"), (
                "HTTP/1.1 response must be Content-Length or chunked here, got %s: %r"
                % (r.framing, r.header_list))
            assert r.body == body, "request %d: body differs (%d vs %d bytes)" % (
                i, len(r.body), len(body))


def test_close_delimited_upstream_body_arrives_intact_and_framed(proxy, mock):
    body = b'{"object":"chat.completion","model":"m","choices":[],"pad":"' + b"z" * 50000 + b'"}'
    mock.set(CHAT, CloseDelimited(body, pieces=5, delay=0.01))
    with proxy.connect() as c:
        for i in range(2):
            c.send(proxy.raw_request("POST", CHAT, chat_body()))
            r = c.read_response(timeout=10)
            assert r.status == 200, r
            assert r.framing in ("length", "chunked"), (
                "an HTTP/1.1 client must get Content-Length or chunked framing for a "
                "close-delimited upstream body (keep-alive), got %s: %r"
                % (r.framing, r.header_list))
            assert r.body == body, "request %d: body differs (%d vs %d bytes)" % (
                i, len(r.body), len(body))


def test_large_request_body_forwarded_intact(proxy, mock):
    mock.set(CHAT, Echo())
    filler = hashlib.sha256(b"seed").hexdigest() * (2 * 1024 * 1024 // 64)
    body = json.dumps({"model": "gpt-big", "messages": [{"role": "user",
                                                         "content": filler}]}).encode()
    assert len(body) > 2 * 1024 * 1024
    r = proxy.request("POST", CHAT, body, {"Content-Type": "application/json"}, timeout=30)
    assert r.status == 200, r
    echo = r.json()
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    got = mock.last
    assert got.sha256 == hashlib.sha256(body).hexdigest()
    if not got.chunked:
        assert got.header("content-length") == str(len(body))


def test_binary_request_body_forwarded_intact(proxy, mock):
    mock.set("/v1/audio/transcriptions", Echo())
    body = os.urandom(300000)
    r = proxy.request("POST", "/v1/audio/transcriptions", body,
                      {"Content-Type": "application/octet-stream"}, timeout=20)
    assert r.status == 200, r
    assert mock.last.body == body


def test_large_response_body_intact_with_a_slow_reader(proxy, mock):
    body = os.urandom(8 * 1024 * 1024)
    mock.set("/v1/files/big/content", Json(body, content_type="application/octet-stream"))
    mock.set("/v1/files/big2/content", Chunked([body[i:i + 65536]
                                                for i in range(0, len(body), 65536)],
                                               content_type="application/octet-stream"))
    with proxy.connect(timeout=30) as c:
        for path in ("/v1/files/big/content", "/v1/files/big2/content"):
            c.send(proxy.raw_request("GET", path))
            head = c.read_head(timeout=10)
            assert head.status == 200, head
            time.sleep(0.5)  # let the proxy's write queue fill up: backpressure
            got = head.reader.read_all(timeout=30)
            assert len(got) == len(body) and got == body, "%s: %d of %d bytes, intact: %s" % (
                path, len(got), len(body), got == body[:len(got)])


def test_concurrent_streams(proxy, mock):
    mock.set(CHAT, lambda req: ChatStream(["x%s" % req.json()["model"], "-", "y"], delay=0.02))
    results = {}

    def one(i):
        r = proxy.request("POST", CHAT, chat_body(model="c%d" % i, stream=True), timeout=20)
        text = r.body.decode()
        datas = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
        results[i] = (r.status, "".join((d["choices"][0]["delta"].get("content") or "")
                                        for d in datas if d["choices"]),
                      text.endswith("data: [DONE]\n\n"))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 24, "only %d of 24 streams finished" % len(results)
    for i, (status, content, done) in sorted(results.items()):
        assert (status, content, done) == (200, "xc%d-y" % i, True), (i, status, content, done)


def test_upstream_dying_mid_body_is_not_passed_off_as_complete(proxy, mock):
    raw_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    ev = b'data: {"choices":[{"index":0,"delta":{"content":"partial"}}]}\n\n'
    mock.set(CHAT, Raw(raw_head + b"%x\r\n%s\r\n" % (len(ev), ev)))  # then the mock closes
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(stream=True)))
        head = c.read_head(timeout=15)
        if head.status == 200 and head.framing in ("chunked", "length"):
            try:
                body = head.reader.read_all(timeout=15)
            except FramingError:
                pass  # cut off without a clean end: the client can tell it is incomplete
            else:
                # An SSE body may end cleanly only with an error event last (issue 10, item 3).
                if not body.endswith(b'"type": "upstream_error"}}\n\n'):
                    raise AssertionError("the upstream died mid-body, yet the client got a "
                                         "cleanly ended %s body: %r" % (head.framing, body))
    assert proxy.alive()
    mock.set(CHAT, ChatCompletion("ok"))
    assert proxy.request("POST", CHAT, chat_body()).status == 200


# --------------------------------------------------------------------------- connections

def test_keep_alive_on_both_sides(proxy, mock):
    n = 6
    conn = proxy.http_connection()
    try:
        socks = set()
        for i in range(n):
            conn.request("POST", CHAT, body=json.dumps(chat_body(model="m%d" % i)),
                         headers={"Authorization": "Bearer " + TOKEN,
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 200, data
            assert json.loads(data)["model"] == "m%d" % i
            assert not resp.will_close, "proxy closed a keep-alive client connection"
            socks.add(id(conn.sock))
        assert len(socks) == 1, "http.client had to reconnect: the proxy closed the connection"
    finally:
        conn.close()
    reqs = mock.requests
    assert len(reqs) == n
    ids = {r.conn_id for r in reqs}
    assert len(ids) < n, "upstream connections are not reused: %d requests on %d connections" % (
        n, len(ids))


def test_pipelined_requests_answered_in_order(proxy, mock):
    mock.set_default(Echo())
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(model="first"))
               + proxy.raw_request("GET", "/v1/models?n=2")
               + proxy.raw_request("POST", "/v1/embeddings", {"model": "third", "input": "x"}))
        r1 = c.read_response(timeout=10)
        r2 = c.read_response(timeout=10)
        r3 = c.read_response(timeout=10)
    assert [r1.status, r2.status, r3.status] == [200, 200, 200], (r1, r2, r3)
    e1, e2, e3 = r1.json(), r2.json(), r3.json()
    assert (e1["path"], json.loads(e1["body"])["model"]) == (CHAT, "first")
    assert (e2["method"], e2["target"]) == ("GET", "/v1/models?n=2")
    assert (e3["path"], json.loads(e3["body"])["model"]) == ("/v1/embeddings", "third")


def test_client_disconnect_mid_stream_does_not_hurt(proxy, mock):
    gate = threading.Event()
    sse = mock.set(CHAT, ChatStream(["one", "two", "three"], gates={2: gate}))
    c = proxy.connect()
    c.send(proxy.raw_request("POST", CHAT, chat_body(stream=True)))
    head = c.read_head(timeout=10)
    assert head.status == 200
    head.reader.read_until(b'"one"', timeout=5)
    # Leave abruptly (RST), then let the upstream go on writing.
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    time.sleep(0.2)
    gate.set()
    wait_until(lambda: sse.finished.is_set() or sse.aborted.is_set(), 5,
               message="the mock's stream to end")
    mock.set(CHAT, ChatCompletion("after"))
    r = proxy.request("POST", CHAT, chat_body())
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "after"
    assert proxy.alive()


def test_http10_request_gets_a_correct_response(proxy, mock):
    body = b'{"object":"chat.completion","model":"m","choices":[]}'
    mock.set(CHAT, Chunked([body[:10], body[10:]]))  # the upstream answers chunked
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(), version="HTTP/1.0"))
        r = c.read_response(timeout=10)
        assert r.status == 200, r
        assert r.framing in ("length", "close"), (
            "an HTTP/1.0 client cannot read chunked framing: %r" % r.header_list)
        assert r.body == body
        assert c.wait_closed(5), "HTTP/1.0 without keep-alive: the proxy must close"


# --------------------------------------------------------------------------- mapping, headers

def test_path_mapping_with_base_path(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-base", mock.endpoint("/openai/v1"))])
    mock.set_default(Echo())
    r = p.request("POST", "/v1/chat/completions?x=1", chat_body())
    assert r.status == 200, r
    assert mock.last.target == "/openai/v1/chat/completions?x=1"
    r = p.request("GET", "/v1/models/gpt-4o?a=b&c=%20d")
    assert mock.last.target == "/openai/v1/models/gpt-4o?a=b&c=%20d"


def test_endpoint_query_goes_with_every_request(proxy_factory, mock):
    # Azure OpenAI style: the endpoint carries ?api-version=; the client's own query follows.
    ep = mock.endpoint("/openai/deployments/gpt-4o") + "?api-version=2024-10-21#frag"
    p = proxy_factory(upstreams=[("sk-azure", ep)])
    mock.set_default(Echo())
    r = p.request("POST", "/v1/chat/completions", chat_body())
    assert r.status == 200, r
    assert mock.last.target == "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
    r = p.request("GET", "/v1/models?a=b&c=%20d")
    assert r.status == 200, r
    assert mock.last.target == "/openai/deployments/gpt-4o/models?api-version=2024-10-21&a=b&c=%20d"
    # A query on an endpoint without a path.
    p.stop()
    p = proxy_factory(upstreams=[("sk-azure", mock.url + "?api-version=1")])
    r = p.request("POST", "/v1", chat_body())
    assert r.status == 200, r
    assert mock.last.target == "/?api-version=1"


def test_path_mapping_plain_v1(proxy, mock):
    mock.set_default(Echo())
    proxy.request("POST", "/v1/chat/completions", chat_body())
    assert mock.last.target == "/v1/chat/completions"


def test_forwarded_and_dropped_request_headers(proxy, mock):
    mock.set_default(Echo())
    body = json.dumps(chat_body()).encode()
    r = proxy.request("POST", CHAT, body, {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-Secret": "do-not-forward-42",
        "Cookie": "session=do-not-forward-43",
        "User-Agent": "client-agent-do-not-forward-44",
    })
    assert r.status == 200, r
    got = mock.last
    assert got.header("authorization") == "Bearer " + UPSTREAM_SK
    assert got.header_all("authorization") == ["Bearer " + UPSTREAM_SK]
    assert got.header("content-type") == "application/json"
    assert got.header("accept") == "application/json"
    if got.chunked:
        assert got.body == body
    else:
        assert got.header("content-length") == str(len(body))
    assert got.header("host") in ("127.0.0.1:%d" % mock.port,), (
        "Host must name the upstream, got %r" % got.header("host"))
    assert got.header("x-secret") is None
    assert got.header("cookie") is None
    everything = repr(got.headers)
    for secret in ("do-not-forward-42", "do-not-forward-43", "do-not-forward-44", TOKEN):
        assert secret not in everything, "client value %r reached the upstream: %s" % (
            secret, got.headers)


def test_sk_asis_forwards_the_clients_authorization(proxy_factory, mock):
    p = proxy_factory(upstreams=[("asis", mock.endpoint())])
    mock.set_default(Echo())
    r = p.request("POST", CHAT, chat_body())
    assert r.status == 200, r
    assert mock.last.header_all("authorization") == ["Bearer " + TOKEN]


def test_hop_by_hop_and_upstream_cors_headers_not_forwarded(proxy, mock):
    body = b'{"object":"chat.completion","model":"m","choices":[]}'
    mock.set(CHAT, Chunked([body[:7], body[7:]], headers=[
        ("Connection", "keep-alive, X-Hop-Custom"),
        ("Keep-Alive", "timeout=5, max=77"),
        ("X-Hop-Custom", "hop"),
        ("Proxy-Connection", "keep-alive"),
        ("Access-Control-Allow-Origin", "https://evil.example"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Mock-Name"),
        ("Access-Control-Max-Age", "999"),
    ]))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body()))
        r = c.read_response(timeout=10)
    assert r.status == 200 and r.body == body
    names = [k.lower() for k, _ in r.header_list]
    assert "timeout=5, max=77" not in r.header_all("keep-alive"), r.header_list
    assert "x-hop-custom" not in names, "a header named in Connection is hop-by-hop"
    assert "proxy-connection" not in names
    assert all("x-hop-custom" not in v.lower() for v in r.header_all("connection"))
    assert names.count("transfer-encoding") <= 1
    for k, v in r.header_list:
        if k.lower().startswith("access-control-"):
            assert CORS_EXPECTED.get(k.lower()) == v, "upstream CORS header leaked: %s: %s" % (
                k, v)
    assert_cors(r)


def test_cors_headers_exactly_once_on_every_response(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-c", mock.endpoint())])
    mock.set(CHAT, ChatCompletion(headers=[("Access-Control-Allow-Origin", "*"),
                                           ("Access-Control-Allow-Methods", "GET")]))
    mock.set("/v1/bad", Status(400))
    cases = {
        "proxied 200": p.request("POST", CHAT, chat_body()),
        "proxied 400": p.request("POST", "/v1/bad", chat_body()),
        "streamed": p.request("POST", "/v1/stream", chat_body(stream=True)),
        "404 unknown path": p.request("GET", "/nope"),
        "403 no auth": p.request("POST", CHAT, chat_body(), auth=False),
        "403 wrong token": p.request("POST", CHAT, chat_body(),
                                     {"Authorization": "Bearer nope"}),
        "OPTIONS": p.request("OPTIONS", CHAT, auth=False),
        "admin login": p.request("POST", "/admin/login"),
    }
    for where, r in cases.items():
        assert_cors(r, where)
    q = proxy_factory(upstreams=[("sk-dead", "http://127.0.0.1:%d/v1" % closed_port())])
    assert_cors(q.request("POST", CHAT, chat_body()), "502")


@pytest.mark.parametrize("path", [CHAT, "/v1/models", "/admin/upstreams", "/metrics",
                                  "/anything/else", "/"])
def test_options_any_path_200_without_auth(proxy, mock, path):
    r = proxy.request("OPTIONS", path, auth=False,
                      headers={"Origin": "https://app.example",
                               "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status == 200, r
    assert_cors(r, "OPTIONS " + path)
    assert mock.requests == [], "OPTIONS must not reach the upstream"


@pytest.mark.parametrize("path", ["/nope", "/v2/chat/completions", "/v1x", "/adminx",
                                  "/favicon.ico"])
def test_unknown_path_404_json(proxy, mock, path):
    for auth in (False, True):
        r = proxy.request("GET", path, auth=auth)
        assert_error_shape(r, 404, "GET %s" % path)
        assert r.headers.get("content-type", "").startswith("application/json")
        assert_cors(r)
    assert mock.requests == []


def test_upstream_connection_refused_502(proxy_factory):
    port = closed_port()
    sk = "sk-refused-secret-9876"
    endpoint = "http://127.0.0.1:%d/v1" % port
    p = proxy_factory(upstreams=[(sk, endpoint)])
    r = p.request("POST", CHAT, chat_body(), timeout=20)
    msg = assert_error_shape(r, 502)
    # By upstream id and host (SPEC "Details"), never by key or path.
    label = routetest.upstream_label(endpoint, 1)
    assert label in msg and "/v1" not in msg, "the 502 must name %s: %r" % (label, msg)
    assert sk not in r.body.decode("utf-8", "replace")
    assert sk not in p.stderr_text() and sk not in p.stdout_text(), "the sk reached the logs"
    # The proxy keeps serving.
    r2 = p.request("OPTIONS", CHAT, auth=False)
    assert r2.status == 200


# --------------------------------------------------------------------------- Go database

def test_database_written_by_the_go_program(proxy_factory, mock, tmp_path):
    db = tmp_path / "go.sqlite"
    old_id = "0b7c6d2e-3f5a-4b8e-9c1d-2e3f4a5b6c7d"
    make_go_database(
        db,
        upstreams=[{"id": 1, "sk": "sk-go-upstream", "endpoint": mock.endpoint(),
                    "success_count": 3, "failed_count": 0,
                    "created_at": "2023-08-10 13:32:51.123456789+08:00",
                    "last_call_success_time": "0001-01-01 00:00:00+00:00"}],
        config=[("authorization", TOKEN)],
        records=[{"id": old_id, "created_at": "2023-08-10 13:40:00.5+08:00",
                  "ip": "10.0.0.1", "body": '{"model":"gpt-3.5-turbo"}',
                  "response": "hello", "elapsed_time": 1234567890}])
    p = proxy_factory(db_path=db, set_token=False)
    mock.set(CHAT, ChatCompletion("from go db", usage=(11, 22, 33)))
    r = p.request("POST", CHAT, chat_body(model="gpt-go-db"),
                  {"User-Agent": "routetest-go-db"})
    assert r.status == 200, r
    assert mock.last.header("authorization") == "Bearer sk-go-upstream"

    rows = wait_for_records(db, 2, timeout=10)
    cols = {c["name"] for c in db_query(db, "PRAGMA table_info(records)")}
    missing = [c for c in RECORD_ADDED_COLUMNS if c not in cols]
    assert not missing, "records lacks the added columns %s" % missing
    old = [x for x in rows if x["id"] == old_id]
    assert len(old) == 1 and old[0]["elapsed_time"] == 1234567890 and old[0]["ip"] == "10.0.0.1"
    new = [x for x in rows if x["id"] != old_id]
    assert len(new) == 1, new
    n = new[0]
    assert UUID_RE.match(n["id"]), n["id"]
    assert isinstance(n["created_at"], str) and GO_TIME_RE.match(n["created_at"]), n["created_at"]
    assert n["status"] == 200
    assert n["model"] == "gpt-go-db"
    assert n["upstream_id"] == 1
    assert n["upstream_endpoint"] == mock.endpoint()
    assert (n["prompt_tokens"], n["completion_tokens"], n["total_tokens"]) == (11, 22, 33)
    assert isinstance(n["elapsed_time"], int) and n["elapsed_time"] > 0
    assert n["user_agent"] == "routetest-go-db"
    assert "gpt-go-db" in (n["body"] or "")

    def counted():
        u = db_query(db, "SELECT success_count, failed_count, last_call_success_time "
                         "FROM openai_upstreams WHERE id=1")[0]
        return u if u["success_count"] == 4 else None
    u = wait_until(counted, 10, message="success_count 3 -> 4")
    assert u["failed_count"] == 0
    assert isinstance(u["last_call_success_time"], str) and GO_TIME_RE.match(
        u["last_call_success_time"]) and not u["last_call_success_time"].startswith("0001")


def test_logs_never_show_keys_or_tokens(proxy_factory, mock):
    dead = "http://127.0.0.1:%d/v1" % closed_port()
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint()), ("sk-dead-secret-55", dead)])
    mock.enqueue(Status(500), Status(429))
    for _ in range(3):
        p.request("POST", CHAT, chat_body(), timeout=20)
    p.request("POST", CHAT, chat_body(), {"Authorization": "Bearer wrong-secret-token-77"})
    p.request("POST", CHAT, chat_body(), {"Authorization": "Basic basic-secret-78"})
    p.request("GET", "/admin/upstreams")
    p.stop()
    logs = p.stderr_text() + p.stdout_text()
    for secret in (UPSTREAM_SK, "sk-dead-secret-55", TOKEN, "wrong-secret-token-77",
                   "basic-secret-78"):
        assert secret not in logs, "%r appears in the server's output:\n%s" % (
            secret, "\n".join(ln for ln in logs.splitlines() if secret in ln)[:2000])
