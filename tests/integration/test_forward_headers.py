"""Which client headers reach the upstream (issue 9, item 2): the OpenAI API's request options
(OpenAI-Beta, Idempotency-Key), the SDKs' X-Stainless-* telemetry, OpenAI-Organization and
OpenAI-Project only with sk "asis", and the names in config forward_headers — never framing,
Host, Authorization or hop-by-hop headers, whatever forward_headers says."""

import json

from conftest import UPSTREAM_SK
from mock_upstream import Echo
from routetest import TOKEN

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})

SDK_HEADERS = {
    "Content-Type": "application/json",
    "OpenAI-Beta": "assistants=v2",
    "Idempotency-Key": "stainless-node-retry-7f3a",
    "X-Stainless-Os": "Linux",
    "X-Stainless-Lang": "js",
    "X-Stainless-Retry-Count": "0",
    "OpenAI-Organization": "org-client",
    "OpenAI-Project": "proj_client",
    "X-Trace-Id": "trace-1",
    "X-Tenant": "tenant-9",
    "X-Other": "not-forwarded",
}


def send(p):
    r = p.request("POST", CHAT, BODY.encode(), SDK_HEADERS)
    assert r.status == 200, r
    return r


def test_sdk_headers_reach_the_upstream_with_a_held_key(proxy, mock):
    mock.set_default(Echo())
    send(proxy)
    got = mock.last
    assert got.header("authorization") == "Bearer " + UPSTREAM_SK
    assert got.header("openai-beta") == "assistants=v2"
    assert got.header("idempotency-key") == "stainless-node-retry-7f3a"
    assert got.header("x-stainless-os") == "Linux"
    assert got.header("x-stainless-lang") == "js"
    assert got.header("x-stainless-retry-count") == "0"
    # The proxy's key has its own organization and project: the client's stay behind.
    assert got.header("openai-organization") is None
    assert got.header("openai-project") is None
    assert got.header("x-trace-id") is None and got.header("x-other") is None


def test_organization_and_project_go_with_asis(proxy_factory, mock):
    p = proxy_factory(upstreams=[("asis", mock.endpoint())])
    mock.set_default(Echo())
    send(p)
    got = mock.last
    assert got.header_all("authorization") == ["Bearer " + TOKEN]
    assert got.header("openai-organization") == "org-client"
    assert got.header("openai-project") == "proj_client"
    assert got.header("openai-beta") == "assistants=v2"


def test_forward_headers_adds_names_but_never_framing_or_hop_by_hop(proxy, mock):
    mock.set_default(Echo())
    proxy.set_config("forward_headers", "X-Trace-Id, x-tenant ,host,connection,content-length,"
                                        "authorization,transfer-encoding")
    send(proxy)
    got = mock.last
    assert got.header("x-trace-id") == "trace-1"
    assert got.header("x-tenant") == "tenant-9"
    assert got.header("x-other") is None
    assert got.header("host") == "127.0.0.1:%d" % mock.port
    assert got.header_all("authorization") == ["Bearer " + UPSTREAM_SK]
    assert got.header_all("content-length") == [str(len(BODY))]
    assert got.header("transfer-encoding") is None
