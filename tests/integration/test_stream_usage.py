"""Usage for every stream (issue 10, item 1): a chat/completions or completions stream that did
not ask for usage gets stream_options.include_usage added on its way upstream (every other byte
of the body as the client sent it); the usage chunk is recorded and kept from the client, and so
is the "usage": null the upstream then adds to every chunk, so the client receives what it would
have without the flag. A client that asked, or force_stream_usage=0, gets the stream untouched.
Usage that is all zeros is recorded as missing (NULL); cached and reasoning tokens are recorded.
The official Node SDK assembles the same result through the proxy as straight from the
upstream."""

import json
import os
import subprocess
import threading

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatStream, Echo, Sse, chat_chunk

CHAT = "/v1/chat/completions"
FLAG = b',"stream_options":{"include_usage":true}'

# An SDK-like body: its own spacing, a unicode escape, a nested "stream_options" in a string.
BODY = (b'{\n  "model": "gpt-4o-mini",\n  "messages": [{"role": "user", "content": '
        b'"caf\\u00e9 \\"stream_options\\": x"}],\n  "temperature": 0.70,\n  "stream": true\n}')


def events(body):
    """The SSE events of a body, as bytes each (their blank line included)."""
    return [e + b"\n\n" for e in body.split(b"\n\n") if e]


def without_usage(payloads):
    """What a client that did not ask for usage receives of what the mock sent."""
    out = []
    for p in payloads:
        if p.startswith(b"data: {"):
            ev = json.loads(p[6:])
            if ev.get("choices") == [] and ev.get("usage"):
                continue
            p = p.replace(b', "usage": null', b"")
        out.append(p)
    return b"".join(out)


def content_of(body):
    text = ""
    for e in events(body):
        if e.startswith(b"data: {"):
            ev = json.loads(e[6:])
            for c in ev.get("choices") or []:
                text += (c.get("delta") or {}).get("content") or ""
    return text


def test_forced_flag_added_and_usage_chunk_kept_from_the_client(proxy, mock):
    s = mock.set(CHAT, ChatStream(["Hel", "lo", "!"], usage="asked", usage_null=True,
                                  usage_when_asked=(7, 3, 10)))
    r = proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"})
    assert r.status == 200, r
    # Upstream: the flag inserted before the closing brace, every other byte as sent.
    assert mock.last.body == BODY[:-1] + FLAG + b"}"
    assert mock.last.header("content-length") == str(len(BODY) + len(FLAG))
    # The mock did send a usage chunk and "usage": null everywhere ...
    sent = b"".join(s.payloads)
    assert b'"usage": {"prompt_tokens": 7' in sent and sent.count(b'"usage": null') == 5
    # ... and the client receives neither: the stream it would have had without the flag.
    assert r.body == without_usage(s.payloads)
    assert b'"usage"' not in r.body and r.body.endswith(b"data: [DONE]\n\n")
    assert content_of(r.body) == "Hello!"
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (7, 3, 10)
    assert rec["response"] == "Hello!" and rec["status"] == 200 and not rec["error"]


@pytest.mark.parametrize("framing", ["length", "close"])
def test_forced_stream_with_other_framing_ends_for_the_client(proxy, mock, framing):
    # An upstream that frames its SSE with one Content-Length (or by closing): what the client
    # gets is shorter than that length, so it is re-framed chunked and ends properly.
    s = mock.set(CHAT, ChatStream(["Hel", "lo", "!"], usage="asked", usage_null=True,
                                  usage_when_asked=(7, 3, 10), framing=framing))
    r = proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"}, timeout=10)
    assert r.status == 200, r
    assert "content-length" not in r.headers and r.headers.get("transfer-encoding") == "chunked", r.headers
    assert r.body == without_usage(s.payloads)
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (7, 3, 10)


