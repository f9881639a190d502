"""The official openai Node SDK (6.x, pinned in tests/sdk/package-lock.json) against the proxy:
plain and streamed chat completions return the mock's text and usage, and both exchanges are
recorded with the right content and token counts."""

import json
import os
import subprocess

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import ChatCompletion, ChatStream, Hang, Status



@pytest.mark.deadline(120)
def test_node_sdk_plain_and_stream(sdk_dir, mock, proxy_factory):
    mock.enqueue(ChatCompletion(content="Hi from the plain mock.", model="gpt-4o-mini-2024",
                                usage=(11, 5, 16)))
    mock.enqueue(ChatStream(pieces=("Hel", "lo", " stream"), model="gpt-4o-mini-2024",
                            usage=(9, 3, 12), delay=0.05))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "chat.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])

    assert got["plain"]["content"] == "Hi from the plain mock."
    assert got["plain"]["usage"]["prompt_tokens"] == 11
    assert got["plain"]["usage"]["total_tokens"] == 16
    assert got["stream"]["content"] == "Hello stream"
    assert got["stream"]["usage"]["completion_tokens"] == 3
    assert got["stream"]["usage"]["total_tokens"] == 12

    # The mock saw the upstream key, never the client's token, and the stream options.
    streamed = mock.requests[1].json()
    assert streamed["stream"] is True and streamed["stream_options"]["include_usage"] is True
    assert mock.requests[0].header("authorization") == "Bearer " + UPSTREAM_SK

    rows = proxy.wait_for_records(2)
    by_response = {r["response"]: r for r in rows}
    plain, stream = by_response["Hi from the plain mock."], by_response["Hello stream"]
    assert (plain["prompt_tokens"], plain["completion_tokens"], plain["total_tokens"]) == (11, 5, 16)
    assert (stream["prompt_tokens"], stream["completion_tokens"], stream["total_tokens"]) == (9, 3, 12)
    assert plain["model"] == stream["model"] == "gpt-4o-mini"
    assert plain["status"] == stream["status"] == 200


@pytest.mark.deadline(120)
def test_node_sdk_sees_429_and_does_not_retry_a_504(sdk_dir, mock, proxy_factory):
    limit = {"error": {"message": "Rate limit reached", "type": "requests",
                       "code": "rate_limit_exceeded"}}
    mock.enqueue(Status(429, body=limit, headers=[("Retry-After", "7")]))
    mock.set_default(Hang(timeout=10))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    proxy.set_config("timeout", "1")
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "errors.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rateLimited"]["name"] == "RateLimitError", got
    assert got["rateLimited"]["status"] == 429 and got["rateLimited"]["retryAfter"] == "7", got
    assert got["timedOut"]["status"] == 504, got
    # One request for the 429, exactly one for the timed-out generation: no SDK retry.
    assert len(mock.requests) == 2, [r.target for r in mock.requests]
