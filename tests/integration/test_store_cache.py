"""The loop's cached view of the database through the real binary (issue 8, item 4): a change
by another process (-set) is seen by a running server within 250 ms (asserted under 1 s, so a
loaded CI box does not flake; the measured latency is printed); a change through the admin API
or route.config.set is seen by the very next request; and counter bumps queued for the writer
are never undone by a re-read of the database (round_robin alternates strictly, even while
other processes keep changing the database)."""

import textwrap
import threading
import time

from routetest import Proxy, db_query

SPEC_LATENCY = 0.25
ASSERTED_LATENCY = 1.0


def answered_by(reply):
    assert reply.status == 200, reply
    return reply.json()["mock"]


def admin(p, method, path, body=None):
    return p.request(method, path, body, headers={"Authorization": "Bearer %s" % p.token},
                     auth=False)


def test_set_from_another_process_is_seen_within_250ms(proxy_factory, mock):
    p = proxy_factory(upstreams=[("sk-cache-0001", mock.endpoint())], token="tok-a")
    latencies = []
    for i in range(5):
        token = "tok-%d" % i
        headers = {"Authorization": "Bearer %s" % token}
        assert p.chat(headers=headers).status == 403
        # -set from another process: committed when it exits.
        p.oneshot("-set", "authorization=tok-a,%s" % token, check=True)
        t0 = time.monotonic()
        while True:
            status = p.chat(headers=headers).status
            took = time.monotonic() - t0
            if status == 200 or took > 5:
                break
            time.sleep(0.01)
        assert status == 200, "the -set was not seen within 5 s"
        latencies.append(took)
    print("-set seen by the running server after %s ms (spec: within %d ms)"
          % (", ".join("%.0f" % (t * 1000) for t in latencies), SPEC_LATENCY * 1000))
    assert max(latencies) < ASSERTED_LATENCY, latencies


def test_admin_change_is_seen_by_the_next_request(proxy_factory, mock_factory):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory()
    for _ in range(5):
        r = admin(p, "POST", "/admin/upstreams", {"SK": "sk-cache-a", "Endpoint": a.endpoint()})
        assert r.status == 200, r
        uid = r.json()["ID"]
        assert answered_by(p.chat()) == "a"  # no wait: the very next request

        r = admin(p, "PUT", "/admin/upstreams/%d" % uid, {"Endpoint": b.endpoint()})
        assert r.status == 200, r
        assert answered_by(p.chat()) == "b"

        r = admin(p, "DELETE", "/admin/upstreams/%d" % uid)
        assert r.status == 200, r
        r = p.chat()
        assert r.status == 500 and b"no upstream" in r.body, r


SCRIPT = """
local route = require "route"
return {
  authorize = function(req)
    local t = req.headers["x-target"]
    if t then route.config.set("target", t) end
    return route.defaults.authorize(req)
  end,
  pick_upstream = function(req, upstreams)
    local want = tonumber(route.config.get("target") or "")
    for _, u in ipairs(upstreams) do
      if u.id == want then return u end
    end
    return nil, "no target"
  end,
}
"""


def test_route_config_set_is_seen_by_the_next_request(proxy_factory, mock_factory, tmp_path):
    a, b = mock_factory("a"), mock_factory("b")
    scripts = tmp_path / "scripts-target"
    scripts.mkdir()
    (scripts / "route.lua").write_text(textwrap.dedent(SCRIPT))
    p = proxy_factory(upstreams=[("sk-cache-a", a.endpoint()), ("sk-cache-b", b.endpoint())],
                      scripts_dir=scripts)
    for i in range(60):
        target = 1 + i % 2
        assert answered_by(p.chat(headers={"X-Target": str(target)})) == "ab"[target - 1]
        # Set in-process: the next requests see it, before and after the writer commits it.
        for _ in range(3):
            assert answered_by(p.chat()) == "ab"[target - 1], i
    p.stop()
    assert db_query(p.db_path, "SELECT value FROM config_kvs WHERE key='target'")[0]["value"] == "2"


def test_round_robin_alternates_strictly(proxy_factory, mock_factory):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory(upstreams=[("sk-cache-a", a.endpoint()), ("sk-cache-b", b.endpoint())],
                      config={"policy": "round_robin"})
    # Other processes keep committing meanwhile, so the server keeps re-reading the database
    # while bumps are queued: a re-read must not undo them.
    done = threading.Event()
    sets = []

    def churn():
        while not done.is_set():
            p.oneshot("-set", "unrelated=%d" % len(sets), check=True)
            sets.append(1)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        got = [answered_by(p.chat()) for _ in range(1000)]
    finally:
        done.set()
        t.join(30)
    flips = [i for i in range(1, len(got)) if got[i] == got[i - 1]]
    assert not flips, "same upstream twice in a row at %r (of %d, %d -set meanwhile)" % (
        flips[:10], len(got), len(sets))
    assert len(sets) > 0
    assert p.stop() == 0
    rows = db_query(p.db_path, "SELECT success_count, failed_count FROM openai_upstreams")
    assert [(r["success_count"], r["failed_count"]) for r in rows] == [(500, 0), (500, 0)]
