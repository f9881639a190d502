"""Hooks that run away, through the real binary, and the latency_aware and allow_deny examples.

A hook that loops forever or allocates without end must cost only its own request: a 500 with
the Lua error for authorize and pick_upstream, within a bounded time; for on_response, which
runs after the client has its answer, a record that says what went wrong. The next request is
served as usual. The budgets (hook_instruction_budget, hook_memory_limit_mb) are config keys
read per request, so `-set` changes them for the next one.

Mock upstreams name themselves in their JSON bodies ("mock": name), so a test sees which
upstream answered."""

import textwrap
import time

import pytest

from mock_upstream import Delay, MockUpstream, Status
import routetest
from routetest import assert_error_shape, repo_root, wait_until

# The most a runaway hook may take to give its 500 (the default budgets run out in well
# under a second on a slow machine).
RUNAWAY_BOUND = 5.0

# One script with a runaway in each hook, chosen per request:
#   authorize:     header X-Runaway: loop | alloc | pcall-loop | pcall-alloc
#   pick_upstream: model "loop" | "alloc" | "pcall-loop" | "pcall-alloc" | "moderate-loop" |
#                  "moderate-alloc"
#   on_response:   model "late-loop" | "late-alloc"
RUNAWAY_SCRIPT = """
local route = require "route"

local function loop()
  local n = 0
  while true do n = n + 1 end
end

local function alloc()
  -- Every string is kept: only the memory cap can stop this.
  local keep = {}
  for i = 1, math.maxinteger do keep[i] = string.rep("x", 65536) .. i end
end

local function pcall_loop()
  -- A retry loop that swallows every error, the budget's included.
  while true do pcall(loop) end
end

local function pcall_alloc()
  -- The same with "not enough memory": each try fills the cap again.
  while true do pcall(alloc) end
end

local runaways = { loop = loop, alloc = alloc, ["pcall-loop"] = pcall_loop,
                   ["pcall-alloc"] = pcall_alloc }

return {
  authorize = function(req)
    local f = runaways[req.headers["x-runaway"] or ""]
    if f then f() end
    return route.defaults.authorize(req)
  end,
  pick_upstream = function(req, upstreams)
    local f = runaways[req.model or ""]
    if f then f() end
    if req.model == "moderate-loop" then
      -- About 1.2 million VM instructions: fine under the default budget of 10 million.
      local x = 0
      for i = 1, 300000 do x = x + i end
    elseif req.model == "moderate-alloc" then
      -- About 24 MiB held at once: fine under the default cap of 256 MiB.
      local keep = {}
      for i = 1, 24 do keep[i] = string.rep(string.char(64 + i), 1024 * 1024) end
    end
    return route.defaults.pick_upstream(req, upstreams)
  end,
  on_response = function(req, res)
    if req.model == "late-loop" then loop() end
    if req.model == "late-alloc" then alloc() end
    return route.defaults.on_response(req, res)
  end,
}
"""


def write_script(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "route.lua").write_text(textwrap.dedent(text))
    return folder


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    r = fn(*a, **kw)
    return r, time.monotonic() - t0


def counters(proxy):
    return {r["id"]: (r["success_count"], r["failed_count"]) for r in proxy.upstream_rows()}


@pytest.fixture
def mock_a():
    m = MockUpstream("a").start()
    yield m
    m.stop()


@pytest.fixture
def runaway_proxy(tmp_path, mock_a, proxy_factory):
    # proxy_factory (conftest): a crash or a sanitizer report fails the test.
    scripts = write_script(tmp_path / "scripts", RUNAWAY_SCRIPT)
    # The budgets under test, not the 50 ms time limit (test_hooks_observer.py), must stop
    # these runaways.
    return proxy_factory(upstreams=[("sk-a-secret", mock_a.endpoint())], scripts_dir=scripts,
                         config={"hook_time_limit_ms": "60000"})


# --------------------------------------------------------------------------- runaways

