"""The Lua hooks through the real binary: the default authorize (each refusal and each accepted
form), every load-balance policy's choice with counters seeded in the database, the counters
the default on_response keeps, scripts that override only pick_upstream, hooks that raise or
run away (500 with the Lua error, and the next request still served), hot reload keeping
route.shared, and both example scripts. Mock upstreams name themselves in their JSON bodies
("mock": name), so a test sees which upstream answered."""

import sqlite3
import textwrap
import time

import pytest

from mock_upstream import MockUpstream, Status
from routetest import Proxy, assert_error_shape, repo_root, wait_until

NAMES = ("a", "b", "c", "d")


@pytest.fixture
def mocks():
    ms = [MockUpstream(n).start() for n in NAMES]
    yield ms
    for m in ms:
        m.stop()


def write_script(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "route.lua").write_text(textwrap.dedent(text))
    return folder


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def seed_counters(db_path, rows):
    """rows: {id: (success_count, failed_count, last_call_success_time text or None)}."""
    c = sqlite3.connect(str(db_path))
    try:
        for uid, (succ, fail, last) in rows.items():
            c.execute("UPDATE openai_upstreams SET success_count=?, failed_count=?, "
                      "last_call_success_time=? WHERE id=?", (succ, fail, last, uid))
        c.commit()
    finally:
        c.close()


def counters(proxy):
    return {r["id"]: (r["success_count"], r["failed_count"]) for r in proxy.upstream_rows()}


def settled_chat(proxy, **kw):
    """A chat that succeeds, then waits until its success is in the database: counters are
    written by the writer thread, and the next pick must see them (round_robin)."""
    total = sum(s for s, _ in counters(proxy).values())
    name = answered_by(proxy.chat(**kw))
    wait_until(lambda: sum(s for s, _ in counters(proxy).values()) > total,
               message="success counted")
    return name


# id: success, failed, last success
#  1 (a): 5, 1, 2023-01-01    2 (b): 2, 0, never (the Go zero time)
#  3 (c): 9, 0, 2024-01-01    4 (d): 0, 0, 2023-06-01
SEED = {
    1: (5, 1, "2023-01-01 00:00:00+00:00"),
    2: (2, 0, "0001-01-01 00:00:00+00:00"),
    3: (9, 0, "2024-01-01 00:00:00+00:00"),
    4: (0, 0, "2023-06-01 00:00:00.5+08:00"),
}


def seeded_proxy(tmp_path, mocks, policy, **kw):
    p = Proxy(tmp_path, upstreams=[("sk-%s-secret" % m.name, m.endpoint()) for m in mocks],
              config={"policy": policy}, start=False, **kw)
    seed_counters(p.db_path, SEED)
    return p.start()


# --------------------------------------------------------------------------- authorize

def test_authorize_cases(tmp_path, mocks):
    with Proxy(tmp_path, upstreams=[("sk-a-secret", mocks[0].endpoint())], token="tok-one",
               set_token=False, config={"authorization": " tok-one , tok-two,"}) as p:
        cases = [
            (None, "authorization header should start with 'Bearer'"),
            ("Basic tok-one", "authorization header should start with 'Bearer'"),
            ("bearer tok-one", "authorization header should start with 'Bearer'"),
            ("Bearer wrong", "wrong authorization header"),
            ("Bearer tok-on", "wrong authorization header"),
            ("Bearer ", "wrong authorization header"),
        ]
        for header, message in cases:
            hs = {"Authorization": header} if header is not None else {}
            r = p.request("POST", "/v1/chat/completions", {"model": "m"}, hs, auth=False)
            assert assert_error_shape(r, 403, where=repr(header)) == message

        for header in ("Bearer tok-one", "Bearer tok-two", "Bearer   tok-two  "):
            r = p.request("POST", "/v1/chat/completions", {"model": "m"},
                          {"Authorization": header}, auth=False)
            assert answered_by(r) == "a", header

        # Refusals leave no row; the three accepted exchanges do.
        rows = p.wait_for_records(3)
        time.sleep(0.3)
        rows = p.records()
        assert len(rows) == 3
        assert all(r["status"] == 200 for r in rows)
        assert "tok-one" not in p.stderr_text() and "tok-two" not in p.stderr_text()


