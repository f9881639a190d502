"""The access log (issue 10, item 5): one line per /v1 request on stderr, in a stable text
format or (-log-format json) one JSON object per line, the log's own lines too; lines for a success, a failover, an
all-failed 502 and a refused 403; no key or token anywhere on stderr (nor the query, which can
carry one); a line for every other request too (admin, /metrics, 404); config access_log=0
turns it off; what is buffered is written at SIGTERM."""

import json
import re

import pytest

from mock_upstream import Status
from routetest import wait_until

CHAT = "/v1/chat/completions"
SK_A, SK_B = "sk-access-a-secret-1111", "sk-access-b-secret-2222"
QUERY_SECRET = "query-secret-3333"

ORDERED_HOOKS = r'''
return {
  pick_upstream = function(req, ups)
    table.sort(ups, function(a, b) return a.id < b.id end)
    return ups
  end,
}
'''

TEXT_RE = re.compile(
    r'^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ACCESS'
    r' client_ip=(?P<client_ip>"[^"]*")'
    r' method=(?P<method>"[^"]*")'
    r' path=(?P<path>"(?:[^"\\]|\\.)*")'
    r' model=(?P<model>"(?:[^"\\]|\\.)*"|-)'
    r' status=(?P<status>\d+)'
    r' upstream_id=(?P<upstream_id>\d+|-)'
    r' attempts=(?P<attempts>\d+)'
    r' tried=(?P<tried>[\d,]+|-)'
    r' bytes_sent=(?P<bytes_sent>\d+)'
    r' first_byte_ms=(?P<first_byte_ms>\d+\.\d{3}|-)'
    r' total_ms=(?P<total_ms>\d+\.\d{3})'
    r' prompt_tokens=(?P<prompt_tokens>\d+|-)'
    r' completion_tokens=(?P<completion_tokens>\d+|-)'
    r' request_id=(?P<request_id>"[0-9a-f-]{36}"|-)$')

JSON_KEYS = ["time", "client_ip", "method", "path", "model", "status", "upstream_id", "attempts",
             "tried", "bytes_sent", "first_byte_ms", "total_ms", "prompt_tokens",
             "completion_tokens", "request_id"]


def text_lines(p):
    out = []
    for line in p.stderr_text().splitlines():
        if " ACCESS " in line:
            m = TEXT_RE.match(line)
            assert m, "access line not in the stable format: %r" % line
            d = {}
            for k, v in m.groupdict().items():
                if v == "-":
                    d[k] = None
                elif v.startswith('"'):
                    d[k] = json.loads(v)
                elif k == "tried":
                    d[k] = [int(x) for x in v.split(",")]
                elif k in ("first_byte_ms", "total_ms"):
                    d[k] = float(v)
                elif k == "time":
                    d[k] = v
                else:
                    d[k] = int(v)
            out.append(d)
    return out


def json_lines(p):
    """The access objects; with -log-format json every line of stderr is one JSON object
    (the log's messages as {"time", "level", "message"})."""
    out = []
    for line in p.stderr_text().splitlines():
        if not line:
            continue
        obj = json.loads(line)
        if "level" in obj:
            assert list(obj) == ["time", "level", "message"], obj
            continue
        assert list(obj) == JSON_KEYS, obj
        out.append(obj)
    return out


def post(p, model, token=None, path=CHAT):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    return p.request("POST", path, body, headers, auth=token is None)


@pytest.fixture
def ordered(tmp_path):
    d = tmp_path / "ordered_scripts"
    d.mkdir()
    (d / "route.lua").write_text(ORDERED_HOOKS)
    return d


def traffic(p, a, b):
    """A success, a failover, an all-failed 502 and a 403; returns the upstream ids."""
    ids = {u["endpoint"]: u["id"] for u in p.upstream_rows()}
    assert post(p, "gpt-ok", path=CHAT + "?api-key=" + QUERY_SECRET).status == 200
    a.enqueue(Status(503))
    assert post(p, "gpt-failover").status == 200
    a.enqueue(Status(500))
    b.enqueue(Status(502))
    assert post(p, "gpt-fail").status == 502
    assert post(p, "gpt-refused", token="wrong-client-token-4444").status == 403
    return ids[a.endpoint()], ids[b.endpoint()]


def v1(lines):
    return [l for l in lines if l["path"].startswith("/v1")]