@pytest.mark.parametrize("mode, expect", [
    ("loop", "route.lua:6: hook exceeded its instruction budget (10000000 instructions)"),
    ("pcall-loop", "hook exceeded its instruction budget (10000000 instructions)"),
    ("alloc", "not enough memory"),
])
def test_runaway_authorize_is_a_500(runaway_proxy, mock_a, mode, expect):
    p = runaway_proxy
    r, took = timed(p.chat, model="m-" + mode, headers={"X-Runaway": mode}, timeout=10)
    msg = assert_error_shape(r, 500, where=mode)
    assert expect in msg, msg
    assert took < RUNAWAY_BOUND, "%s took %.2fs" % (mode, took)
    assert mock_a.requests == []
    # The next request is served, by the same hooks.
    assert answered_by(p.chat(model="fine")) == "a"
    # A failed authorize is no refusal: the exchange is recorded, with the error.
    rows = p.wait_for_records(1, where="model = ?", params=("m-" + mode,))
    assert rows[0]["status"] == 500 and expect in rows[0]["error"], rows[0]
    assert "authorize failed" in p.stderr_text()


@pytest.mark.parametrize("mode, expect", [
    ("loop", "route.lua:6: hook exceeded its instruction budget (10000000 instructions)"),
    ("pcall-loop", "hook exceeded its instruction budget (10000000 instructions)"),
    ("alloc", "not enough memory"),
    ("pcall-alloc", "hook exceeded its instruction budget (10000000 instructions)"),
])
def test_runaway_pick_upstream_is_a_500(runaway_proxy, mock_a, mode, expect):
    p = runaway_proxy
    r, took = timed(p.chat, model=mode, timeout=10)
    msg = assert_error_shape(r, 500, where=mode)
    assert expect in msg, msg
    assert took < RUNAWAY_BOUND, "%s took %.2fs" % (mode, took)
    assert mock_a.requests == []
    assert answered_by(p.chat(model="fine")) == "a"
    rows = p.wait_for_records(1, where="model = ?", params=(mode,))
    assert rows[0]["status"] == 500 and expect in rows[0]["error"], rows[0]


@pytest.mark.parametrize("mode, expect", [
    ("late-loop", "hook exceeded its instruction budget"),
    ("late-alloc", "not enough memory"),
])
def test_runaway_on_response_keeps_the_answer_and_the_record(runaway_proxy, mock_a, mode,
                                                             expect):
    p = runaway_proxy
    r, took = timed(p.chat, model=mode, timeout=10)
    # The client has its whole answer: on_response runs after it.
    assert answered_by(r) == "a"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the mock."
    assert took < RUNAWAY_BOUND
    # The hook never got to record: C did, saying why.
    rows = p.wait_for_records(1, where="model = ?", params=(mode,))
    row = rows[0]
    assert row["status"] == 200 and row["upstream_id"] == 1, row
    assert row["error"].startswith("on_response hook: ") and expect in row["error"], row
    assert row["response"] == "Hello from the mock."
    # ... and counted the success the hook did not.
    wait_until(lambda: counters(p)[1] == (1, 0), message="success counted from C")
    # The next exchange is served and recorded by the hook as usual.
    assert answered_by(p.chat(model="fine")) == "a"
    rows = p.wait_for_records(1, where="model = 'fine'")
    assert rows[0]["status"] == 200 and not rows[0]["error"]
    assert "on_response failed" in p.stderr_text()


def test_budgets_follow_set_on_the_next_request(runaway_proxy, mock_a):
    p = runaway_proxy
    # Defaults: a moderate loop and a moderate allocation pass.
    assert answered_by(p.chat(model="moderate-loop")) == "a"
    assert answered_by(p.chat(model="moderate-alloc")) == "a"

    p.set_config("hook_instruction_budget", "100000")
    msg = assert_error_shape(p.chat(model="moderate-loop"), 500)
    assert "hook exceeded its instruction budget (100000 instructions)" in msg, msg
    # Light hooks still fit in the small budget.
    assert answered_by(p.chat(model="fine")) == "a"

    p.set_config("hook_instruction_budget", "50000000")
    assert answered_by(p.chat(model="moderate-loop")) == "a"
    # -set refuses a value that is no number; one written by hand means the default, and the
    # server says so once.
    cp = p.oneshot("-set", "hook_instruction_budget=lots")
    assert cp.returncode == 1 and "hook_instruction_budget" in cp.stderr, cp
    p.write_config_raw("hook_instruction_budget", "lots")
    bad = "hook_instruction_budget: not a whole number"
    wait_until(lambda: answered_by(p.chat(model="fine")) == "a" and bad in p.stderr_text(),
               message="the bad stored value seen and logged")
    assert answered_by(p.chat(model="moderate-loop")) == "a"
    assert p.stderr_text().count(bad) == 1
    r, took = timed(p.chat, model="loop", timeout=10)
    assert "(10000000 instructions)" in assert_error_shape(r, 500)
    assert took < RUNAWAY_BOUND

    p.set_config("hook_memory_limit_mb", "8")
    msg = assert_error_shape(p.chat(model="moderate-alloc"), 500)
    assert "not enough memory (hook memory limit 8 MiB)" in msg, msg
    assert answered_by(p.chat(model="fine")) == "a"
    p.set_config("hook_memory_limit_mb", "64")
    assert answered_by(p.chat(model="moderate-alloc")) == "a"
    assert p.alive()