def test_events_split_across_reads_are_forwarded_whole(proxy, mock):
    """Events cut across TCP reads: the start of an event is held until its end, the usage
    chunk and the "usage": null are still taken out, and every event reaches the client as
    soon as it is complete (event 1 before the mock sends the rest)."""
    c1 = json.dumps(chat_chunk("one", usage_null=True)).encode()
    c2 = json.dumps(chat_chunk("two", usage_null=True)).encode()
    usage = json.dumps(chat_chunk(None, usage=(4, 2, 6), empty_choices=True)).encode()
    release = threading.Event()
    pieces = [b"data: " + c1[:20], c1[20:] + b"\n\ndata: " + c2[:30], c2[30:] + b"\n",
              b"\ndata: " + usage[:10], usage[10:] + b"\n\n", b"data: [DONE]\n\n"]
    s = mock.set(CHAT, Sse(pieces, done=False, delay=0.05, gates={2: release}))
    with proxy.connect() as c:
        c.send(proxy.raw_request("POST", CHAT, BODY, {"Content-Type": "application/json"}))
        head = c.read_head(timeout=10)
        assert head.status == 200
        # The first event is whole in the second piece: it arrives while the mock waits.
        head.reader.read_until(b'"one"', timeout=10)
        release.set()
        body = head.reader.read_all(timeout=10)
    want = (b"data: " + c1.replace(b', "usage": null', b"") + b"\n\ndata: " +
            c2.replace(b', "usage": null', b"") + b"\n\ndata: [DONE]\n\n")
    assert body == want
    assert s.finished.wait(5)
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["total_tokens"]) == (4, 6) and rec["response"] == "onetwo"


def test_client_that_asked_gets_the_stream_untouched(proxy, mock):
    s = mock.set(CHAT, ChatStream(["a", "b"], usage="asked", usage_null=True,
                                  usage_when_asked=(5, 2, 7)))
    body = (b'{"model":"m","stream":true,"stream_options":{"include_usage":true},'
            b'"messages":[{"role":"user","content":"x"}]}')
    r = proxy.request("POST", CHAT, body, {"Content-Type": "application/json"})
    assert r.status == 200
    assert mock.last.body == body
    assert r.body == b"".join(s.payloads)  # byte-identical, usage chunk and nulls included
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (5, 2, 7)


def test_force_stream_usage_off(proxy, mock):
    proxy.set_config("force_stream_usage", "0")
    s = mock.set(CHAT, ChatStream(["a", "b"], usage="asked", usage_null=True))
    r = proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"})
    assert r.status == 200
    assert mock.last.body == BODY
    assert r.body == b"".join(s.payloads)
    rec = proxy.wait_for_records(1)[-1]
    assert rec["response"] == "ab"
    assert rec["prompt_tokens"] is None and rec["total_tokens"] is None


def test_what_is_not_forced(proxy, mock):
    mock.set_default(Echo())
    # Not a stream, not a chat/completions path, not parseable: the body goes as it came.
    cases = [(CHAT, b'{"model":"m","stream":false}'),
             ("/v1/responses", b'{"model":"m","stream":true,"input":"x"}'),
             ("/v1/embeddings", b'{"model":"m","stream":true}'),
             (CHAT, b'{"model":"m","stream":true,"stream_options":"odd"}')]
    for path, body in cases:
        r = proxy.request("POST", path, body, {"Content-Type": "application/json"})
        assert r.status == 200 and mock.last.body == body, (path, body)
    # The legacy completions endpoint is forced like chat.
    proxy.request("POST", "/v1/completions", b'{"model":"m","stream":true,"prompt":"x"}',
                  {"Content-Type": "application/json"})
    assert mock.last.body == b'{"model":"m","stream":true,"prompt":"x"' + FLAG + b"}"
    # An existing stream_options object gets the member; include_usage false becomes true.
    proxy.request("POST", CHAT, b'{"stream":true,"stream_options":{"x":1}}')
    assert mock.last.body == b'{"stream":true,"stream_options":{"x":1,"include_usage":true}}'
    proxy.request("POST", CHAT, b'{"stream":true,"stream_options":{"include_usage":false}}')
    assert mock.last.body == b'{"stream":true,"stream_options":{"include_usage":true}}'


