"""Hot reload of the Lua hooks, through the real binary.

Each trigger (rewriting a .lua file in the scripts folder, writing a temp file and renaming it
over route.lua, SIGHUP, POST /admin/reload) is observed as changed routing within a bounded
wait; a script that fails to load on each trigger leaves the running hooks in place and says
why (the admin call's 400, /admin/scripts' last_error, the log), with the file and line.
GET /admin/scripts reports the loaded files' fingerprints and the reload count. A request in
flight keeps the hooks it started with while a reload happens under it; route.shared survives
reloads; and a thousand reloads under concurrent load lose no request and leak no memory.

Mock upstreams name themselves in their JSON bodies ("mock": name), so a test sees which
upstream answered."""

import datetime
import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import threading
import time

import pytest

from mock_upstream import ChatStream, MockUpstream
from routetest import assert_error_shape, wait_until

# The longest a file change or a signal may take to show (the watch debounces 150 ms).
RELOAD_WAIT = 5.0

JSON_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?"
                          r"(Z|[+-]\d{2}:\d{2})$")

# Routes every request to the upstream whose id is TARGET.
FIXED_TARGET = """\
-- %(tag)s
local route = require "route"
local TARGET = %(target)d
return {
  pick_upstream = function(req, upstreams)
    for _, u in ipairs(upstreams) do
      if u.id == TARGET then return u end
    end
    return nil, "target " .. TARGET .. " is gone"
  end,
}
"""

# Takes its target from the config key `target` when it loads (not per request), and fails
# to load when `explode` is 1: changing either takes a reload that no file change causes.
CONFIG_TARGET = """\
local route = require "route"
if route.config.get("explode") == "1" then
  error("exploding on purpose")
end
local TARGET = tonumber(route.config.get("target") or "1")
return {
  pick_upstream = function(req, upstreams)
    for _, u in ipairs(upstreams) do
      if u.id == TARGET then return u end
    end
    return nil, "target " .. TARGET .. " is gone"
  end,
}
"""

BROKEN = """\
local route = require "route"
return {
  pick_upstream = function(req, upstreams
    return upstreams
  end,
}
"""  # line 4: ')' expected near 'return'


def json_time_ns(text):
    """Nanoseconds since the epoch of a JSON time ("2023-08-10T13:32:51.123456789+08:00", the
    fraction optional and without trailing zeros, "Z" for UTC)."""
    m = JSON_TIME_RE.match(text)
    assert m, "not a JSON time: %r" % text
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    secs = int(datetime.datetime.fromisoformat(m.group(1) + zone).timestamp())
    return secs * 10**9 + int((m.group(2) or "").ljust(9, "0"))


def fixed_target(target, tag="v"):
    return FIXED_TARGET % {"target": target, "tag": tag}


@pytest.fixture
def mocks():
    ms = [MockUpstream(n).start() for n in ("a", "b", "c")]
    yield ms
    for m in ms:
        m.stop()


def start_proxy(proxy_factory, tmp_path, mocks, script, config=None, extra_files=None):
    """A proxy (from conftest's proxy_factory: a crash or a sanitizer report fails the test)
    over the upstreams `mocks`, ids 1, 2, ... in order, with `script` as route.lua."""
    scripts = tmp_path / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "route.lua").write_text(script)
    for name, text in (extra_files or {}).items():
        (scripts / name).write_text(text)
    p = proxy_factory(upstreams=[("sk-%s-secret" % m.name, m.endpoint()) for m in mocks],
                      scripts_dir=scripts, config=config)
    return p, scripts


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def status(p):
    r = p.request("GET", "/admin/scripts")
    assert r.status == 200, r
    return r.json()


def wait_answer(p, name, timeout=RELOAD_WAIT):
    """Polls a chat until `name` answers; returns the number of tries."""
    tries = [0]

    def check():
        tries[0] += 1
        return answered_by(p.chat()) == name

    wait_until(check, timeout=timeout, interval=0.05, message="routing to %s" % name)
    return tries[0]


def wait_status(p, pred, message, timeout=RELOAD_WAIT):
    """Polls GET /admin/scripts until pred(status) holds; returns that status."""
    def check():
        st = status(p)
        return st if pred(st) else None

    return wait_until(check, timeout=timeout, message=message)


def file_sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_by_name(st):
    return {f["name"]: f for f in st["files"]}


def rename_over(scripts, text, temp_name="route.lua.tmp"):
    """The editor's save: write a temp file (no .lua name), then rename it over route.lua."""
    tmp = scripts / temp_name
    tmp.write_text(text)
    os.replace(tmp, scripts / "route.lua")