def test_noauth_flag(tmp_path, mocks):
    with Proxy(tmp_path, upstreams=[("sk-a-secret", mocks[0].endpoint())],
               args=["-noauth"]) as p:
        r = p.request("POST", "/v1/chat/completions", {"model": "m"}, auth=False)
        assert answered_by(r) == "a"
        # Admin stays protected.
        r = p.request("GET", "/admin/upstreams", auth=False)
        assert r.status == 403


# --------------------------------------------------------------------------- policies

def test_policy_main(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "main") as p:
        assert [answered_by(p.chat()) for _ in range(3)] == ["c", "c", "c"]


def test_policy_default_is_main(tmp_path, mocks):
    p = Proxy(tmp_path, upstreams=[("sk-%s-secret" % m.name, m.endpoint()) for m in mocks],
              start=False)
    seed_counters(p.db_path, SEED)
    with p.start():
        assert answered_by(p.chat()) == "c"


def test_policy_round_robin(tmp_path, mocks):
    # Never-used first, then the oldest success; each success moves an upstream to the back.
    with seeded_proxy(tmp_path, mocks, "round_robin") as p:
        got = [settled_chat(p) for _ in range(5)]
        assert got == ["b", "a", "d", "c", "b"]


def test_policy_round_robin_available(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "round_robin_available") as p:
        got = [settled_chat(p) for _ in range(4)]
        assert got == ["b", "d", "c", "b"]


def test_policy_random(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "random") as p:
        got = {answered_by(p.chat()) for _ in range(40)}
        assert got <= set(NAMES)
        assert len(got) >= 2


def test_policy_random_available(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "random_available") as p:
        got = {answered_by(p.chat()) for _ in range(30)}
        assert "a" not in got
        assert len(got) >= 2


def test_policy_change_takes_effect_next_request(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "main") as p:
        assert answered_by(p.chat()) == "c"
        p.set_config("policy", "round_robin")
        assert answered_by(p.chat()) == "b"


def test_unknown_policy_is_a_500_and_recorded(tmp_path, mocks):
    with seeded_proxy(tmp_path, mocks, "fastest") as p:
        r = p.chat(model="m-unknown")
        assert (assert_error_shape(r, 500) == "unknown load balance policy 'fastest'")
        rows = p.wait_for_records(1)
        assert rows[0]["status"] == 500
        assert rows[0]["error"] == "unknown load balance policy 'fastest'"
        assert rows[0]["model"] == "m-unknown"
        assert all(m.requests == [] for m in mocks)


def test_no_upstream_is_a_500(tmp_path):
    with Proxy(tmp_path) as p:
        r = p.chat()
        assert "no upstream available" in assert_error_shape(r, 500)
        p.set_config("policy", "random_available")
        r = p.chat()
        assert "no upstream available" in assert_error_shape(r, 500)


def test_default_on_response_counts_failover(tmp_path, mocks):
    # main picks c first (see SEED); c answers 500, so the proxy fails over to b.
    with seeded_proxy(tmp_path, mocks, "main") as p:
        before = counters(p)
        mocks[2].enqueue(Status(500))
        assert answered_by(p.chat()) == "b"
        after = p.wait_for_records(1)
        row = after[0]
        assert row["status"] == 200 and row["upstream_id"] == 2
        assert row["upstream_endpoint"] == mocks[1].endpoint()

        def changed():
            c = counters(p)
            return c if c[3][1] == before[3][1] + 1 and c[2][0] == before[2][0] + 1 else None

        c = wait_until(changed, message="counters updated")
        assert c[3][0] == before[3][0]  # the failed one gained no success
        assert c[1] == before[1] and c[4] == before[4]

        # A 400 of the client's making counts as nothing. b is first now (c has a failure).
        mocks[1].enqueue(Status(400))
        r = p.chat()
        assert r.status == 400 and r.json()["mock"] == "b"
        rows = p.wait_for_records(2)
        assert rows[1]["status"] == 400
        time.sleep(0.3)
        assert counters(p) == c


# --------------------------------------------------------------------------- scripts

