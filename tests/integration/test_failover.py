"""Failover along the candidate list (SPEC "Proxy" steps 5-7, "Details that are easy to get
wrong"): which upstream failures move on to the next candidate, which go to the client as
they are, the all-failed 502, the body the next upstream gets, the counters, and
res.attempts as on_response sees it.

The order of candidates is made deterministic with a -scripts folder whose pick_upstream sorts
by id (upstreams are added in the order given); its on_response runs the default one (record,
counters, notices) and then logs res.attempts as JSON to stderr, one line per request:
"ATTEMPTS <request id> <json>". Loopback only; every timeout here is set to 1 s."""

import hashlib
import json
import re
import time

import pytest

from mock_upstream import ChatStream, Echo, Hang, Json, Raw, Status
from routetest import assert_error_shape, closed_port, upstream_label, wait_until

CHAT = "/v1/chat/completions"
SK_BAD, SK_GOOD, SK_THIRD = "sk-bad-secret-1111", "sk-good-secret-2222", "sk-third-secret-3333"

ORDERED_HOOKS = r'''
local route = require "route"
local cjson = require "cjson"
return {
  pick_upstream = function(req, ups)
    table.sort(ups, function(a, b) return a.id < b.id end)
    return ups
  end,
  on_response = function(req, res)
    route.defaults.on_response(req, res)
    local out = {}
    for i, a in ipairs(res.attempts or {}) do
      out[i] = { id = a.upstream and a.upstream.id, endpoint = a.upstream and a.upstream.endpoint,
                 status = a.status, error = a.error or "", failed = a.failed and true or false }
    end
    route.log("warn", "ATTEMPTS " .. req.id .. " " .. (#out > 0 and cjson.encode(out) or "[]"))
  end,
}
'''


@pytest.fixture
def scripts(tmp_path):
    d = tmp_path / "ordered_scripts"
    d.mkdir()
    (d / "route.lua").write_text(ORDERED_HOOKS)
    return d


def start(proxy_factory, scripts, upstreams, **kw):
    return proxy_factory(upstreams=upstreams, scripts_dir=scripts, **kw)


def body_bytes(stream=False):
    # Odd spacing, key order, escapes and non-ASCII text: any re-encoding would change the hash.
    s = ('{"messages": [ {"role":"user","content":"h\\u00e9llo \u263a \\"quoted\\"\\n"} ],'
         '  "model" :"gpt-failover", "temperature": 0.70%s}' % (', "stream": true' if stream
                                                               else ""))
    return s.encode("utf-8")


def post(p, body, timeout=15):
    return p.request("POST", CHAT, body, {"Content-Type": "application/json"}, timeout=timeout)


def attempts_of(p, request_id, timeout=5):
    pat = re.compile(r"ATTEMPTS %s (.*)$" % re.escape(request_id), re.M)

    def find():
        m = pat.search(p.stderr_text())
        return m and json.loads(m.group(1))

    return wait_until(find, timeout=timeout, message="ATTEMPTS log line of %s" % request_id)


def counters(p):
    return {u["endpoint"]: (u["success_count"], u["failed_count"]) for u in p.upstream_rows()}


def wait_counters(p, expected, timeout=5):
    """expected: {endpoint: (success_count, failed_count)}; after it matched, a short settle
    checks that nothing more is counted."""
    def ok():
        c = counters(p)
        return c if all(c.get(e) == v for e, v in expected.items()) else None

    wait_until(ok, timeout=timeout, message="counters %r (now %r)" % (expected, counters(p)))
    time.sleep(0.3)
    c = counters(p)
    assert all(c.get(e) == v for e, v in expected.items()), (expected, c)
    return c


def last_record(p):
    return p.wait_for_records(1)[-1]


# --------------------------------------------------------------------------- what fails over

FAILURES = ["500", "503", "429", "refused", "unresolvable", "header_timeout", "401", "403",
            "drop", "garbage", "partial_head", "space_before_colon", "1xx_with_body"]


