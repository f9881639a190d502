"""Typed configuration through the real binary: -set refuses a value its key cannot take (with
a message naming the key, exit 1, nothing written); a bad value found in the database (a hand
edit) is logged once and its default used while the server keeps serving."""

import pytest

from routetest import assert_error_shape, wait_until

BAD_VALUES = [
    ("shutdown_grace", "abc"),
    ("timeout", "-1"),
    ("timeout", "NaN"),
    ("timeout", "inf"),
    ("connect_timeout", "10s"),
    ("max_connections", "0"),
    ("max_connections", "1.5"),
    ("hook_instruction_budget", "lots"),
    ("metrics_public", "maybe"),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_set_refuses_an_invalid_value(proxy_factory, key, value):
    p = proxy_factory(start=False)
    cp = p.oneshot("-set", "%s=%s" % (key, value))
    assert cp.returncode == 1, cp
    assert key in cp.stderr and "invalid value" in cp.stderr, cp.stderr
    listed = p.oneshot("-list", check=True).stdout
    assert key not in listed, listed


def test_set_accepts_valid_values_and_unknown_keys(proxy_factory):
    p = proxy_factory(start=False)
    for kv in ("timeout=0.5", "max_connections=20000", "metrics_public=1", "weights=a:1,b:2",
               "timeout="):
        cp = p.oneshot("-set", kv)
        assert cp.returncode == 0, (kv, cp.stderr)


def test_bad_stored_value_falls_back_to_the_default_with_one_log_line(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-config", mock.endpoint())], start=False)
    p.write_config_raw("connect_timeout", "abc")
    p.write_config_raw("max_connections", "-5")
    p.start()
    for _ in range(5):
        r = p.chat()
        assert r.status == 200, r
    wait_until(lambda: "connect_timeout: not a number of seconds" in p.stderr_text(),
               message="the bad connect_timeout logged")
    text = p.stderr_text()
    assert text.count("connect_timeout: not a number of seconds") == 1, text
    assert text.count("max_connections: -5 is out of range") == 1, text
    assert "using the default" in text


def test_metrics_public_is_typed(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-config", mock.endpoint())])
    r = p.request("GET", "/metrics", auth=False)
    assert_error_shape(r, 403)
    p.set_config("metrics_public", "true")
    wait_until(lambda: p.request("GET", "/metrics", auth=False).status == 200,
               message="metrics_public=true seen")
