"""Half-closed clients (issue 11, item 7): a client that sends a complete request and then
shuts down its write side (shutdown(SHUT_WR)) still gets its response, JSON or SSE, and the
exchange is recorded with the status it got (not 499); after the response the connection
closes. A request left incomplete by the FIN is not answered."""

import json
import socket
import threading

import pytest

import routetest
from mock_upstream import ChatCompletion, ChatStream, Delay
from routetest import wait_for_records

CHAT = "/v1/chat/completions"


def chat_body(stream=False, model="half"):
    b = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        b["stream"] = True
    return b


def test_half_closed_json_client_gets_its_200(proxy, mock):
    # The upstream answers after the FIN has surely arrived.
    mock.set(CHAT, Delay(0.5, ChatCompletion("half-json")))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body()))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response(timeout=10)
        assert r.status == 200, r
        assert r.json()["choices"][0]["message"]["content"] == "half-json"
        assert c.wait_closed(5), "the connection should close after the response"
    rows = wait_for_records(proxy.db_path, 1)
    assert rows[-1]["status"] == 200, rows[-1]
    assert not rows[-1]["error"], rows[-1]


def test_half_closed_sse_client_gets_the_whole_stream(proxy, mock):
    gate = threading.Event()
    mock.set(CHAT, ChatStream(["one", "two", "three"], gates={2: gate}))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(stream=True)))
        head = c.read_head(timeout=10)
        assert head.status == 200, head
        head.reader.read_until(b'"one"', timeout=5)
        # FIN while the response streams: not an abort.
        c.sock.shutdown(socket.SHUT_WR)
        gate.set()
        body = head.reader.read_all(timeout=10)
        assert b'"three"' in body and b"[DONE]" in body, body[-300:]
        assert c.wait_closed(5), "the connection should close after the response"
    rows = wait_for_records(proxy.db_path, 1)
    assert rows[-1]["status"] == 200, rows[-1]
    assert not rows[-1]["error"], rows[-1]
    assert "one two three".replace(" ", "") in (rows[-1]["response"] or "").replace(" ", "")


def test_half_closed_sse_request_before_any_byte(proxy, mock):
    mock.set(CHAT, Delay(0.3, ChatStream(["a", "b"])))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(stream=True)))
        c.sock.shutdown(socket.SHUT_WR)
        r = c.read_response(timeout=10)
        assert r.status == 200, r
        assert b"[DONE]" in r.body
        assert c.wait_closed(5)


def test_pipelined_requests_then_fin_are_all_answered(proxy, mock):
    mock.set(CHAT, ChatCompletion("piped"))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body(model="p1"))
               + proxy.raw_request("POST", CHAT, chat_body(model="p2")))
        c.sock.shutdown(socket.SHUT_WR)
        r1 = c.read_response(timeout=10)
        r2 = c.read_response(timeout=10)
        assert (r1.status, r2.status) == (200, 200), (r1, r2)
        assert c.wait_closed(5)


def test_incomplete_request_then_fin_is_closed(proxy, mock):
    with proxy.connect() as c:
        raw = proxy.raw_request("POST", CHAT, chat_body())
        c.send(raw[:-5])
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(5), "an incomplete request and a FIN: the server should close"
        assert bytes(c.buf) == b"", bytes(c.buf[:200])
    assert mock.requests == []


def test_fin_on_an_idle_connection_closes_it(proxy, mock):
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, chat_body()))
        r = c.read_response(timeout=10)
        assert r.status == 200
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(5)