def assert_broken_reported(p, scripts, st, trigger, line, what):
    """st: /admin/scripts after the failed reload."""
    assert st["last_trigger"] == trigger, st
    err = st["last_error"]
    assert err and err.startswith("%s/route.lua:%d: " % (scripts, line)), err
    assert what in err, err
    log = p.stderr_text()
    assert "%s: reload failed, the running scripts stay: %s" % (trigger, err) in log, log[-2000:]


# --------------------------------------------------------------------------- the triggers

def test_reload_by_file_rewrite(proxy_factory, tmp_path, mocks):
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, fixed_target(1))
    with p:
        assert answered_by(p.chat()) == "a"
        before = status(p)
        assert before["reloads"] == 0 and before["last_trigger"] == "start-up"

        # Rewritten in place (truncate, write).
        (scripts / "route.lua").write_text(fixed_target(2, "rewritten"))
        wait_answer(p, "b")
        st = wait_status(p, lambda s: s["reloads"] >= 1, "reload counted")
        assert st["last_trigger"] == "file change" and st["last_error"] is None, st
        assert files_by_name(st)["route.lua"]["sha256"] == file_sha(scripts / "route.lua")

        # A broken rewrite: the running hooks stay, and the error is reported.
        good_sha = file_sha(scripts / "route.lua")
        reloads = status(p)["reloads"]
        (scripts / "route.lua").write_text(BROKEN)
        st = wait_status(p, lambda s: s["last_error"], "the broken script reported")
        assert_broken_reported(p, scripts, st, "file change", 4, "')' expected")
        assert st["reloads"] == reloads
        # The fingerprints are still those of the script that runs.
        assert files_by_name(st)["route.lua"]["sha256"] == good_sha
        assert [answered_by(p.chat()) for _ in range(3)] == ["b", "b", "b"]

        # Fixed: loads, and the error is cleared.
        (scripts / "route.lua").write_text(fixed_target(3, "fixed"))
        wait_answer(p, "c")
        st = wait_status(p, lambda s: s["last_error"] is None, "error cleared")
        assert st["reloads"] > reloads


def test_reload_by_rename_over(proxy_factory, tmp_path, mocks):
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, fixed_target(1))
    with p:
        assert answered_by(p.chat()) == "a"
        # A file that is not *.lua changes nothing, however long one waits for it.
        (scripts / "route.lua.tmp").write_text(fixed_target(2))
        (scripts / "notes.txt").write_text("not a script")
        time.sleep(0.6)  # four times the debounce
        assert status(p)["reloads"] == 0
        assert answered_by(p.chat()) == "a"

        os.replace(scripts / "route.lua.tmp", scripts / "route.lua")
        wait_answer(p, "b")
        st = wait_status(p, lambda s: s["reloads"] >= 1, "reload counted")
        assert st["last_trigger"] == "file change" and st["last_error"] is None
        assert files_by_name(st)["route.lua"]["sha256"] == file_sha(scripts / "route.lua")
        assert "notes.txt" not in files_by_name(st)

        reloads = st["reloads"]
        rename_over(scripts, BROKEN)
        st = wait_status(p, lambda s: s["last_error"], "the broken script reported")
        assert_broken_reported(p, scripts, st, "file change", 4, "')' expected")
        assert st["reloads"] == reloads
        assert answered_by(p.chat()) == "b"

        rename_over(scripts, fixed_target(3))
        wait_answer(p, "c")
        assert wait_status(p, lambda s: s["last_error"] is None, "error cleared")


def test_reload_by_sighup(proxy_factory, tmp_path, mocks):
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, CONFIG_TARGET,
                             config={"target": "1"})
    with p:
        assert answered_by(p.chat()) == "a"
        # The script read its target when it loaded: a new value waits for a reload.
        p.set_config("target", "2")
        assert [answered_by(p.chat()) for _ in range(2)] == ["a", "a"]

        # No request in between: the reload itself must see the config as it is now.
        p.set_config("target", "3")
        p.proc.send_signal(signal.SIGHUP)
        wait_answer(p, "c")
        st = wait_status(p, lambda s: s["reloads"] == 1, "reload counted")
        assert st["last_trigger"] == "SIGHUP" and st["last_error"] is None, st

        # A script that fails to load on SIGHUP: the running hooks stay.
        p.set_config("explode", "1")
        p.set_config("target", "1")
        p.proc.send_signal(signal.SIGHUP)
        st = wait_status(p, lambda s: s["last_error"], "the failed load reported")
        assert_broken_reported(p, scripts, st, "SIGHUP", 3, "exploding on purpose")
        assert st["reloads"] == 1
        assert [answered_by(p.chat()) for _ in range(3)] == ["c", "c", "c"]

        p.set_config("explode", "0")
        p.proc.send_signal(signal.SIGHUP)
        wait_answer(p, "a")
        st = wait_status(p, lambda s: s["last_error"] is None, "error cleared")
        assert st["reloads"] == 2 and st["last_trigger"] == "SIGHUP"
        assert p.alive()