def test_route_defaults_is_there_when_the_script_loads(proxy_factory, tmp_path, mock_a):
    # A script may keep route.defaults in a local at its top level: at start-up as on a reload.
    scripts = write_script(tmp_path / "scripts", """
        local route = require "route"
        local defaults = route.defaults
        assert(type(defaults) == "table", "route.defaults missing at load time")
        return {
          pick_upstream = function(req, upstreams)
            return defaults.pick_upstream(req, upstreams)
          end,
        }
    """)
    with proxy_factory(upstreams=[("sk-a-secret", mock_a.endpoint())],
                       scripts_dir=scripts) as p:
        assert answered_by(p.chat()) == "a"
        assert p.request("POST", "/admin/reload").status == 200
        assert answered_by(p.chat()) == "a"


# --------------------------------------------------------------------------- latency_aware

def test_example_latency_aware(proxy_factory, tmp_path):
    folder = repo_root() / "scripts" / "examples" / "latency_aware"
    # The slow one gets id 1, so an order by id alone would pick it.
    with MockUpstream("slow", default=Delay(0.3)) as slow, MockUpstream("fast") as fast, \
            proxy_factory(upstreams=[("sk-slow-secret", slow.endpoint()),
                                     ("sk-fast-secret", fast.endpoint())],
                          scripts_dir=folder) as p:
        # Warm-up: each unmeasured upstream is tried first once (by id), then the faster wins.
        got = [answered_by(p.chat()) for _ in range(6)]
        assert got == ["slow", "fast", "fast", "fast", "fast", "fast"], got

        # Records and counters still come from the default on_response.
        rows = p.wait_for_records(6)
        assert [r["upstream_id"] for r in rows] == [1, 2, 2, 2, 2, 2]
        assert rows[0]["response_time"] >= 250_000_000, rows[0]
        assert rows[1]["response_time"] < rows[0]["response_time"]
        wait_until(lambda: counters(p) == {1: (1, 0), 2: (5, 0)}, message="successes counted")

        # The fast one fails: the proxy fails over along the list to the slow one...
        fast.enqueue(Status(503))
        assert answered_by(p.chat()) == "slow"
        wait_until(lambda: counters(p)[2] == (5, 1), message="failure counted")
        # ... and the recently failed upstream goes to the back while its cooldown lasts.
        assert answered_by(p.chat()) == "slow"
        # With no cooldown the failure no longer reorders, and the fast one is back in front;
        # its success takes the failure mark away for good.
        p.set_config("latency_failure_cooldown", "0")
        assert answered_by(p.chat()) == "fast"
        p.set_config("latency_failure_cooldown", "30")
        assert answered_by(p.chat()) == "fast"

        # Both down: every upstream was in the list, and each attempt is named.
        fast.enqueue(Status(500))
        slow.enqueue(Status(500))
        msg = assert_error_shape(p.chat(), 502)
        assert routetest.upstream_label(fast.endpoint()) in msg, msg
        assert routetest.upstream_label(slow.endpoint()) in msg, msg

        # Authorization is still the default's.
        assert p.chat(headers={"Authorization": "Bearer nope"}).status == 403