def test_all_zero_usage_is_recorded_as_missing(proxy, mock):
    mock.set(CHAT, ChatStream(["z"], usage="asked", usage_when_asked=(0, 0, 0)))
    r = proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"})
    assert r.status == 200 and b'"usage"' not in r.body
    rec = proxy.wait_for_records(1)[-1]
    assert rec["response"] == "z"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (None,) * 3
    assert rec["cached_tokens"] is None and rec["reasoning_tokens"] is None


def test_cached_and_reasoning_tokens_recorded(proxy, mock):
    mock.set(CHAT, ChatStream(["r"], usage="asked", usage_when_asked=(20, 300, 320, 16, 256)))
    assert proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"}).status == 200
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (20, 300, 320)
    assert (rec["cached_tokens"], rec["reasoning_tokens"]) == (16, 256)
    admin = proxy.request("GET", "/admin/request_records").json()[0]
    assert (admin["CachedTokens"], admin["ReasoningTokens"]) == (16, 256)
    assert admin["PromptTokens"] == 20


def strip_volatile(obj):
    """The chunk ids and times the mock makes per request."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in ("created",)}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


@pytest.mark.deadline(120)
def test_node_sdk_assembles_the_same_through_the_proxy(sdk_dir, mock, proxy_factory):
    mock.set(CHAT, lambda req: ChatStream(["Hel", "lo", " SDK"], model="gpt-4o-mini-2024",
                                          usage="asked", usage_null=True,
                                          usage_when_asked=(9, 3, 12)))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_DIRECT_URL=mock.endpoint(),
               ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "usage.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    proxied, direct = got["proxied"], got["direct"]
    assert proxied["text"] == direct["text"] == "Hello SDK"
    assert strip_volatile(proxied["chunks"]) == strip_volatile(direct["chunks"])
    assert strip_volatile(proxied["final"]) == strip_volatile(direct["final"])
    assert "usage" not in proxied["final"]
    # The upstream was asked for usage only through the proxy; both proxied streams recorded it.
    asked = [r.json().get("stream_options") for r in mock.requests]
    assert asked == [{"include_usage": True}] * 2 + [None] * 2, asked
    rows = proxy.wait_for_records(2)
    assert [(r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]) for r in rows] == \
        [(9, 3, 12)] * 2
    assert all(r["response"] == "Hello SDK" for r in rows)


def test_upstream_refusing_the_flag_is_asked_again_as_the_client_asked(proxy, mock):
    """An upstream that does not know stream_options (older Azure API versions) answers 400:
    the same upstream is asked again with the client's own body, and the client gets its
    stream (without usage, as it asked)."""
    from mock_upstream import Status
    mock.set(CHAT, lambda req: Status(400, body={"error": {
        "message": "Unrecognized request argument supplied: stream_options",
        "type": "invalid_request_error"}}) if "stream_options" in req.json() else
        ChatStream(["ok"]))
    r = proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"})
    assert r.status == 200 and content_of(r.body) == "ok", r
    first, second = mock.requests
    assert first.body == BODY[:-1] + FLAG + b"}" and second.body == BODY
    rec = proxy.wait_for_records(1)[-1]
    assert rec["status"] == 200 and not rec["error"] and rec["response"] == "ok"
    assert rec["prompt_tokens"] is None
    rows = proxy.upstream_rows()
    assert rows[0]["failed_count"] == 0
    # A 400 of the client's own making still reaches it (asked twice, answered the same).
    mock.set(CHAT, Status(400))
    assert proxy.request("POST", CHAT, BODY, {"Content-Type": "application/json"}).status == 400
    assert len(mock.requests) == 4
