"""Honest stream errors and honest records (issue 10, item 3; issue 11, item 6).

An upstream that fails after the response head went to the client (a reset, malformed chunking,
a close, a chat stream that ends without data: [DONE]) gives an SSE client exactly one final
event `data: {"error": {..., "type": "upstream_error"}}` and then the proper end of the chunked
body, so an SDK raises; a non-SSE body cut short is cut (no terminating chunk). The record keeps
the status the client saw, the error, and the text received so far. A stream ended by the
shutdown is recorded as "shutdown", one the client left as "client disconnected". A JSON body
whose only fault is invalid UTF-8 keeps its text (U+FFFD) and its tokens."""

import json
import os
import signal
import subprocess
import threading

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatStream, Json, Raw, Sse, chat_chunk
from routetest import FramingError, wait_until

CHAT = "/v1/chat/completions"
STREAM = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}
ASKED = dict(STREAM, stream_options={"include_usage": True})
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def partial_events():
    return [chat_chunk("", role="assistant"), chat_chunk("par"), chat_chunk("tial")]


def read_stream(proxy, body):
    """The body of a stream request, read to its end (a FramingError if it has none)."""
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"}))
        head = c.read_head(timeout=15)
        assert head.status == 200 and head.framing == "chunked", head
        return head.reader.read_all(timeout=15)


def split_error(body):
    """(the bytes before the error event, the error object); asserts there is exactly one."""
    assert body.count(b"upstream_error") == 1, body
    at = body.rindex(b"data: {\"error\"")
    ev = body[at:]
    assert ev.endswith(b"\n\n") and ev.count(b"\n\n") == 1, ev
    err = json.loads(ev[6:])["error"]
    assert err["type"] == "upstream_error" and err["message"], err
    return body[:at], err


@pytest.mark.parametrize("request_body", [STREAM, ASKED], ids=["forced", "asked"])
def test_reset_mid_stream_gives_one_error_event(proxy, mock, request_body):
    s = mock.set(CHAT, Sse(partial_events(), done=False, then="reset"))
    body = read_stream(proxy, request_body)  # a proper end: no FramingError
    before, err = split_error(body)
    assert before == b"".join(s.payloads)  # the forwarded events, as they came
    assert "mid-body" in err["message"]
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200
    assert rec["error"].startswith("upstream closed mid-body"), rec["error"]
    assert mock.endpoint() in rec["error"]
    assert rec["response"] == "partial"
    wait_until(lambda: proxy.upstream_rows()[0]["failed_count"] == 1, timeout=5,
               message="the broken upstream counted as failed")
    assert proxy.upstream_rows()[0]["success_count"] == 0


def test_chat_stream_without_done_is_an_error(proxy, mock):
    s = mock.set(CHAT, Sse(partial_events(), done=False))  # a clean end of the body, no [DONE]
    before, err = split_error(read_stream(proxy, ASKED))
    assert before == b"".join(s.payloads)
    assert "[DONE]" in err["message"]
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200 and "[DONE]" in rec["error"] and rec["response"] == "partial"


def test_complete_stream_is_not_an_error(proxy, mock):
    s = mock.set(CHAT, ChatStream(["whole"], usage="asked"))
    r = proxy.request("POST", CHAT, ASKED)
    assert r.status == 200 and r.body == b"".join(s.payloads)
    rec = proxy.wait_for_records(1)[-1]
    assert not rec["error"] and rec["response"] == "whole"


def test_malformed_chunking_mid_stream(proxy, mock):
    ev = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
    mock.set(CHAT, Raw(HEAD + b"%x\r\n%s\r\nzz\r\nnot a chunk\r\n" % (len(ev), ev)))
    before, err = split_error(read_stream(proxy, STREAM))
    assert before == ev
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200 and rec["error"].startswith("upstream failed mid-body")
    assert rec["response"] == "ok"


