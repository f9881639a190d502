"""The Responses API and embeddings in the records (issue 10, item 2): /v1/responses JSON (the
output_text of its output items, the model, usage.input_tokens/output_tokens/total_tokens and
their details) and its typed SSE events (the output_text deltas concatenated, the final
response.completed's usage and model); /v1/embeddings usage (prompt and total only). The
official Node SDK's responses.create and responses.stream work through the proxy."""

import json
import os
import subprocess

import pytest

import routetest
from conftest import UPSTREAM_SK
from mock_upstream import Json, ResponsesJson, ResponsesStream

RESPONSES = "/v1/responses"


def test_responses_json_recorded(proxy, mock):
    mock.set(RESPONSES, ResponsesJson("Hello, responses!", model="gpt-4.1-2025",
                                      usage=(36, 87, 123, 8, 64)))
    body = {"model": "gpt-4.1", "input": "Say hello"}
    r = proxy.request("POST", RESPONSES, body)
    assert r.status == 200 and r.json()["output"][0]["content"][0]["text"] == "Hello, responses!"
    rec = proxy.wait_for_records(1)[-1]
    assert rec["response"] == "Hello, responses!"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (36, 87, 123)
    assert (rec["cached_tokens"], rec["reasoning_tokens"]) == (8, 64)
    assert rec["model"] == "gpt-4.1" and rec["status"] == 200 and not rec["error"]


def test_responses_json_model_from_the_response(proxy, mock):
    mock.set(RESPONSES, ResponsesJson("x", model="gpt-4.1-2025", usage=(1, 2, 3)))
    r = proxy.request("POST", RESPONSES, {"input": "no model in the request"})
    assert r.status == 200
    rec = proxy.wait_for_records(1)[-1]
    assert rec["model"] == "gpt-4.1-2025" and rec["response"] == "x"
    assert rec["cached_tokens"] is None and rec["reasoning_tokens"] is None


def test_responses_stream_recorded(proxy, mock):
    s = mock.set(RESPONSES, ResponsesStream(["Hi", " the", "re", "!"], model="gpt-4.1-2025",
                                            usage=(12, 4, 16, 0, 0)))
    body = {"model": "gpt-4.1", "input": "Say hello", "stream": True}
    r = proxy.request("POST", RESPONSES, body)
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.body == b"".join(s.payloads)  # not a chat stream: forwarded untouched
    assert json.loads(mock.last.body) == body  # nor its request edited
    rec = proxy.wait_for_records(1)[-1]
    # The deltas once: the done events and response.completed repeat the text.
    assert rec["response"] == "Hi there!"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (12, 4, 16)
    assert (rec["cached_tokens"], rec["reasoning_tokens"]) == (0, 0)
    assert not rec["error"]  # a Responses stream has no [DONE]: its end is not an error


def test_embeddings_usage_recorded(proxy, mock):
    mock.set("/v1/embeddings", Json({"object": "list", "model": "text-embedding-3-small",
                                     "data": [{"object": "embedding", "index": 0,
                                               "embedding": [0.1, -0.2]}],
                                     "usage": {"prompt_tokens": 8, "total_tokens": 8}}))
    r = proxy.request("POST", "/v1/embeddings", {"model": "text-embedding-3-small",
                                                 "input": "hello"})
    assert r.status == 200
    rec = proxy.wait_for_records(1)[-1]
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"]) == (8, 0, 8)
    assert rec["model"] == "text-embedding-3-small"


@pytest.mark.deadline(120)
def test_node_sdk_responses_create_and_stream(sdk_dir, mock, proxy_factory):
    mock.enqueue(ResponsesJson("Plain answer.", model="gpt-4.1-mini", usage=(10, 3, 13, 2, 0)))
    mock.enqueue(ResponsesStream(["Str", "eamed", "."], model="gpt-4.1-mini", usage=(11, 3, 14)))
    mock.enqueue(ResponsesStream(["Hel", "per", "!"], model="gpt-4.1-mini", usage=(12, 3, 15)))
    proxy = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "responses.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["created"]["text"] == "Plain answer."
    assert got["created"]["usage"]["input_tokens"] == 10
    assert got["streamed"]["deltas"] == "Streamed."
    assert got["streamed"]["events"][0] == "response.created"
    assert got["streamed"]["events"][-1] == "response.completed"
    assert got["helper"]["text"] == got["helper"]["deltas"] == "Helper!"
    assert got["helper"]["usage"]["total_tokens"] == 15
    rows = proxy.wait_for_records(3)
    got_rows = sorted((r["response"], r["prompt_tokens"], r["completion_tokens"],
                       r["total_tokens"]) for r in rows)
    assert got_rows == [("Helper!", 12, 3, 15), ("Plain answer.", 10, 3, 13),
                        ("Streamed.", 11, 3, 14)]
