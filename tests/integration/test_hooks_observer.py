"""Records and counters are C's, hooks observe (issue 8, items 5 and 6), through the real binary.

- An on_response that does nothing, or raises: the row and the counters are still written, once
  (and the default script does not double them).
- on_response adds to the row (res.record.<column>) or vetoes it (`return false`,
  `res.record = false`); a veto takes the row only, the counters stay.
- One request object: req.ctx set in authorize is seen in pick_upstream and on_response, and
  it is the same object in all three; a req kept past its request raises when read.
- hook_time_limit_ms stops a hook that is slow but under its instruction budget: a 500, and
  the proxy keeps serving.
- The same token list is accepted by /v1 and /admin/login for every trimming case.
- records_bodies=0: rows keep everything but the request body and the response text, for JSON
  and streams; hooks still see both; switching it back applies to the next request.

Counters and rows are compared exactly after a SIGTERM, which writes every queued item."""

import textwrap
import time

import pytest

from mock_upstream import MockUpstream
from routetest import Proxy, assert_error_shape, db_query, wait_until


@pytest.fixture
def mock_a():
    m = MockUpstream("a").start()
    yield m
    m.stop()


def write_script(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "route.lua").write_text(textwrap.dedent(text))
    return folder


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def counters(db_path):
    return {r["id"]: (r["success_count"], r["failed_count"], r["last_call_success_time"])
            for r in db_query(db_path, "SELECT * FROM openai_upstreams ORDER BY id")}


def rows_of(db_path, model):
    return db_query(db_path, "SELECT * FROM records WHERE model = ? ORDER BY rowid", (model,))


def start(tmp_path, mock, script=None, **kw):
    scripts = write_script(tmp_path / "scripts", script) if script else None
    return Proxy(tmp_path, upstreams=[("sk-a-secret", mock.endpoint())], scripts_dir=scripts,
                 **kw)


# --------------------------------------------------------------------------- C accounts

@pytest.mark.parametrize("name, script", [
    ("default", None),
    ("nothing", "return { on_response = function(req, res) end }\n"),
    ("raises", "return { on_response = function(req, res) error('observer broke') end }\n"),
    ("wraps", """
        local route = require "route"
        return { on_response = function(req, res) return route.defaults.on_response(req, res) end }
    """),
])
def test_record_and_counters_whatever_on_response_does(tmp_path, mock_a, name, script):
    p = start(tmp_path, mock_a, script)
    try:
        for i in range(3):
            assert answered_by(p.chat(model="m-%s-%d" % (name, i))) == "a"
        rows = p.wait_for_records(3)
        assert all(r["status"] == 200 and r["upstream_id"] == 1 for r in rows), rows
        assert [r["model"] for r in rows] == ["m-%s-%d" % (name, i) for i in range(3)]
        assert all(r["response"] == "Hello from the mock." for r in rows)
        assert all(r["body"] and '"model"' in r["body"] for r in rows)
        if name == "raises":
            assert all(r["error"].startswith("on_response hook: ") and "observer broke"
                       in r["error"] for r in rows), rows
        else:
            assert all(not r["error"] for r in rows), rows
    finally:
        p.stop()
    # Everything queued is written on SIGTERM: exactly one row and one success per exchange.
    assert len(p.records()) == 3
    s, f, last = counters(p.db_path)[1]
    assert (s, f) == (3, 0) and last


def test_script_counting_itself_adds_to_c(tmp_path, mock_a):
    # route.upstream_success is an extra signal on top of C's count, as documented.
    p = start(tmp_path, mock_a, """
        local route = require "route"
        return { on_response = function(req, res) route.upstream_success(res.upstream.id) end }
    """)
    try:
        assert answered_by(p.chat()) == "a"
        p.wait_for_records(1)
    finally:
        p.stop()
    assert counters(p.db_path)[1][:2] == (2, 0)