@pytest.mark.parametrize("request_body", [STREAM, ASKED], ids=["forced", "asked"])
def test_cut_inside_an_event(proxy, mock, request_body):
    whole = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
    cut = b'data: {"choices":[{"index":0,"delta":{"cont'
    mock.set(CHAT, Raw(HEAD + b"%x\r\n%s\r\n" % (len(whole + cut), whole + cut)))
    before, err = split_error(read_stream(proxy, request_body))
    if request_body is STREAM:
        assert before == whole  # held, never forwarded: the client is between events
    else:
        assert before == whole + cut + b"\n\n"  # forwarded as it came, then ended
    rec = proxy.wait_for_records(1)[-1]
    assert rec["response"] == "ok" and rec["error"].startswith("upstream closed mid-body")


def test_non_sse_body_cut_is_cut(proxy, mock):
    mock.set(CHAT, Raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"choices\": [{\"mess"))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, json.dumps({"model": "m"}).encode()))
        head = c.read_head(timeout=15)
        assert head.status == 200 and head.framing == "length"
        with pytest.raises(FramingError):
            head.reader.read_all(timeout=15)
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200 and rec["error"].startswith("upstream closed mid-body")


def test_client_disconnect_recorded_as_such(proxy, mock):
    # A client's FIN alone is a half-close (RFC 9112 lets it wait for its answer), so the
    # disconnect shows when the next writes to it fail: the stream goes on after the close.
    go = threading.Event()
    mock.set(CHAT, ChatStream(["first"] + [" x"] * 300, gates={2: go}, gate_timeout=20,
                              delay=0.01))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, json.dumps(ASKED).encode()))
        head = c.read_head(timeout=15)
        head.reader.read_until(b'"first"', timeout=15)
    go.set()
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200 and rec["error"] == "client disconnected", rec
    assert rec["response"].startswith("first") and len(rec["response"]) < len("first") + 600


def test_shutdown_recorded_as_such(proxy_factory, mock):
    never = threading.Event()
    mock.set(CHAT, ChatStream(["first", "second"], gates={2: never}, gate_timeout=30))
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    p.set_config("shutdown_grace", "1")
    with p.connect() as c:
        c.send(p.raw_request("POST", CHAT, json.dumps(ASKED).encode()))
        head = c.read_head(timeout=15)
        head.reader.read_until(b'"first"', timeout=15)
        p.stop(sig=signal.SIGTERM)  # the grace passes with the stream still open
    never.set()
    rec = routetest.wait_for_records(p.db_path, 1)[-1]
    assert rec["status"] == 200 and rec["error"] == "shutdown", rec
    assert rec["response"] == "first"


def test_invalid_utf8_json_keeps_text_and_tokens(proxy, mock):
    body = (b'{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":'
            b'"caf\xc3 ok \xe2\x82 \xf0\x9f\x98\x80 end"}}],'
            b'"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}')
    mock.set(CHAT, Json(body))
    r = proxy.request("POST", CHAT, {"model": "m"})
    assert r.status == 200 and r.body == body  # the bytes pass through as they are
    rec = proxy.wait_for_records(1)[-1]
    assert rec["response"] == body[body.index(b'caf'):body.index(b' end') + 4].decode(
        "utf-8", "replace")
    assert "\ufffd" in rec["response"] and "\U0001F600" in rec["response"]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (4, 6, 10)


@pytest.mark.deadline(120)
def test_node_sdk_raises_on_a_reset_stream(sdk_dir, mock, proxy_factory):
    mock.set(CHAT, Sse(partial_events(), done=False, then="reset"))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "stream_error.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["raised"], got  # not a silently truncated answer
    assert got["raised"]["name"] == "APIError" and "mid-body" in got["raised"]["message"], got
    assert got["text"] == "partial"
    rec = proxy.wait_for_records(1)[-1]
    assert rec["error"].startswith("upstream closed mid-body") and rec["response"] == "partial"
