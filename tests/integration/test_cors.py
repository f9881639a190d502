"""CORS for browser SDKs: a preflight's Access-Control-Allow-Headers names what it asked for
(the OpenAI SDKs send x-stainless-* and OpenAI-* headers), each name checked to be a token and
the list bounded; every response keeps the default names, the exposed headers and the max age,
each exactly once."""

import pytest

from routetest import CORS_EXPECTED, assert_cors

DEFAULT_ALLOW = CORS_EXPECTED["access-control-allow-headers"]
SDK_HEADERS = ("x-stainless-os, x-stainless-lang, x-stainless-package-version, "
               "x-stainless-runtime, x-stainless-runtime-version, x-stainless-arch, "
               "x-stainless-retry-count, x-stainless-timeout, openai-beta, authorization, "
               "content-type")


def preflight(p, request_headers):
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    if request_headers is not None:
        headers["Access-Control-Request-Headers"] = request_headers
    return p.request("OPTIONS", "/v1/chat/completions", auth=False, headers=headers)


def only(reply, name):
    got = reply.header_all(name)
    assert len(got) == 1, (name, got)
    return got[0]


def test_preflight_echoes_the_sdk_headers(proxy):
    r = preflight(proxy, SDK_HEADERS)
    assert r.status == 200
    allow = only(r, "access-control-allow-headers")
    names = [n.strip() for n in allow.split(",")]
    assert names[:3] == ["Origin", "Authorization", "Content-Type"], allow
    for want in ("x-stainless-os", "x-stainless-retry-count", "x-stainless-timeout",
                 "openai-beta"):
        assert want in names, allow
    # Names already among the defaults are not repeated.
    assert [n.lower() for n in names].count("authorization") == 1, allow
    for name in ("access-control-allow-origin", "access-control-allow-methods",
                 "access-control-expose-headers", "access-control-max-age"):
        assert only(r, name) == CORS_EXPECTED[name]


@pytest.mark.parametrize("asked", [
    None,                                      # nothing asked
    "",                                        # empty
    "x-ok, bad header",                        # a space inside a name
    "x-ok, x-bad;evil",                        # not a token
    "x-ok\r\nSet-Cookie: a=b",                 # header injection attempt
    ", ".join("x-h%d" % i for i in range(65)),  # too many names
    "x-" + "a" * 3000,                         # too long
])
def test_preflight_with_nothing_valid_gets_the_default(proxy, asked):
    if asked is not None and "\r\n" in asked:
        # http.client refuses to send CR/LF itself; the proxy must never see a split value
        # either way, so send it raw.
        with proxy.connect() as c:
            c.send(("OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    "Access-Control-Request-Headers: %s\r\n\r\n" % asked).encode())
            r = c.read_response(timeout=10)
        assert r.status in (200, 400), r
        assert "a=b" not in " ".join(v for _, v in r.header_list)
        return
    r = preflight(proxy, asked)
    assert r.status == 200
    assert only(r, "access-control-allow-headers") == DEFAULT_ALLOW
    assert_cors(r, "preflight %r" % (asked,))


def test_other_responses_keep_the_default_list(proxy):
    r = proxy.request("POST", "/admin/login",
                      headers={"Access-Control-Request-Headers": "x-stainless-os"})
    assert r.status == 200
    assert_cors(r, "a POST naming request headers is no preflight")