def test_reload_by_admin(proxy_factory, tmp_path, mocks):
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, CONFIG_TARGET,
                             config={"target": "1"})
    with p:
        assert answered_by(p.chat()) == "a"
        p.set_config("target", "2")
        assert answered_by(p.chat()) == "a"
        r = p.request("POST", "/admin/reload")
        assert r.status == 200 and r.json() == {"message": "success"}, r
        # The admin call answers after the reload: the next request sees it, no waiting.
        assert answered_by(p.chat()) == "b"
        st = status(p)
        assert st["reloads"] == 1 and st["last_trigger"] == "admin" and st["last_error"] is None

        # Only the admin token may reload.
        r = p.request("POST", "/admin/reload", headers={"Authorization": "Bearer nope"})
        assert r.status == 403
        assert status(p)["reloads"] == 1

        # A load-time error: 400 with file and line, nothing changes.
        p.set_config("explode", "1")
        p.set_config("target", "3")
        r = p.request("POST", "/admin/reload")
        msg = assert_error_shape(r, 400)
        assert msg == "%s/route.lua:3: exploding on purpose" % scripts, msg
        assert r.json()["error"]["type"] == "script_error"
        st = status(p)
        assert_broken_reported(p, scripts, st, "admin", 3, "exploding on purpose")
        assert st["last_error"] == msg and st["reloads"] == 1
        assert answered_by(p.chat()) == "b"

        # A syntax error (the file changes too, so the watch may try it as well: it fails the
        # same way and changes nothing either).
        p.set_config("explode", "0")
        (scripts / "route.lua").write_text(BROKEN)
        r = p.request("POST", "/admin/reload")
        msg = assert_error_shape(r, 400)
        assert msg.startswith("%s/route.lua:4: " % scripts) and "')' expected" in msg, msg
        assert answered_by(p.chat()) == "b"
        time.sleep(0.3)  # let the watch's own attempt pass
        st = status(p)
        assert st["last_error"] == msg and st["reloads"] == 1, st
        assert answered_by(p.chat()) == "b"

        rename_over(scripts, CONFIG_TARGET)
        r = p.request("POST", "/admin/reload")
        assert r.status == 200, r
        assert answered_by(p.chat()) == "c"
        assert status(p)["last_error"] is None


# --------------------------------------------------------------------------- /admin/scripts

def test_admin_scripts_reports_the_loaded_files(proxy_factory, tmp_path, mocks):
    helper_v1 = "return { target = 1 }\n"
    route_lua = textwrap.dedent("""\
        local helper = require "helper"
        return {
          pick_upstream = function(req, upstreams)
            for _, u in ipairs(upstreams) do
              if u.id == helper.target then return u end
            end
            return nil, "no target"
          end,
        }
    """)
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, route_lua,
                             extra_files={"helper.lua": helper_v1, "README.txt": "notes\n"})
    with p:
        assert answered_by(p.chat()) == "a"
        st = status(p)
        assert set(st) == {"folder", "watching", "loaded_at", "last_trigger", "reloads",
                           "last_error", "files"}, st
        assert st["folder"] == str(scripts)
        assert st["watching"] is True
        loaded_at = json_time_ns(st["loaded_at"])
        assert abs(loaded_at - time.time_ns()) < 60 * 10**9, st["loaded_at"]
        assert st["last_trigger"] == "start-up"
        assert st["reloads"] == 0 and st["last_error"] is None
        # Every *.lua of the folder, sorted by name; nothing else.
        assert [f["name"] for f in st["files"]] == ["helper.lua", "route.lua"]
        for f in st["files"]:
            path = scripts / f["name"]
            assert set(f) == {"name", "size", "mtime", "sha256"}, f
            assert f["size"] == path.stat().st_size
            assert f["sha256"] == file_sha(path)
            assert json_time_ns(f["mtime"]) == path.stat().st_mtime_ns, f

        # The reload count follows admin reloads one by one, and loaded_at moves on.
        for i in range(1, 4):
            assert p.request("POST", "/admin/reload").status == 200
            st = status(p)
            assert st["reloads"] == i and st["last_trigger"] == "admin"
            assert json_time_ns(st["loaded_at"]) > loaded_at, st
            loaded_at = json_time_ns(st["loaded_at"])

        # Editing a helper module reloads too, and require gets the new version.
        (scripts / "helper.lua").write_text("return { target = 2 } -- v2\n")
        wait_answer(p, "b")
        st = wait_status(p, lambda s: s["reloads"] >= 4, "helper change reloaded")
        assert files_by_name(st)["helper.lua"]["sha256"] == file_sha(scripts / "helper.lua")
        assert files_by_name(st)["helper.lua"]["size"] == len("return { target = 2 } -- v2\n")

        # Removing route.lua is a change too: the embedded defaults come back.
        (scripts / "route.lua").unlink()
        wait_status(p, lambda s: [f["name"] for f in s["files"]] == ["helper.lua"],
                    "route.lua gone from the list")
        assert answered_by(p.chat()) == "a"  # the default policy, main: by id at a tie


