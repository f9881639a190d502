"""Outgoing webhooks (SPEC "Lua hooks": on_response posts an error notice to FEISHU_WEBHOOK /
MATRIX_API; route.http_post is asynchronous): both services get their JSON notice when a
request fails, the notice names endpoints and never keys, the query of a webhook URL (where
such services put their secret) stays out of the logs, and the client's answer never waits on
a webhook. The webhook receivers are the harness's mock (plain HTTP on 127.0.0.1)."""

import json
import threading
import time

import pytest

from mock_upstream import ChatStream, Delay, Hang, Json, Status
import routetest
from routetest import assert_error_shape, closed_port, wait_until

CHAT = "/v1/chat/completions"
SK_A, SK_B = "sk-webhook-secret-aaaa", "sk-webhook-secret-bbbb"
FEISHU_PATH = "/open-apis/bot/v2/hook/feishu-secret-path"
MATRIX_PATH = "/_matrix/client/r0/rooms/room1/send/m.room.message"
MATRIX_QUERY = "access_token=matrix-secret-token"


def chat_body():
    return {"model": "gpt-webhook", "messages": [{"role": "user", "content": "ping"}]}


@pytest.fixture
def hooks(mock_factory):
    feishu, matrix = mock_factory("feishu"), mock_factory("matrix")
    feishu.set_default(Json({"code": 0, "msg": "success"}))
    matrix.set_default(Json({"event_id": "$1"}))
    env = {"FEISHU_WEBHOOK": feishu.url + FEISHU_PATH,
           "MATRIX_API": "%s%s?%s" % (matrix.url, MATRIX_PATH, MATRIX_QUERY)}
    return feishu, matrix, env


def failing_pair(mock_factory):
    a, b = mock_factory("a"), mock_factory("b")
    a.set_default(Status(500))
    b.set_default(Status(503))
    return a, b


def feishu_text(req):
    j = req.json()
    assert set(j) == {"msg_type", "content"}, j
    assert j["msg_type"] == "text" and isinstance(j["content"]["text"], str), j
    return j["content"]["text"]


def matrix_text(req):
    j = req.json()
    assert set(j) == {"msgtype", "body"}, j
    assert j["msgtype"] == "m.text" and isinstance(j["body"], str), j
    return j["body"]


def test_all_failed_notifies_feishu_and_matrix(proxy_factory, mock_factory, hooks):
    feishu, matrix, env = hooks
    a, b = failing_pair(mock_factory)
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())], env=env)
    r = p.request("POST", CHAT, chat_body())
    msg = assert_error_shape(r, 502)
    fr = feishu.wait_for_requests(1)[0]
    mr = matrix.wait_for_requests(1)[0]
    for req, text in ((fr, feishu_text(fr)), (mr, matrix_text(mr))):
        assert req.method == "POST"
        assert req.header("content-type", "").startswith("application/json")
        assert int(req.header("content-length")) == len(req.body)
        assert "status 502" in text, text
        assert msg in text, (msg, text)  # the all-failed message: each endpoint and reason
        assert routetest.upstream_label(a.endpoint()) in text, text
        assert routetest.upstream_label(b.endpoint()) in text, text
        assert "status 500" in text and "status 503" in text
        assert CHAT in text
        for secret in (SK_A, SK_B, p.token):
            assert secret not in text
    assert fr.path == FEISHU_PATH and fr.query == ""
    assert mr.path == MATRIX_PATH and mr.query == MATRIX_QUERY
    # The request id in the notice is the record's.
    rec = p.wait_for_records(1)[-1]
    assert rec["id"] in feishu_text(fr)
    # One notice each, not one per attempt.
    time.sleep(0.5)
    assert len(feishu.requests) == 1 and len(matrix.requests) == 1
    log = p.stderr_text()
    assert "matrix-secret-token" not in log and SK_A not in log and SK_B not in log