@pytest.mark.parametrize("kind", FAILURES)
def test_failover_to_healthy_second_upstream(proxy_factory, mock_factory, scripts, kind):
    bad, good = mock_factory("bad"), mock_factory("good")
    good.set_default(Echo())
    bad_endpoint = {"refused": "http://127.0.0.1:%d/v1" % closed_port(),
                    "unresolvable": "http://nonexistent.invalid/v1"}.get(kind, bad.endpoint())
    p = start(proxy_factory, scripts, [(SK_BAD, bad_endpoint), (SK_GOOD, good.endpoint())])
    if kind in ("500", "503", "429", "401", "403"):
        bad.set_default(Status(int(kind)))
    elif kind == "header_timeout":
        bad.set_default(Hang())
        p.set_config("timeout", "1")  # while running: read per request
    elif kind == "drop":
        bad.set_default(Raw(b""))  # closes without a byte
    elif kind == "garbage":
        bad.set_default(Raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    elif kind == "space_before_colon":  # found by fuzz_response: a bad response, not forwarded
        bad.set_default(Raw(b"HTTP/1.1 200 OK\r\nX-Bad : 1\r\nContent-Length: 2\r\n\r\n{}"))
    elif kind == "1xx_with_body":  # found by fuzz_response: a 1xx has no body to hand on
        bad.set_default(Raw(b"HTTP/1.1 100 Continue\r\nContent-Length: 4\r\n\r\nJUNK"
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
    elif kind == "partial_head":  # half a head, then silence: still the header timeout
        bad.set_default(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: applic", close=False))
        p.set_config("timeout", "1")
    body = body_bytes()
    t = time.monotonic()
    r = post(p, body)
    elapsed = time.monotonic() - t
    assert r.status == 200, r
    echo = r.json()
    assert echo["mock"] == "good"
    # The second upstream got the request byte for byte, with its own key.
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echo["headers"]["authorization"] == "Bearer %s" % SK_GOOD
    assert len(good.requests) == 1
    if bad_endpoint == bad.endpoint():
        assert len(bad.requests) == 1
        assert bad.requests[0].sha256 == hashlib.sha256(body).hexdigest()
        assert bad.requests[0].header("authorization") == "Bearer %s" % SK_BAD
    if kind in ("header_timeout", "partial_head"):
        assert 0.8 < elapsed < 3.5, elapsed
    else:
        assert elapsed < 3, elapsed

    rec = last_record(p)
    assert rec["status"] == 200 and not rec["error"], rec
    assert rec["upstream_endpoint"] == good.endpoint()
    att = attempts_of(p, rec["id"])
    assert [a["endpoint"] for a in att] == [bad_endpoint, good.endpoint()], att
    assert [a["failed"] for a in att] == [True, False], att
    reason = att[0]["error"]
    expect = {"500": "status 500", "503": "status 503", "429": "status 429",
              "401": "status 401", "403": "status 403", "refused": "refused",
              "unresolvable": "DNS", "header_timeout": "timeout", "drop": "closed",
              "garbage": "bad response", "partial_head": "timeout",
              "space_before_colon": "bad response", "1xx_with_body": "bad response"}[kind]
    assert expect in reason, (kind, reason)
    if kind in ("500", "503", "429", "401", "403"):
        assert att[0]["status"] == int(kind)
    assert att[1]["status"] == 200
    wait_counters(p, {bad_endpoint: (0, 1), good.endpoint(): (1, 0)})


def test_streamed_request_fails_over_before_the_first_byte(proxy_factory, mock_factory, scripts):
    bad, good = mock_factory("bad"), mock_factory("good")
    bad.set_default(Status(503))
    good.set_default(ChatStream(["fail", "over"]))
    p = start(proxy_factory, scripts, [(SK_BAD, bad.endpoint()), (SK_GOOD, good.endpoint())])
    r = post(p, body_bytes(stream=True))
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/event-stream")
    assert b'"mock": "good"' in r.body and r.body.rstrip().endswith(b"data: [DONE]")
    assert len(bad.requests) == 1 and bad.requests[0].json()["stream"] is True
    rec = last_record(p)
    assert rec["response"] == "failover" and rec["upstream_endpoint"] == good.endpoint()


def test_failover_walks_the_whole_list(proxy_factory, mock_factory, scripts):
    a, b, c = mock_factory("a"), mock_factory("b"), mock_factory("c")
    a.set_default(Status(500))
    b.set_default(Status(429))
    p = start(proxy_factory, scripts,
              [(SK_BAD, a.endpoint()), (SK_THIRD, b.endpoint()), (SK_GOOD, c.endpoint())])
    r = post(p, body_bytes())
    assert r.status == 200 and r.json()["mock"] == "c", r
    assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 1, 1)
    att = attempts_of(p, last_record(p)["id"])
    assert [x["status"] for x in att] == [500, 429, 200]
    wait_counters(p, {a.endpoint(): (0, 1), b.endpoint(): (0, 1), c.endpoint(): (1, 0)})


# --------------------------------------------------------------------------- what does not

@pytest.mark.parametrize("status", [400, 404, 422])
def test_client_errors_are_not_failed_over(proxy_factory, mock_factory, scripts, status):
    bad, good = mock_factory("bad"), mock_factory("good")
    err = json.dumps({"error": {"message": "your request is wrong", "type": "invalid_request",
                                "param": None, "code": None}}).encode()
    bad.set_default(Json(err, status=status))
    p = start(proxy_factory, scripts, [(SK_BAD, bad.endpoint()), (SK_GOOD, good.endpoint())])
    r = post(p, body_bytes())
    assert r.status == status and r.body == err, r
    assert len(bad.requests) == 1
    assert good.requests == [], "a %d must not be failed over" % status
    rec = last_record(p)
    assert rec["status"] == status and not rec["error"], rec
    att = attempts_of(p, rec["id"])
    assert len(att) == 1 and att[0]["failed"] is False and att[0]["status"] == status
    # Not the upstream's failure, and not a success either.
    wait_counters(p, {bad.endpoint(): (0, 0), good.endpoint(): (0, 0)})


@pytest.mark.parametrize("status", [401, 403])
def test_asis_auth_errors_go_to_the_client(proxy_factory, mock_factory, scripts, status):
    bad, good = mock_factory("bad"), mock_factory("good")
    bad.set_default(Status(status))
    p = start(proxy_factory, scripts, [("asis", bad.endpoint()), (SK_GOOD, good.endpoint())],
              args=["-noauth"])
    r = p.request("POST", CHAT, body_bytes(), {"Authorization": "Bearer sk-clients-own-key",
                                               "Content-Type": "application/json"})
    assert r.status == status, r
    assert r.json()["mock"] == "bad"
    assert bad.last.header("authorization") == "Bearer sk-clients-own-key"
    assert good.requests == []
    rec = last_record(p)
    assert rec["status"] == status
    att = attempts_of(p, rec["id"])
    assert len(att) == 1 and att[0]["failed"] is False
    wait_counters(p, {bad.endpoint(): (0, 0), good.endpoint(): (0, 0)})


@pytest.mark.parametrize("status", [429, 500])
def test_asis_still_fails_over_on_429_and_5xx(proxy_factory, mock_factory, scripts, status):
    bad, good = mock_factory("bad"), mock_factory("good")
    bad.set_default(Status(status))
    good.set_default(Echo())
    p = start(proxy_factory, scripts, [("asis", bad.endpoint()), ("asis", good.endpoint())],
              args=["-noauth"])
    r = p.request("POST", CHAT, body_bytes(), {"Authorization": "Bearer sk-clients-own-key",
                                               "Content-Type": "application/json"})
    assert r.status == 200 and r.json()["mock"] == "good", r
    assert r.json()["headers"]["authorization"] == "Bearer sk-clients-own-key"
    wait_counters(p, {bad.endpoint(): (0, 1), good.endpoint(): (1, 0)})


def test_no_failover_once_bytes_reached_the_client(proxy_factory, mock_factory, scripts):
    bad, good = mock_factory("bad"), mock_factory("good")
    # A 200 head and half a body, then the connection drops.
    bad.set_default(Raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"partial\": "))
    p = start(proxy_factory, scripts, [(SK_BAD, bad.endpoint()), (SK_GOOD, good.endpoint())])
    with p.connect() as c:
        c.send(p.raw_request("POST", CHAT, body_bytes(),
                             {"Content-Type": "application/json"}))
        head = c.read_head()
        assert head.status == 200
        with pytest.raises(AssertionError):  # FramingError: closed inside the body
            head.reader.read_all(timeout=5)
        assert c.eof
    assert good.requests == []
    rec = last_record(p)
    assert rec["error"] and bad.endpoint() in rec["error"], rec
    wait_counters(p, {bad.endpoint(): (0, 1), good.endpoint(): (0, 0)})


# --------------------------------------------------------------------------- all failed

def test_all_failed_502_names_every_endpoint_and_reason(proxy_factory, mock_factory, scripts):
    a, c = mock_factory("a"), mock_factory("c")
    a.set_default(Status(500))
    # Not 429: a last 429 goes to the client as it came (test_upstream_429.py).
    c.set_default(Status(503))
    refused = "http://127.0.0.1:%d/v1" % closed_port()
    p = start(proxy_factory, scripts,
              [(SK_BAD, a.endpoint()), (SK_THIRD, refused), (SK_GOOD, c.endpoint())])
    r = post(p, body_bytes())
    msg = assert_error_shape(r, 502)
    assert msg.startswith("all upstreams failed: "), msg
    parts = msg[len("all upstreams failed: "):].split("; ")
    assert len(parts) == 3, msg
    # Each attempt by upstream id and host (SPEC "Details"), never by key or path.
    ids = [u["id"] for u in p.upstream_rows()]
    assert parts[0] == upstream_label(a.endpoint(), ids[0]) + ": status 500", msg
    assert parts[1].startswith(upstream_label(refused, ids[1]) + ": "), msg
    assert "refused" in parts[1], msg
    assert parts[2] == upstream_label(c.endpoint(), ids[2]) + ": status 503", msg
    for sk in (SK_BAD, SK_GOOD, SK_THIRD):
        assert sk not in msg
    assert "/v1" not in msg and "http://" not in msg, msg
    rec = last_record(p)
    assert rec["status"] == 502 and rec["error"] == msg, rec
    att = attempts_of(p, rec["id"])
    assert [x["failed"] for x in att] == [True, True, True]
    wait_counters(p, {a.endpoint(): (0, 1), refused: (0, 1), c.endpoint(): (0, 1)})
    log = p.stderr_text()
    for sk in (SK_BAD, SK_GOOD, SK_THIRD):
        assert sk not in log


def test_all_failed_endpoint_label_has_no_query(proxy_factory, mock_factory, scripts):
    a = mock_factory("a")
    a.set_default(Status(502))
    ep = a.endpoint() + "?api-key=secret-in-query"
    p = start(proxy_factory, scripts, [(SK_BAD, ep)])
    msg = assert_error_shape(post(p, body_bytes()), 502)
    assert "secret-in-query" not in msg, msg
    assert upstream_label(a.endpoint()) + ": status 502" in msg, msg


# --------------------------------------------------------------------------- the default policy

def test_default_policy_moves_a_failed_upstream_back(proxy_factory, mock_factory):
    # No custom hooks: policy "main" orders by failed_count, then success_count, then id.
    a, b = mock_factory("a"), mock_factory("b")
    a.set_default(Status(500))
    p = proxy_factory(upstreams=[(SK_BAD, a.endpoint()), (SK_GOOD, b.endpoint())])
    assert post(p, body_bytes()).json()["mock"] == "b"
    wait_counters(p, {a.endpoint(): (0, 1), b.endpoint(): (1, 0)})
    # Now b leads: a is not even tried.
    for _ in range(2):
        assert post(p, body_bytes()).json()["mock"] == "b"
    assert len(a.requests) == 1 and len(b.requests) == 3
    wait_counters(p, {a.endpoint(): (0, 1), b.endpoint(): (3, 0)})