def test_script_overrides_only_pick_upstream(tmp_path, mocks):
    scripts = write_script(tmp_path / "scripts", """
        -- Always the upstream named "b" by its endpoint; authorize and on_response stay default.
        local route = require "route"
        return {
          pick_upstream = function(req, upstreams)
            for _, u in ipairs(upstreams) do
              if u.endpoint == route.config.get("pinned") then return u end
            end
            return nil, "pinned upstream not found"
          end,
        }
    """)
    with Proxy(tmp_path, upstreams=[("sk-%s-secret" % m.name, m.endpoint()) for m in mocks],
               config={"pinned": mocks[1].endpoint()}, scripts_dir=scripts) as p:
        assert [answered_by(p.chat()) for _ in range(3)] == ["b", "b", "b"]
        r = p.chat(headers={"Authorization": "Bearer nope"})
        assert assert_error_shape(r, 403) == "wrong authorization header"
        r = p.request("POST", "/v1/chat/completions", {"model": "x"}, auth=False)
        assert assert_error_shape(r, 403) == "authorization header should start with 'Bearer'"
        rows = p.wait_for_records(3)
        assert [r["upstream_id"] for r in rows] == [2, 2, 2]
        p.set_config("pinned", "http://elsewhere/v1")
        assert assert_error_shape(p.chat(), 500) == "pinned upstream not found"


def test_raising_hook_is_a_500_and_the_next_request_works(tmp_path, mocks):
    scripts = write_script(tmp_path / "scripts", """
        local route = require "route"
        return {
          authorize = function(req)
            if req.headers["x-fail"] == "auth" then error("authorize exploded") end
            return route.defaults.authorize(req)
          end,
          pick_upstream = function(req, upstreams)
            if req.model == "boom" then
              error("kaboom")
            elseif req.model == "loop" then
              while true do end
            elseif req.model == "hog" then
              local t = {}
              for i = 1, 1e9 do t[i] = string.rep("x", 65536) .. i end
            elseif req.model == "leak" then
              error("bad key " .. upstreams[1].sk)
            end
            return route.defaults.pick_upstream(req, upstreams)
          end,
        }
    """)
    with Proxy(tmp_path, upstreams=[("sk-a-secret", mocks[0].endpoint())], scripts_dir=scripts,
               config={"hook_instruction_budget": "200000",
                       "hook_memory_limit_mb": "64",
                       # The budgets under test, not the 50 ms time limit, must stop these.
                       "hook_time_limit_ms": "60000"}) as p:
        msg = assert_error_shape(p.chat(model="boom"), 500)
        assert msg == "route.lua:10: kaboom", msg
        assert answered_by(p.chat(model="fine")) == "a"

        t0 = time.monotonic()
        msg = assert_error_shape(p.chat(model="loop"), 500)
        assert msg.startswith("route.lua:12: hook exceeded its instruction budget"), msg
        assert time.monotonic() - t0 < 5
        assert answered_by(p.chat(model="fine")) == "a"

        msg = assert_error_shape(p.chat(model="hog"), 500)
        assert "not enough memory" in msg, msg
        assert answered_by(p.chat(model="fine")) == "a"

        msg = assert_error_shape(p.chat(headers={"X-Fail": "auth"}), 500)
        assert msg == "route.lua:5: authorize exploded", msg
        assert answered_by(p.chat(model="fine")) == "a"

        # A key that a script puts in its error reaches neither the client nor the log.
        msg = assert_error_shape(p.chat(model="leak"), 500)
        assert "sk-a-secret" not in msg and "bad key ***" in msg, msg

        rows = p.wait_for_records(9)
        errors = [r["error"] for r in rows if r["status"] == 500]
        assert any("kaboom" in e for e in errors)
        assert any("instruction budget" in e for e in errors)
        assert all("sk-a-secret" not in (r["error"] or "") for r in rows)
        assert p.alive()
    assert "sk-a-secret" not in p.stderr_text()
    assert p.sanitizer_report() == ""


def test_failing_on_response_still_records(tmp_path, mocks):
    scripts = write_script(tmp_path / "scripts", """
        return { on_response = function(req, res) error("on_response broke") end }
    """)
    with Proxy(tmp_path, upstreams=[("sk-a-secret", mocks[0].endpoint())],
               scripts_dir=scripts) as p:
        assert answered_by(p.chat(model="gpt-rec")) == "a"
        rows = p.wait_for_records(1)
        assert rows[0]["status"] == 200 and rows[0]["model"] == "gpt-rec"
        assert "on_response broke" in rows[0]["error"]
        wait_until(lambda: counters(p)[1][0] == 1, message="success counted from C")