def test_slow_webhooks_do_not_delay_the_client(proxy_factory, mock_factory, hooks):
    feishu, matrix, env = hooks
    feishu.set_default(Delay(3, Json({"code": 0})))
    matrix.set_default(Hang(timeout=30))
    a, b = failing_pair(mock_factory)
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())], env=env)
    for i in range(3):
        t = time.monotonic()
        r = p.request("POST", CHAT, chat_body(), timeout=10)
        elapsed = time.monotonic() - t
        assert r.status == 502
        assert elapsed < 1.0, "request %d waited %.2f s on a webhook" % (i, elapsed)
    # Meanwhile the notices are on their way (the webhooks have not answered yet).
    feishu.wait_for_requests(3, timeout=5)
    matrix.wait_for_requests(3, timeout=5)
    # And a healthy request right now is not held up either.
    a.set_default(Json({"ok": True}))
    t = time.monotonic()
    assert p.request("POST", CHAT, chat_body()).status == 200
    assert time.monotonic() - t < 1.0


def test_concurrent_failures_each_notify(proxy_factory, mock_factory, hooks):
    feishu, matrix, env = hooks
    feishu.set_default(Delay(0.5, Json({"code": 0})))
    a, b = failing_pair(mock_factory)
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())], env=env)
    statuses = []
    ts = [threading.Thread(target=lambda: statuses.append(
        p.request("POST", CHAT, chat_body(), timeout=10).status)) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(15)
    assert statuses == [502] * 8
    ids = {rec["id"] for rec in p.wait_for_records(8)}
    got = feishu.wait_for_requests(8, timeout=10)
    assert {i for i in ids if any(i in feishu_text(q) for q in got)} == ids
    matrix.wait_for_requests(8, timeout=10)


def test_no_notice_for_successes_and_client_errors(proxy_factory, mock, hooks):
    feishu, matrix, env = hooks
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], env=env)
    assert p.request("POST", CHAT, chat_body()).status == 200
    mock.set_default(Json({"error": {"message": "bad", "type": "invalid_request_error"}},
                          status=400))
    assert p.request("POST", CHAT, chat_body()).status == 400
    p.wait_for_records(2)
    time.sleep(0.7)
    assert feishu.requests == [] and matrix.requests == []


def test_mid_stream_failure_notifies(proxy_factory, mock, hooks):
    feishu, matrix, env = hooks
    never = threading.Event()
    mock.set_default(ChatStream(["x", "y"], gates={2: never}, gate_timeout=20))
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], env=env,
                      config={"idle_timeout": "1"})
    body = dict(chat_body(), stream=True)
    r = None
    try:
        r = p.request("POST", CHAT, body, timeout=10)
    except Exception:  # http.client: IncompleteRead on the cut chunked body
        pass
    assert r is None or b"[DONE]" not in r.body
    text = feishu_text(feishu.wait_for_requests(1)[0])
    assert "idle" in text and mock.endpoint() in text and SK_A not in text, text
    never.set()


def test_only_the_configured_service_is_called(proxy_factory, mock_factory, hooks):
    feishu, matrix, env = hooks
    a, b = failing_pair(mock_factory)
    p = proxy_factory(upstreams=[(SK_A, a.endpoint())],
                      env={"FEISHU_WEBHOOK": env["FEISHU_WEBHOOK"], "MATRIX_API": ""})
    assert p.request("POST", CHAT, chat_body()).status == 502
    feishu.wait_for_requests(1)
    time.sleep(0.5)
    assert matrix.requests == []


def test_unreachable_webhook_is_logged_without_its_secret(proxy_factory, mock_factory):
    a, _ = failing_pair(mock_factory)
    # Feishu puts its token in the path, others in the query: the log names the host only.
    url = "http://127.0.0.1:%d/hook/path-secret?token=unreachable-secret" % closed_port()
    p = proxy_factory(upstreams=[(SK_A, a.endpoint())], env={"FEISHU_WEBHOOK": url})
    for _ in range(2):
        t = time.monotonic()
        assert p.request("POST", CHAT, chat_body()).status == 502
        assert time.monotonic() - t < 1.0
    wait_until(lambda: "webhook" in p.stderr_text() and "failed" in p.stderr_text(), timeout=5,
               message="the failed webhook logged")
    log = p.stderr_text()
    assert "unreachable-secret" not in log
    assert "path-secret" not in log
    assert "webhook http://127.0.0.1:" in log


