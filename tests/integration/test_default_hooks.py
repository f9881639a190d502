"""The default hooks are C functions (src/lua/default_hooks.c), exposed as route.defaults: a
script that wraps route.defaults.pick_upstream (filtering the list first) still gets the
policy's order, its messages, and the C authorize it did not override, through the real
binary. Mock upstreams name themselves in their JSON bodies ("mock": name)."""

import textwrap

import pytest

from mock_upstream import MockUpstream
from routetest import assert_error_shape

# Leaves out the upstream whose endpoint is the config key `skip_endpoint`, then lets the
# default order what is left.
WRAP_PICK = """
local route = require "route"
local pick = route.defaults.pick_upstream
assert(debug.getinfo(pick, "S").what == "C", "route.defaults.pick_upstream is not C")
return {
  pick_upstream = function(req, upstreams)
    local skip = route.config.get("skip_endpoint")
    local keep = {}
    for _, u in ipairs(upstreams) do
      if u.endpoint ~= skip and skip ~= "all" then keep[#keep + 1] = u end
    end
    local list, err = pick(req, keep)
    if not list then return nil, "wrapped: " .. err end
    return list
  end,
}
"""


@pytest.fixture
def mocks():
    ms = [MockUpstream(name).start() for name in ("a", "b", "c")]
    yield ms
    for m in ms:
        m.stop()


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def test_wrapping_the_default_pick_upstream(proxy_factory, tmp_path, mocks):
    a, b, c = mocks
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "route.lua").write_text(textwrap.dedent(WRAP_PICK))
    p = proxy_factory(upstreams=[("sk-a-secret", a.endpoint()), ("sk-b-secret", b.endpoint()),
                                 ("sk-c-secret", c.endpoint())],
                      scripts_dir=scripts,
                      config={"policy": "round_robin", "skip_endpoint": b.endpoint()})
    # round_robin over what the script kept: never used first by id, then the oldest success.
    got = [answered_by(p.chat()) for _ in range(6)]
    assert got == ["a", "c", "a", "c", "a", "c"], got
    assert b.requests == []

    # The default's messages come back through the wrapper.
    p.set_config("skip_endpoint", "all")
    msg = assert_error_shape(p.chat(), 500)
    assert msg == "wrapped: no upstream available: add one with -add or POST /admin/upstreams", msg
    p.set_config("skip_endpoint", b.endpoint())
    p.set_config("policy", "fastest")
    msg = assert_error_shape(p.chat(), 500)
    assert msg == "wrapped: unknown load balance policy 'fastest'", msg

    # main: fewest failures, then most successes (a and c have 3 each: id decides).
    p.set_config("policy", "main")
    assert answered_by(p.chat()) == "a"

    # authorize was not overridden: the C default answers with its messages.
    r = p.request("POST", "/v1/chat/completions", {"model": "m", "messages": []}, auth=False)
    assert assert_error_shape(r, 403) == "authorization header should start with 'Bearer'"
    r = p.request("POST", "/v1/chat/completions", {"model": "m", "messages": []},
                  headers={"Authorization": "Bearer not-the-token"})
    assert assert_error_shape(r, 403) == "wrong authorization header"

    # C still writes every row of the served and failed requests (refusals have none).
    rows = p.wait_for_records(9)
    assert [r["status"] for r in rows[:6]] == [200] * 6
    assert sorted(r["status"] for r in rows) == [200] * 7 + [500] * 2


def test_embedded_defaults_round_robin(proxy_factory, mocks):
    # No script: every hook is the C default; round_robin alternates strictly.
    a, b, _ = mocks
    p = proxy_factory(upstreams=[("sk-a-secret", a.endpoint()), ("sk-b-secret", b.endpoint())],
                      config={"policy": "round_robin"})
    got = [answered_by(p.chat()) for _ in range(8)]
    assert got == ["a", "b"] * 4, got
    p.set_config("policy", "random")
    seen = {answered_by(p.chat()) for _ in range(40)}
    assert seen == {"a", "b"}, seen