def test_example_latency_aware_keeps_its_averages_across_a_reload(proxy_factory, tmp_path):
    src = repo_root() / "scripts" / "examples" / "latency_aware" / "route.lua"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "route.lua").write_text(src.read_text())
    with MockUpstream("slow", default=Delay(0.3)) as slow, MockUpstream("fast") as fast, \
            proxy_factory(upstreams=[("sk-slow-secret", slow.endpoint()),
                                     ("sk-fast-secret", fast.endpoint())],
                          scripts_dir=scripts) as p:
        assert [answered_by(p.chat()) for _ in range(3)] == ["slow", "fast", "fast"]
        assert p.request("POST", "/admin/reload").status == 200
        # route.shared kept the averages: no new warm-up.
        assert [answered_by(p.chat()) for _ in range(3)] == ["fast", "fast", "fast"]
        # An old average counts as none: the slow one is measured again (first, by id).
        p.set_config("latency_remeasure", "0.5")
        time.sleep(0.7)
        assert [answered_by(p.chat()) for _ in range(3)] == ["slow", "fast", "fast"]


# --------------------------------------------------------------------------- allow_deny

def test_example_allow_deny(proxy_factory, tmp_path):
    folder = repo_root() / "scripts" / "examples" / "allow_deny"
    names = ("a", "b", "c")
    mocks = [MockUpstream(n).start() for n in names]
    try:
        a, b, c = mocks
        with proxy_factory(upstreams=[("sk-%s-secret" % m.name, m.endpoint())
                                      for m in mocks],
                           scripts_dir=folder,
                           config={"allow.1": "gpt-4o, gpt-4o-mini,gpt-3.5-turbo",
                                   "deny.2": "gpt-4*",
                                   "allow.3": "~^claude%-"}) as p:
            # Only a allows gpt-4o (b denies gpt-4*, c allows only claude-*).
            assert answered_by(p.chat(model="gpt-4o")) == "a"
            assert answered_by(p.chat(model="gpt-4o-mini")) == "a"
            # An exact name is exact: '.' and '-' are no pattern characters there.
            assert answered_by(p.chat(model="gpt-3x5-turbo")) == "b"
            # b (no allow list) and c (pattern) both take claude-3; the policy puts b first
            # (it has a success), and the proxy fails over along the filtered list.
            assert answered_by(p.chat(model="claude-3")) == "b"
            b.enqueue(Status(503))
            assert answered_by(p.chat(model="claude-3")) == "c"
            # b's failure puts it behind c for the next one (once the writer thread has
            # stored the counters the policy orders by).
            wait_until(lambda: counters(p)[2][1] == 1, message="b's failure counted")
            assert answered_by(p.chat(model="claude-3-opus")) == "c"

            # Nobody allows it: a 500 naming the model, recorded, no upstream asked.
            before = sum(len(m.requests) for m in mocks)
            msg = assert_error_shape(p.chat(model="gpt-4-turbo"), 500)
            assert msg == "no upstream allows model 'gpt-4-turbo'", msg
            assert sum(len(m.requests) for m in mocks) == before
            rows = p.wait_for_records(1, where="model = 'gpt-4-turbo'")
            assert rows[0]["status"] == 500
            assert rows[0]["error"] == "no upstream allows model 'gpt-4-turbo'"

            # A request without a model is not filtered.
            r = p.request("GET", "/v1/models")
            assert r.status == 200, r

            # Deny wins over allow; -set takes effect on the next request.
            p.set_config("deny.1", "gpt-4o")
            msg = assert_error_shape(p.chat(model="gpt-4o"), 500)
            assert msg == "no upstream allows model 'gpt-4o'"
            assert answered_by(p.chat(model="gpt-4o-mini")) == "a"
            # deny.<id>=* takes an upstream out for every model.
            p.set_config("deny.1", "*")
            assert answered_by(p.chat(model="gpt-3.5-turbo")) == "b"

            # A bad Lua pattern matches nothing and is logged once.
            p.set_config("allow.3", "~[claude")
            for _ in range(3):
                assert answered_by(p.chat(model="claude-3")) == "b"
            assert p.stderr_text().count("allow_deny: bad Lua pattern") == 1

            # Authorization is still the default's.
            assert p.chat(headers={"Authorization": "Bearer nope"}).status == 403
    finally:
        for m in mocks:
            m.stop()
