"""The upstream's own 429 (issue 9, item 3; SPEC Proxy step 5): when every candidate failed
and the last one answered 429, the client gets that answer — status, body, Retry-After and
x-ratelimit-* — so an SDK raises RateLimitError and waits as told, instead of a 502 it retries
at once. A 429 with another candidate left still fails over. Records and counters as for any
failed attempt."""

import json

from conftest import UPSTREAM_SK
from mock_upstream import ChatCompletion, Status
from routetest import wait_until

CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
LIMIT_HEADERS = [("Retry-After", "7"), ("x-ratelimit-limit-requests", "500"),
                 ("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "7s"),
                 ("x-request-id", "req_429")]
LIMIT_BODY = {"error": {"message": "Rate limit reached for gpt-test", "type": "requests",
                        "code": "rate_limit_exceeded"}}


def test_single_upstream_429_reaches_the_client_as_it_came(proxy_factory, mock):
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    mock.set_default(Status(429, body=LIMIT_BODY, headers=LIMIT_HEADERS))
    r = p.request("POST", CHAT, BODY.encode())
    assert r.status == 429, r
    assert json.loads(r.body) == LIMIT_BODY
    assert r.headers.get("retry-after") == "7"
    assert r.headers.get("x-ratelimit-remaining-requests") == "0"
    assert r.headers.get("x-ratelimit-reset-requests") == "7s"
    assert r.headers.get("x-request-id") == "req_429"
    rows = p.wait_for_records(1)
    assert rows[-1]["status"] == 429 and "429" in rows[-1]["error"], rows[-1]
    assert UPSTREAM_SK not in rows[-1]["error"]
    wait_until(lambda: p.upstream_rows()[0]["failed_count"] == 1, timeout=5,
               message="the 429 counts as that upstream's failure")
    assert p.upstream_rows()[0]["success_count"] == 0


def test_429_then_a_working_upstream_gives_200(proxy_factory, mock_factory):
    a, b = mock_factory("a"), mock_factory("b")
    a.set_default(Status(429, body=LIMIT_BODY, headers=LIMIT_HEADERS))
    b.set_default(ChatCompletion(content="from b"))
    p = proxy_factory(upstreams=[("sk-a", a.endpoint()), ("sk-b", b.endpoint())])
    p.set_config("policy", "round_robin")
    for _ in range(4):
        r = p.request("POST", CHAT, BODY.encode())
        assert r.status == 200, r
        assert json.loads(r.body)["choices"][0]["message"]["content"] == "from b"
