"""The transport and the HTTP core's shared policy: the connection limit (max_connections),
the router's answers for OPTIONS and unknown paths, a response head that leaves before its
first body bytes exist (it waits for them only within one loop iteration), and many responses on one keep-alive
connection through the recycled connection, request and write objects."""

import json
import threading

from conftest import UPSTREAM_SK
from mock_upstream import Json, Sse
from routetest import RawConn, assert_cors, assert_error_shape, wait_until

CHAT = "/v1/chat/completions"


def open_served(port, keep):
    """Opens a connection and gets one answer on it; appends it to keep. False when the server
    refused it (a connection it has not seen close yet, like the start-up probe, still counts)."""
    c = RawConn(port)
    try:
        c.send_request("OPTIONS", "/anything")
        if c.read_response(method="OPTIONS").status == 200:
            keep.append(c)
            return True
    except (AssertionError, OSError):
        pass
    c.close()
    return False


def test_connection_limit_refuses_then_recovers(proxy_factory, mock):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], config={"max_connections": 3})
    held = []
    try:
        for _ in range(3):
            wait_until(lambda: open_served(p.port, held), timeout=5, message="a slot")
        extra = RawConn(p.port)
        assert extra.wait_closed(5.0), "a fourth connection past max_connections=3 stays open"
        extra.close()
        assert all(c.is_open() for c in held)
        held.pop().close()
        # The closed one leaves the count once the server sees its FIN.
        wait_until(lambda: open_served(p.port, held), timeout=5, message="a slot frees up")
        assert len(held) == 3
    finally:
        for c in held:
            c.close()


def test_router_policy(proxy):
    for path in ("/", "/v1/models", "/nowhere", "*"):
        with RawConn(proxy.port) as c:
            c.send_request("OPTIONS", path)
            r = c.read_response(method="OPTIONS")
            assert r.status == 200, (path, r)
            assert_cors(r, path)
    for path in ("/nowhere", "/v1x", "/metricsx", "/metrics/x", "/adminx"):
        r = proxy.request("GET", path)
        assert_error_shape(r, 404, path)
        assert_cors(r, path)


def test_many_responses_on_one_connection(proxy, mock):
    body = json.dumps({"id": "x", "choices": [{"message": {"content": "hi"}}]}).encode()
    mock.set(CHAT, Json(body))
    req = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with RawConn(proxy.port) as c:
        for i in range(300):
            c.send_request("POST", CHAT, req, headers={
                "Authorization": "Bearer %s" % proxy.token,
                "Content-Type": "application/json"})
            r = c.read_response(method="POST")
            assert r.status == 200 and r.body == body, (i, r)
        # Pipelined: ten requests in one send, ten answers in order.
        one = b"".join([b"OPTIONS /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10)])
        c.send(one)
        for i in range(10):
            assert c.read_response(method="OPTIONS").status == 200


def test_head_does_not_wait_for_the_first_event(proxy, mock):
    gate = threading.Event()
    ev = Sse([{"choices": [{"delta": {"content": "late"}}]}], gates={0: gate})
    mock.set(CHAT, ev)
    req = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with proxy.connect(timeout=10) as c:
        c.send(proxy.raw_request("POST", CHAT, req))
        try:
            head = c.read_head(timeout=5)  # the upstream holds its first event until the gate
            assert head.status == 200, head
            assert not ev.sent[0].is_set()
        finally:
            gate.set()
        body = head.reader.read_all(timeout=10)
    assert b"late" in body and b"[DONE]" in body, body