def test_additions_and_vetoes(tmp_path, mock_a):
    p = start(tmp_path, mock_a, """
        return { on_response = function(req, res)
          if req.model == "veto-return" then return false end
          if req.model == "veto-field" then res.record = false return end
          if req.model == "tagged" then
            res.record.error = "tag:" .. res.status
            res.record.user_agent = "observer"
            res.record.total_tokens = 42
          end
          if req.model == "rename" then res.record.model = "renamed" end
          if req.model == "bad-field" then res.record.status = "many" end
        end }
    """)
    try:
        for model in ("veto-return", "veto-field", "tagged", "rename", "bad-field", "last"):
            assert answered_by(p.chat(model=model)) == "a", model
        p.wait_for_records(1, where="model = 'last'")
    finally:
        p.stop()
    assert rows_of(p.db_path, "veto-return") == [] and rows_of(p.db_path, "veto-field") == []
    tagged = rows_of(p.db_path, "tagged")
    assert len(tagged) == 1
    assert tagged[0]["error"] == "tag:200" and tagged[0]["user_agent"] == "observer"
    assert tagged[0]["total_tokens"] == 42 and tagged[0]["status"] == 200
    assert len(rows_of(p.db_path, "renamed")) == 1 and rows_of(p.db_path, "rename") == []
    # A bad addition is a failing hook: C's row stays, saying why.
    bad = rows_of(p.db_path, "bad-field")
    assert len(bad) == 1 and bad[0]["status"] == 200
    assert "on_response hook: " in bad[0]["error"] and "status" in bad[0]["error"]
    # A veto takes the row only: the upstream's counters are C's accounting.
    assert len(p.records()) == 4
    assert counters(p.db_path)[1][:2] == (6, 0)


# --------------------------------------------------------------------------- one req object

def test_req_ctx_persists_and_req_is_one_object(tmp_path, mock_a):
    p = start(tmp_path, mock_a, """
        local route = require "route"
        return {
          authorize = function(req)
            req.ctx.x = "from-authorize"
            route.shared.current = req
            return route.defaults.authorize(req)
          end,
          pick_upstream = function(req, upstreams)
            req.ctx.y = req.ctx.x .. "+pick"
            req.ctx.same = rawequal(req, route.shared.current)
            return route.defaults.pick_upstream(req, upstreams)
          end,
          on_response = function(req, res)
            res.record.error = ("%s|%s|%s|%s"):format(req.ctx.x, req.ctx.y,
              tostring(req.ctx.same and rawequal(req, route.shared.current)),
              type(res.elapsed) .. ":" .. math.type(res.elapsed_ns))
          end,
        }
    """)
    try:
        assert answered_by(p.chat(model="ctx")) == "a"
        row = p.wait_for_records(1, where="model = 'ctx'")[0]
        assert row["error"] == "from-authorize|from-authorize+pick|true|number:integer", row
        # A second request gets a fresh ctx: nothing left from the first.
        assert answered_by(p.chat(model="ctx")) == "a"
        rows = p.wait_for_records(2, where="model = 'ctx'")
        assert rows[1]["error"] == rows[0]["error"] and rows[1]["id"] != rows[0]["id"]
    finally:
        p.stop()


def test_req_kept_past_its_request_raises(tmp_path, mock_a):
    p = start(tmp_path, mock_a, """
        local route = require "route"
        return {
          authorize = function(req)
            if req.model == "keep" then
              route.shared.kept = req
              route.shared.kept_headers = req.headers
              route.shared.kept_id = req.id
              local _ = req.body -- cached during the request: still not readable after it
            end
            return route.defaults.authorize(req)
          end,
          pick_upstream = function(req, upstreams)
            if req.model == "read-body" then return nil, tostring(route.shared.kept.body) end
            if req.model == "read-model" then return nil, tostring(route.shared.kept.model) end
            if req.model == "read-header" then
              return nil, tostring(route.shared.kept_headers["user-agent"])
            end
            if req.model == "which" then return nil, route.shared.kept_id end
            return route.defaults.pick_upstream(req, upstreams)
          end,
        }
    """)
    with p:
        assert answered_by(p.chat(model="keep")) == "a"
        kept_id = assert_error_shape(p.chat(model="which"), 500)
        for model in ("read-body", "read-model", "read-header"):
            msg = assert_error_shape(p.chat(model=model), 500, where=model)
            assert "request %s has ended" % kept_id in msg, msg
        assert answered_by(p.chat(model="fine")) == "a"
        assert p.alive()
    assert p.sanitizer_report() == ""