def test_custom_hook_http_post_is_fire_and_forget(proxy_factory, mock, mock_factory, tmp_path):
    # route.http_post from an operator's on_response: returns at once, even to a slow receiver.
    sink = mock_factory("sink")
    sink.set_default(Delay(2, Json({"ok": 1})))
    (tmp_path / "route.lua").write_text('''
local route = require "route"
local cjson = require "cjson"
return {
  on_response = function(req, res)
    route.defaults.on_response(req, res)
    local ok, why = route.http_post("%s/collect?k=v", cjson.encode({ id = req.id, status = res.status }),
                                    { ["X-Custom"] = "1", ["Bad\\r\\nHeader"] = "x" })
    route.log("warn", "POSTED", tostring(ok), tostring(why))
  end,
}
''' % sink.url)
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], scripts_dir=tmp_path)
    t = time.monotonic()
    r = p.request("POST", CHAT, chat_body())
    assert r.status == 200 and time.monotonic() - t < 1.0
    got = sink.wait_for_requests(1, timeout=5)[0]
    assert got.path == "/collect" and got.query == "k=v"
    assert got.header("x-custom") == "1"
    assert got.header("content-type") == "application/json"
    assert json.loads(got.body)["status"] == 200
    assert all("bad" not in k.lower() for k, _ in got.headers)
    assert "POSTED true" in p.stderr_text()


def test_webhooks_in_flight_are_bounded(proxy_factory, mock, mock_factory, tmp_path):
    # A script that posts on every request while the receiver hangs must not pile webhooks up
    # without bound: past 256 in flight a post is refused (false, why), counted, and logged
    # once per 10 s, and the proxy keeps serving.
    sink = mock_factory("sink")
    sink.set_default(Hang(timeout=20))
    (tmp_path / "route.lua").write_text('''
local route = require "route"
return {
  on_response = function(req, res)
    local ok_n, refused, why_seen = 0, 0, nil
    for i = 1, 300 do
      local ok, why = route.http_post("%s/hook", "{}")
      if ok then ok_n = ok_n + 1 else refused = refused + 1; why_seen = why end
    end
    route.log("warn", "POSTS", ok_n, refused, tostring(why_seen))
  end,
}
''' % sink.url)
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], scripts_dir=tmp_path)
    assert p.request("POST", CHAT, chat_body()).status == 200
    wait_until(lambda: "POSTS" in p.stderr_text(), timeout=10, message="the script's log")
    assert "POSTS 256 44 too many webhooks in flight" in p.stderr_text()
    assert p.request("POST", CHAT, chat_body()).status == 200
    wait_until(lambda: p.stderr_text().count("POSTS") == 2, timeout=10, message="second log")
    assert "POSTS 0 300 too many webhooks in flight" in p.stderr_text()
    log = p.stderr_text()
    assert log.count("webhooks: 256 in flight") == 1, log[-3000:]
    sink.wait_for_requests(200, timeout=10)


def test_webhook_url_fragment_stays_home(proxy_factory, mock, mock_factory, tmp_path):
    # The query goes with the POST (services put their token there); a fragment never does.
    sink = mock_factory("sink")
    sink.set_default(Json({"ok": 1}))
    (tmp_path / "route.lua").write_text('''
local route = require "route"
return {
  on_response = function(req, res)
    route.http_post("%s/collect?k=v#frag", "{}")
  end,
}
''' % sink.url.replace("http://", "HTTP://"))
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], scripts_dir=tmp_path)
    assert p.request("POST", CHAT, chat_body()).status == 200
    got = sink.wait_for_requests(1, timeout=5)[0]
    assert got.path == "/collect" and got.query == "k=v", (got.path, got.query)