# --------------------------------------------------------------------------- in flight

# Routes to upstream TARGET; its on_response records the exchange with user_agent = VERSION,
# so the record shows which script's hooks finished the request.
VERSIONED = """\
local route = require "route"
local VERSION, TARGET = "%s", %d
return {
  pick_upstream = function(req, upstreams)
    for _, u in ipairs(upstreams) do
      if u.id == TARGET then return u end
    end
    return nil, "no target"
  end,
  on_response = function(req, res)
    route.record {
      id = req.id, ip = req.client_ip, body = req.body, response = res.content,
      model = req.model, status = res.status,
      upstream_id = res.upstream and res.upstream.id,
      upstream_endpoint = res.upstream and res.upstream.endpoint,
      elapsed = res.elapsed, response_time = res.ttfb, error = res.error,
      user_agent = VERSION,
    }
  end,
}
"""


def test_stream_in_flight_keeps_its_hooks_across_a_reload(proxy_factory, tmp_path, mocks):
    a = mocks[0]
    gate = threading.Event()
    pieces = ["one ", "two ", "three ", "four"]
    sse = a.set("/v1/chat/completions", ChatStream(pieces, delay=0.02, gates={2: gate}))
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, VERSIONED % ("v1", 1))
    with p:
        with p.connect() as conn:
            conn.send(p.raw_request("POST", "/v1/chat/completions",
                                    {"model": "across", "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}))
            head = conn.read_head()
            assert head.status == 200 and head.headers["content-type"] == "text/event-stream"
            # The first piece is through; the second waits on the gate.
            head.reader.read_until(b'"one "')

            # The new script: to b, recording as v2. Loaded by the admin call (the watch may
            # load it again: the same script).
            rename_over(scripts, VERSIONED % ("v2", 2))
            r = p.request("POST", "/admin/reload")
            assert r.status == 200, r
            # New requests get the new hooks while the stream is still open.
            assert answered_by(p.chat(model="after")) == "b"
            assert not sse.finished.is_set()

            gate.set()
            body = head.reader.read_all()
        # (The mock marks the stream finished just after its last write.)
        assert sse.finished.wait(5) and not sse.aborted.is_set()
        events = [ln[len("data: "):] for ln in body.decode().split("\n")
                  if ln.startswith("data: ")]
        assert events[-1] == "[DONE]", body
        chunks = [json.loads(e) for e in events[:-1]]
        got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert got == "".join(pieces), body
        assert all(c["mock"] == "a" for c in chunks)

        # The stream's exchange was finished (and recorded) by the hooks it started with.
        row = p.wait_for_records(1, where="model = 'across'")[0]
        assert row["user_agent"] == "v1", row
        assert row["status"] == 200 and row["upstream_id"] == 1
        assert row["response"] == "".join(pieces)
        assert not row["error"]
        row = p.wait_for_records(1, where="model = 'after'")[0]
        assert row["user_agent"] == "v2" and row["upstream_id"] == 2, row


# --------------------------------------------------------------------------- route.shared

SHARED_COUNTER = """\
local route = require "route"
route.shared.n = route.shared.n or 0
local calls = 0 -- a local starts again at every load
return {
  pick_upstream = function(req, upstreams)
    route.shared.n = route.shared.n + 1
    calls = calls + 1
    return nil, ("%s shared=%%d local=%%d"):format(route.shared.n, calls)
  end,
}
"""


def test_shared_survives_every_kind_of_reload(proxy_factory, tmp_path, mocks):
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, SHARED_COUNTER % "v1")
    seen = []

    def ask():
        msg = assert_error_shape(p.chat(), 500)
        m = re.match(r"^(v\d) shared=(\d+) local=(\d+)$", msg)
        assert m, msg
        seen.append((m.group(1), int(m.group(2)), int(m.group(3))))
        return seen[-1]

    def until_version(v):
        wait_until(lambda: ask()[0] == v, timeout=RELOAD_WAIT, message="version %s" % v)

    with p:
        ask()
        ask()
        (scripts / "route.lua").write_text(SHARED_COUNTER % "v2")
        until_version("v2")
        rename_over(scripts, SHARED_COUNTER % "v3")
        until_version("v3")
        # SIGHUP and admin reload the same file: the local starts again, shared goes on.
        p.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: ask()[2] == 1, timeout=RELOAD_WAIT, message="SIGHUP reload")
        assert p.request("POST", "/admin/reload").status == 200
        ask()
        ask()

    # The shared counter went on through every reload: 1, 2, 3, ... with no gap or restart.
    assert [n for _, n, _ in seen] == list(range(1, len(seen) + 1)), seen
    # The local one restarted at each of the four reloads (v2, v3, SIGHUP, admin).
    restarts = [i for i, (_, _, loc) in enumerate(seen) if loc == 1]
    assert len(restarts) == 5, seen
    assert seen[-1][2] == 2 and seen[-2][2] == 1
    assert [v for v, _, _ in seen][-1] == "v3"


# --------------------------------------------------------------------------- under load

def asan_instrumented(binary):
    """AddressSanitizer keeps freed memory in quarantine (256 MiB by default) and maps shadow
    memory: RSS tells nothing about leaks there (LeakSanitizer, at exit, does)."""
    with open(binary, "rb") as f:
        return b"__asan_init" in f.read()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


LOAD_SCRIPT = """\
-- %s
local route = require "route"
route.shared.picks = (route.shared.picks or 0) + 0
return {
  pick_upstream = function(req, upstreams)
    route.shared.picks = route.shared.picks + 1
    return route.defaults.pick_upstream(req, upstreams)
  end,
}
"""


def test_thousand_reloads_under_concurrent_load(proxy_factory, tmp_path):
    n_clients, n_reloads, rewrite_every = 4, 1000, 50
    with MockUpstream("a") as a:
        p, scripts = start_proxy(proxy_factory, tmp_path, [a], LOAD_SCRIPT % "version 0")
        with p:
            admin = p.http_connection(timeout=10)
            hdrs = p.auth_headers()

            def reload_once():
                admin.request("POST", "/admin/reload", headers=hdrs)
                resp = admin.getresponse()
                body = resp.read()
                return resp.status, body

            # Warm-up, so the allocator and the pools have their working size before the
            # first measurement.
            for i in range(100):
                assert answered_by(p.chat()) == "a"
                if i % 5 == 0:
                    assert reload_once()[0] == 200
            p.wait_for_records(100)
            rss_before = rss_kib(p.proc.pid)
            reloads_before = status(p)["reloads"]

            stop = threading.Event()
            results = [{"ok": 0, "failed": []} for _ in range(n_clients)]

            def client(res, stream):
                # Streamed requests hold their hooks longer, across more of the reloads.
                conn = p.http_connection(timeout=10)
                body = json.dumps({"model": "load", "stream": stream,
                                   "messages": [{"role": "user", "content": "hi"}]})
                while not stop.is_set():
                    try:
                        conn.request("POST", "/v1/chat/completions", body=body,
                                     headers=dict(hdrs, **{"Content-Type": "application/json"}))
                        resp = conn.getresponse()
                        data = resp.read()
                        if resp.status == 200 and (
                                data.endswith(b"data: [DONE]\n\n") and b'"mock": "a"' in data
                                if stream else json.loads(data)["mock"] == "a"):
                            res["ok"] += 1
                        else:
                            res["failed"].append((resp.status, data[:300]))
                    except Exception as e:  # a failed request, whatever the cause
                        res["failed"].append(repr(e))
                        conn.close()
                        conn = p.http_connection(timeout=10)
                conn.close()

            threads = [threading.Thread(target=client, args=(r, i % 2 == 1), daemon=True)
                       for i, r in enumerate(results)]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            bad = []
            rewrites = 0
            try:
                for i in range(n_reloads):
                    if i % rewrite_every == 0:
                        # A new version by rename-over, which the watch reloads as well.
                        rename_over(scripts, LOAD_SCRIPT % ("version %d" % (i + 1)))
                        rewrites += 1
                    st, body = reload_once()
                    if st != 200:
                        bad.append((i, st, body[:300]))
            finally:
                reload_time = time.monotonic() - t0
                time.sleep(0.3)  # let the last watch reload happen under load too
                stop.set()
                for t in threads:
                    t.join(15)
            admin.close()

            assert not any(t.is_alive() for t in threads), "a client thread hung"
            assert bad == [], bad[:5]
            failed = [f for r in results for f in r["failed"]]
            ok = sum(r["ok"] for r in results)
            assert failed == [], "%d failed requests, first: %r" % (len(failed), failed[:3])
            assert ok >= 200, "only %d requests during %.1fs of reloads" % (ok, reload_time)

            st = status(p)
            assert st["reloads"] >= reloads_before + n_reloads, st
            assert st["last_error"] is None
            assert files_by_name(st)["route.lua"]["sha256"] == file_sha(scripts / "route.lua")

            # Every request left its record.
            total = 100 + ok
            p.wait_for_records(total, timeout=20)

            rss_after = rss_kib(p.proc.pid)
            grew = (rss_after - rss_before) / 1024.0
            if not asan_instrumented(p.binary):
                assert grew < 20, "RSS grew by %.1f MiB over %d reloads (%d -> %d KiB)" % (
                    grew, n_reloads, rss_before, rss_after)
            assert p.alive()
            print("\n%d reloads (%d rename-overs) in %.1fs with %d requests; RSS %d -> %d KiB"
                  % (n_reloads, rewrites, reload_time, ok, rss_before, rss_after))


# --------------------------------------------------------------------------- off the loop

HELPER_USER = """\
local route = require "route"
local TARGET = %d
return {
  pick_upstream = function(req, ups)
    -- Required lazily, at request time: it must come from the loaded snapshot.
    local pick = require "lib.pick"
    return pick(ups, TARGET)
  end,
}
"""

PICK_HELPER = """\
return function(ups, id)
  for _, u in ipairs(ups) do if u.id == id then return u end end
  return nil, "no upstream " .. id
end
"""


def test_reload_reads_the_folder_off_the_loop_thread(proxy_factory, tmp_path, mocks):
    """The loop thread never reads a script: on a reload the folder (route.lua and its helpers,
    subfolders included) is read by a work thread, and `require` finds the helpers in memory,
    even lazily at request time and after the file was deleted. Observed with strace: every
    open of a .lua file after start-up is made by a thread other than the loop's (the main
    thread, whose tid is the process id)."""
    p, scripts = start_proxy(proxy_factory, tmp_path, mocks, HELPER_USER % 1)
    (scripts / "lib").mkdir()
    (scripts / "lib" / "pick.lua").write_text(PICK_HELPER)
    with p:
        r = p.request("POST", "/admin/reload")
        assert r.status == 200, r
        trace = tmp_path / "strace.txt"
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=openat,open", "-o",
                                   str(trace), "-p", str(p.proc.pid)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE)
        try:
            # strace writes nothing until a call is made: wait until it traces us by making
            # the server open something (an admin reload reads the folder).
            def attached():
                p.request("POST", "/admin/reload")
                return trace.exists() and ".lua" in trace.read_text()
            wait_until(attached, timeout=10, interval=0.2, message="strace attached")
            (scripts / "route.lua").write_text(HELPER_USER % 2)
            r = p.request("POST", "/admin/reload")
            assert r.status == 200, r
            # Delete the helper: the hooks keep working from the snapshot (the lazy require
            # of the first request after the reload reads no file).
            (scripts / "lib" / "pick.lua").unlink()
            assert answered_by(p.chat()) == "b"
            assert answered_by(p.chat()) == "b"
        finally:
            tracer.terminate()
            tracer.wait(timeout=10)
        lines = [l for l in trace.read_text().splitlines() if ".lua" in l]
        assert lines, trace.read_text()[-2000:]
        loop_tid = str(p.proc.pid)
        on_loop = [l for l in lines if l.split()[0] == loop_tid]
        assert not on_loop, "the loop thread opened scripts:\n" + "\n".join(on_loop)
        assert any("lib/pick.lua" in l for l in lines), lines
        st = status(p)
        assert sorted(files_by_name(st)) == ["lib/pick.lua", "route.lua"], st