# --------------------------------------------------------------------------- time limit

SLOW_SCRIPT = """
local route = require "route"
-- Few VM instructions, much time: each string.rep of 1 MB is one call.
local function slow()
  local s
  for i = 1, 1e9 do s = string.rep("x", 1000000) end
end
return {
  authorize = function(req)
    if req.headers["x-slow"] then slow() end
    return route.defaults.authorize(req)
  end,
  pick_upstream = function(req, upstreams)
    if req.model == "slow" then slow() end
    return route.defaults.pick_upstream(req, upstreams)
  end,
}
"""


def test_time_limit_stops_a_slow_hook_under_its_budget(tmp_path, mock_a):
    with start(tmp_path, mock_a, SLOW_SCRIPT) as p:
        for kw in ({"model": "slow"}, {"model": "slow-auth", "headers": {"X-Slow": "1"}}):
            t0 = time.monotonic()
            msg = assert_error_shape(p.chat(timeout=10, **kw), 500, where=repr(kw))
            took = time.monotonic() - t0
            assert "hook exceeded its time limit (50 ms)" in msg, msg
            assert msg.startswith("route.lua:"), msg
            assert took < 3, took
            assert answered_by(p.chat(model="fine")) == "a"
        rows = p.wait_for_records(1, where="model = 'slow'")
        assert rows[0]["status"] == 500 and "time limit" in rows[0]["error"]
        # The key follows -set on the next request.
        p.set_config("hook_time_limit_ms", "20")
        msg = wait_until(lambda: (lambda m: m if "(20 ms)" in m else None)(
            assert_error_shape(p.chat(model="slow", timeout=10), 500)),
            message="the new time limit")
        assert "hook exceeded its time limit (20 ms)" in msg
        assert answered_by(p.chat(model="fine")) == "a"
        assert p.alive()


# --------------------------------------------------------------------------- one Bearer rule

# {a} and {b} are the two tokens, new for each list so the server is seen to take it.
TOKEN_LISTS = [
    ("plain", "{a},{b}", False),
    ("spaces", "  {a} ,  {b}  ", False),
    ("tabs", "\t{a}\t,\t{b}\t", False),
    ("mixed", " \t {a}\t , \t{b}", False),
    ("empty entries", ",{a},, ,{b},", False),
    ("crlf", "{a}\r\n,\r\n{b}\r\n", True),
    ("lf", "\n{a}\n,{b}\n", True),
    ("cr", "{a}\r,\r{b}", True),
]

HEADERS = [
    ("Bearer {a}", True),
    ("Bearer {b}", True),
    ("Bearer   {b}", True),
    ("Bearer\t{a}", True),
    ("Bearer \t {b} \t", True),
    ("Bearer{a}", True),  # the Go program's prefix rule
    ("Bearer {a}x", False),
    ("Bearer {a},{b}", False),
    ("Bearer {a} {b}", False),
    ("Bearer", False),
    ("bearer {a}", False),
    ("Basic {a}", False),
]