def test_reload_keeps_shared_and_survives_a_bad_script(tmp_path, mocks):
    scripts = tmp_path / "scripts"
    v1 = """
        local route = require "route"
        route.shared.n = route.shared.n or 0
        return { pick_upstream = function(req, ups)
          route.shared.n = route.shared.n + 1
          return nil, "%s n=" .. route.shared.n
        end }
    """
    write_script(scripts, v1 % "v1")
    with Proxy(tmp_path, upstreams=[("sk-a-secret", mocks[0].endpoint())],
               scripts_dir=scripts) as p:
        assert assert_error_shape(p.chat(), 500) == "v1 n=1"
        write_script(scripts, "return { pick_upstream = function( }\n")
        r = p.request("POST", "/admin/reload")
        msg = assert_error_shape(r, 400)
        assert "%s/route.lua:1:" % scripts in msg, msg
        assert assert_error_shape(p.chat(), 500) == "v1 n=2"
        write_script(scripts, v1 % "v2")
        r = p.request("POST", "/admin/reload")
        assert r.status == 200, r
        assert assert_error_shape(p.chat(), 500) == "v2 n=3"
        # Removing the script brings the embedded defaults back.
        (scripts / "route.lua").unlink()
        assert p.request("POST", "/admin/reload").status == 200
        assert answered_by(p.chat()) == "a"


def test_load_error_at_start_is_fatal_with_file_and_line(tmp_path):
    scripts = write_script(tmp_path / "scripts", "return {\n  authorize = function(\n}\n")
    p = Proxy(tmp_path, scripts_dir=scripts, start=False)
    from routetest import free_port
    # No one-shot flag: the server itself starts, and must exit on the broken script.
    cp = p.oneshot("-scripts", str(scripts), "-addr", "127.0.0.1:%d" % free_port())
    assert cp.returncode != 0
    assert "%s/route.lua:3:" % scripts in cp.stderr, cp.stderr


# --------------------------------------------------------------------------- examples

def test_example_weighted_random(tmp_path, mocks):
    folder = repo_root() / "scripts" / "examples" / "weighted_random"
    a, b = mocks[0], mocks[1]
    with Proxy(tmp_path, upstreams=[("sk-a-secret", a.endpoint()), ("sk-b-secret", b.endpoint())],
               scripts_dir=folder, config={"weights": "%s=1000000,1=0" % b.endpoint()}) as p:
        assert {answered_by(p.chat()) for _ in range(10)} == {"b"}
        # Weight 0 is still a fallback: with b failing, a answers.
        b.enqueue(Status(503))
        assert answered_by(p.chat()) == "a"
        p.set_config("weights", "1=1000000,2=0.000001")
        assert {answered_by(p.chat()) for _ in range(10)} == {"a"}
        # Authorization is still the default's.
        r = p.chat(headers={"Authorization": "Bearer nope"})
        assert r.status == 403


def test_example_model_routing(tmp_path, mocks):
    folder = repo_root() / "scripts" / "examples" / "model_routing"
    a, b = mocks[0], mocks[1]
    with Proxy(tmp_path, upstreams=[("sk-a-secret", a.endpoint()), ("sk-b-secret", b.endpoint())],
               scripts_dir=folder, config={"gpt4_endpoints": ":%d/" % b.port}) as p:
        assert answered_by(p.chat(model="gpt-4o")) == "b"
        assert answered_by(p.chat(model="gpt-4-turbo")) == "b"
        assert answered_by(p.chat(model="gpt-3.5-turbo")) == "a"
        assert answered_by(p.chat(model="gpt-4o-mini")) == "b"
        p.set_config("gpt4_endpoints", "nowhere%.example")
        msg = assert_error_shape(p.chat(model="gpt-4"), 500)
        assert msg.startswith("no upstream serves model 'gpt-4'"), msg
        r = p.chat(headers={"Authorization": "Bearer nope"})
        assert r.status == 403