def check_lines(p, lines, ua, ub):
    lines = v1(lines)
    by_model = {l["model"]: l for l in lines}
    assert len(lines) == 4, lines
    ok = by_model["gpt-ok"]
    assert ok["method"] == "POST" and ok["path"] == CHAT  # the path, never the query
    assert ok["client_ip"] == "127.0.0.1"
    assert ok["status"] == 200 and ok["upstream_id"] == ua and ok["attempts"] == 1
    assert ok["tried"] == [ua]
    assert ok["bytes_sent"] > 0
    assert ok["prompt_tokens"] == 5 and ok["completion_tokens"] == 7
    assert 0 < ok["first_byte_ms"] <= ok["total_ms"]
    fo = by_model["gpt-failover"]
    assert fo["status"] == 200 and fo["upstream_id"] == ub and fo["attempts"] == 2
    assert fo["tried"] == [ua, ub]
    bad = by_model["gpt-fail"]
    assert bad["status"] == 502 and bad["attempts"] == 2 and bad["tried"] == [ua, ub]
    assert bad["upstream_id"] == ub  # the last attempt's
    assert bad["first_byte_ms"] is None and bad["prompt_tokens"] is None
    assert bad["bytes_sent"] > 0  # the 502's JSON body
    refused = by_model["gpt-refused"]
    assert refused["status"] == 403 and refused["attempts"] == 0
    assert refused["upstream_id"] is None
    ids = {l["request_id"] for l in lines}
    assert len(ids) == 4
    # The record of the success has the same id as its line.
    rec_ids = {r["id"] for r in p.records()}
    assert ok["request_id"] in rec_ids
    err = p.stderr_text()
    for secret in (SK_A, SK_B, p.token, "wrong-client-token-4444", QUERY_SECRET):
        assert secret not in err, secret


def test_text_lines(proxy_factory, mock_factory, ordered):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())],
                      scripts_dir=ordered)
    ua, ub = traffic(p, a, b)
    lines = wait_until(lambda: len(v1(text_lines(p))) >= 4 and text_lines(p),
                       message="4 access lines (flushed within a second)")
    check_lines(p, lines, ua, ub)
    # Every other request has a line too (as nginx logs every request), with what HTTP knows.
    assert p.request("GET", "/admin/upstreams").status == 200
    assert p.request("GET", "/metrics", auth=False).status == 403
    assert p.request("GET", "/nowhere?token=" + QUERY_SECRET).status == 404
    p.stop()
    others = {l["path"]: l for l in text_lines(p) if not l["path"].startswith("/v1")}
    adm = others["/admin/upstreams"]
    assert adm["method"] == "GET" and adm["status"] == 200 and adm["bytes_sent"] > 0
    assert adm["attempts"] == 0 and adm["model"] is None and adm["request_id"] is None
    assert adm["upstream_id"] is None and adm["prompt_tokens"] is None
    assert others["/metrics"]["status"] == 403
    assert others["/nowhere"]["status"] == 404
    err = p.stderr_text()
    for secret in (SK_A, SK_B, p.token, QUERY_SECRET):
        assert secret not in err, secret


def test_json_lines(proxy_factory, mock_factory, ordered):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory(upstreams=[(SK_A, a.endpoint()), (SK_B, b.endpoint())],
                      scripts_dir=ordered, args=["-log-format", "json"])
    ua, ub = traffic(p, a, b)
    lines = wait_until(lambda: len(v1(json_lines(p))) >= 4 and json_lines(p),
                       message="4 JSON access lines")
    check_lines(p, lines, ua, ub)
    p.stop()
    logs = [json.loads(l) for l in p.stderr_text().splitlines() if '"level"' in l]
    assert any("SIGTERM" in o["message"] for o in logs), logs
    assert len(v1(json_lines(p))) == 4


def test_written_at_sigterm(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())])
    for i in range(20):
        assert post(p, "gpt-%d" % i).status == 200
    p.stop()  # SIGTERM: what is buffered is written before exit
    assert sorted(l["model"] for l in v1(text_lines(p))) == \
        sorted("gpt-%d" % i for i in range(20))


def test_turned_off(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK_A, mock.endpoint())], config={"access_log": "0"})
    assert post(p, "gpt-quiet").status == 200
    p.set_config("access_log", "1")  # applies without a restart
    assert post(p, "gpt-loud").status == 200
    wait_until(lambda: [l for l in text_lines(p) if l["model"] == "gpt-loud"],
               message="the line after access_log=1")
    p.set_config("access_log", "0")
    assert post(p, "gpt-quiet-again").status == 200
    p.stop()
    assert [l["model"] for l in v1(text_lines(p))] == ["gpt-loud"]


def test_bad_log_format_is_a_usage_error(binary, tmp_path):
    import subprocess
    r = subprocess.run([binary, "-log-format", "xml", "-database", str(tmp_path / "db")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "-log-format" in r.stderr