def test_same_tokens_for_v1_and_admin(tmp_path, mock_a):
    p = start(tmp_path, mock_a, token=None, set_token=False)
    with p:
        for i, (name, template, by_hand) in enumerate(TOKEN_LISTS):
            a, b = "tok-one-%d" % i, "tok-two-%d" % i
            value = template.format(a=a, b=b)
            if by_hand:
                p.write_config_raw("authorization", value)
            else:
                p.set_config("authorization", value)

            def login(header):
                return p.request("POST", "/admin/login", headers={"Authorization": header},
                                 auth=False).status

            # Seen by the running server (another process wrote it).
            wait_until(lambda: login("Bearer " + b) == 200, message="token list %r" % name)
            for header_t, accepted in HEADERS:
                header = header_t.format(a=a, b=b)
                v1 = p.request("POST", "/v1/chat/completions", {"model": "m"},
                               {"Authorization": header}, auth=False).status
                admin = login(header)
                where = "%s: %r" % (name, header)
                assert (v1 == 200) == (admin == 200), (where, v1, admin)
                assert (v1 == 200) == accepted, (where, v1)
                if not accepted:
                    assert v1 == 403 and admin == 403, (where, v1, admin)
        assert p.alive()


# --------------------------------------------------------------------------- the example

def test_example_observe(tmp_path, mock_a):
    from routetest import repo_root
    folder = repo_root() / "scripts" / "examples" / "observe"
    p = Proxy(tmp_path, upstreams=[("sk-a-secret", mock_a.endpoint())], scripts_dir=folder,
              config={"unrecorded_paths": "/v1/models, /v1/ping"})
    try:
        assert answered_by(p.chat(model="tagged", headers={"X-Client-Name": "billing"})) == "a"
        assert p.request("GET", "/v1/models").status == 200
        p.set_config("slow_request_seconds", "0")
        assert answered_by(p.chat(model="slow")) == "a"
        assert p.chat(headers={"Authorization": "Bearer nope"}).status == 403
        p.wait_for_records(1, where="model = 'slow'")
    finally:
        p.stop()
    rows = p.records()
    assert [r["model"] for r in rows] == ["tagged", "slow"], rows
    assert rows[0]["user_agent"].endswith(" client=billing") and not rows[0]["error"]
    assert rows[1]["error"].startswith("slow: ")
    # The vetoed /v1/models exchange still counted.
    assert counters(p.db_path)[1][:2] == (3, 0)


def test_records_bodies_off_keeps_the_row_without_the_texts(proxy_factory, tmp_path):
    from mock_upstream import ChatStream
    mock = MockUpstream("m").start()
    try:
        scripts = tmp_path / "scripts"
        scripts.mkdir()
        # The hook sees both texts whatever the row keeps: it copies their sizes to the error.
        (scripts / "route.lua").write_text(textwrap.dedent("""
            return {
              on_response = function(req, res)
                res.record.error = "body=" .. #req.body .. " content=" .. #(res.content or "")
              end,
            }
        """))
        p = proxy_factory(upstreams=[("sk-up", mock.endpoint())], scripts_dir=str(scripts),
                          config={"records_bodies": "0", "force_stream_usage": "0"})
        assert p.chat("secret prompt", model="gpt-x").status == 200
        mock.set("/v1/chat/completions", ChatStream(["Hel", "lo"], usage=(3, 2, 5)))
        reply = p.chat("secret stream", model="gpt-y", stream=True)
        assert reply.status == 200 and b"Hel" in reply.body
        rows = p.wait_for_records(2)
        for row, model in zip(rows, ("gpt-x", "gpt-y")):
            assert row["body"] == "" and row["response"] == "", row
            assert row["model"] == model and row["status"] == 200 and row["upstream_id"] == 1
            assert row["error"].startswith("body=") and " content=0" not in row["error"], row
        assert rows[1]["prompt_tokens"] == 3 and rows[1]["total_tokens"] == 5
        for path in (str(p.db_path), str(p.db_path) + "-wal"):
            try:
                with open(path, "rb") as f:
                    assert b"secret" not in f.read(), path
            except FileNotFoundError:
                pass
        # Back on: the next request's row has both again.
        p.set_config("records_bodies", "1")
        assert p.chat("kept prompt", model="gpt-z").status == 200
        row = p.wait_for_records(3)[2]
        assert "kept prompt" in row["body"] and row["response"], row
    finally:
        mock.stop()
