"""The admin API (/admin/*) and /metrics of the real binary: the Bearer check (also under
-noauth), upstream CRUD with the Go program's JSON shapes and soft delete, request records,
reload, and the Prometheus exposition. Every test has its own database under tmp_path."""

import re

import pytest

from mock_upstream import Status
import routetest
from routetest import assert_cors, assert_error_shape, closed_port, db_query, wait_until

SK = "sk-admin-upstream-secret-1"
SK2 = "sk-admin-upstream-secret-2"

RFC3339NANO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

UPSTREAM_FIELDS = ["ID", "CreatedAt", "UpdatedAt", "DeletedAt", "SK", "Endpoint", "SuccessCount",
                   "FailedCount", "LastCallSuccessTime"]
RECORD_FIELDS = ["ID", "CreatedAt", "IP", "Body", "Response", "ElapsedTime", "Model", "Status",
                 "UpstreamID", "UpstreamEndpoint", "PromptTokens", "CompletionTokens",
                 "TotalTokens", "ResponseTime", "UserAgent", "Error", "CachedTokens",
                 "ReasoningTokens"]

START_MSG = "authorization header should start with 'Bearer'"
WRONG_MSG = "wrong authorization header"


def admin(p, method, path, body=None, token=None, auth=True, headers=None):
    hs = dict(headers or {})
    if auth:
        hs.setdefault("Authorization", "Bearer %s" % (token or p.token))
    return p.request(method, path, body, headers=hs, auth=False)


def ok_json(reply, status=200):
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    return reply.json()


def list_upstreams(p):
    return ok_json(admin(p, "GET", "/admin/upstreams"))


def add_upstream(p, sk, endpoint):
    j = ok_json(admin(p, "POST", "/admin/upstreams", {"SK": sk, "Endpoint": endpoint}))
    assert j["message"] == "success" and isinstance(j["ID"], int), j
    return j["ID"]


# --------------------------------------------------------------------------- authorization

def test_login_and_bearer_rules(proxy_factory):
    p = proxy_factory(config={"authorization": "tok-a, tok-b"}, token="tok-a")
    for header in ("Bearer tok-a", "Bearer tok-b", "Bearer   tok-b  ", "Bearertok-a"):
        r = admin(p, "POST", "/admin/login", headers={"Authorization": header})
        assert ok_json(r) == {"message": "success"}, header
        assert_cors(r, header)

    r = admin(p, "POST", "/admin/login", auth=False)
    assert assert_error_shape(r, 403) == START_MSG
    assert_cors(r, "403")
    # The same refusal as on /v1, type included.
    v1 = p.request("POST", "/v1/chat/completions", {"model": "m"}, auth=False)
    assert assert_error_shape(v1, 403) == START_MSG
    assert r.json()["error"]["type"] == v1.json()["error"]["type"]
    for header in ("bearer tok-a", "Basic tok-a", "tok-a", "BEARER tok-a"):
        r = admin(p, "POST", "/admin/login", headers={"Authorization": header})
        assert assert_error_shape(r, 403, header) == START_MSG, header
    for header in ("Bearer wrong", "Bearer", "Bearer    ", "Bearer tok-a,tok-b", "Bearer tok",
                   "Bearer tok-a tok-b", "Bearer TOK-A", "Bearer tok-a-"):
        r = admin(p, "POST", "/admin/login", headers={"Authorization": header})
        assert assert_error_shape(r, 403, header) == WRONG_MSG, header

    # Every admin route checks, before it says whether the route exists.
    for method, path in (("GET", "/admin/upstreams"), ("POST", "/admin/upstreams"),
                         ("PUT", "/admin/upstreams/1"), ("DELETE", "/admin/upstreams/1"),
                         ("GET", "/admin/request_records"), ("POST", "/admin/reload"),
                         ("GET", "/admin/nope")):
        r = admin(p, method, path, {"SK": "x", "Endpoint": "y"}, token="wrong")
        assert assert_error_shape(r, 403, path) == WRONG_MSG
    assert list_upstreams(p) == []


def test_token_change_applies_to_the_next_call(proxy_factory):
    p = proxy_factory()
    assert admin(p, "POST", "/admin/login").status == 200
    p.set_config("authorization", "rotated")
    assert admin(p, "POST", "/admin/login").status == 403
    assert admin(p, "POST", "/admin/login", token="rotated").status == 200


def test_admin_stays_protected_with_noauth(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())], args=["-noauth"])
    # -noauth is in effect for /v1 ...
    assert p.request("POST", "/v1/chat/completions", {"model": "m"}, auth=False).status == 200
    # ... and not for /admin.
    r = admin(p, "POST", "/admin/login", auth=False)
    assert assert_error_shape(r, 403) == START_MSG
    r = admin(p, "GET", "/admin/upstreams", token="wrong")
    assert assert_error_shape(r, 403) == WRONG_MSG
    assert ok_json(admin(p, "POST", "/admin/login")) == {"message": "success"}


def test_unknown_path_and_wrong_method(proxy_factory):
    p = proxy_factory()
    for path in ("/admin", "/admin/", "/admin/nope", "/admin/upstreams/1/x", "/admin/loginx"):
        r = admin(p, "GET", path)
        assert_error_shape(r, 404, path)
        assert_cors(r, path)
    for method, path, allow in (("GET", "/admin/login", "POST"),
                                ("DELETE", "/admin/upstreams", "GET, POST"),
                                ("GET", "/admin/upstreams/1", "PUT, DELETE"),
                                ("POST", "/admin/request_records", "GET"),
                                ("GET", "/admin/reload", "POST")):
        r = admin(p, method, path)
        assert_error_shape(r, 405, "%s %s" % (method, path))
        assert r.headers.get("allow") == allow
        assert_cors(r, path)


def test_admin_calls_write_no_records(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    admin(p, "POST", "/admin/login")
    admin(p, "GET", "/admin/upstreams")
    admin(p, "GET", "/admin/request_records")
    admin(p, "GET", "/admin/nope")
    admin(p, "POST", "/admin/login", token="wrong")
    p.request("GET", "/metrics")
    # One /v1 exchange as a barrier: the writer keeps order, so earlier rows would show.
    assert p.chat(model="barrier").status == 200
    rows = p.wait_for_records(1)
    assert [r["model"] for r in rows] == ["barrier"]


# --------------------------------------------------------------------------- upstreams

def test_list_upstreams_fields(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    ups = list_upstreams(p)
    assert len(ups) == 1
    u = ups[0]
    assert list(u) == UPSTREAM_FIELDS  # the Go struct's order
    assert isinstance(u["ID"], int) and u["ID"] >= 1
    assert RFC3339NANO_RE.match(u["CreatedAt"]) and RFC3339NANO_RE.match(u["UpdatedAt"]), u
    assert u["DeletedAt"] is None
    assert u["SK"] == SK and u["Endpoint"] == mock.endpoint()
    assert u["SuccessCount"] == 0 and u["FailedCount"] == 0
    assert u["LastCallSuccessTime"] is None  # never called

    assert p.chat().status == 200
    u = wait_until(lambda: [x for x in list_upstreams(p) if x["SuccessCount"] == 1],
                   message="SuccessCount 1")[0]
    assert RFC3339NANO_RE.match(u["LastCallSuccessTime"]), u
    assert u["FailedCount"] == 0


def test_add_upstream_and_use_it(proxy_factory, mock):
    p = proxy_factory()  # no upstream yet
    r = p.chat()
    assert r.status == 500, r  # pick_upstream: none

    uid = add_upstream(p, SK, mock.endpoint())
    rows = p.upstream_rows()
    assert [(r["id"], r["sk"], r["endpoint"], r["deleted_at"]) for r in rows] == [
        (uid, SK, mock.endpoint(), None)]
    assert rows[0]["last_call_success_time"] is None
    ups = list_upstreams(p)
    assert [(u["ID"], u["SK"], u["Endpoint"]) for u in ups] == [(uid, SK, mock.endpoint())]

    # The proxy sees the new upstream on the next request, with no restart.
    r = p.chat()
    assert r.status == 200, r
    assert mock.last.header("authorization") == "Bearer %s" % SK

    # Go's encoding/json binds keys case-insensitively.
    j = ok_json(admin(p, "POST", "/admin/upstreams", {"sk": SK2, "endpoint": "http://b/v1"}))
    assert j["ID"] != uid
    assert {u["SK"] for u in list_upstreams(p)} == {SK, SK2}

    # Keys never reach the log.
    err = p.stderr_text()
    assert SK not in err and SK2 not in err and p.token not in err


@pytest.mark.parametrize("body", [
    b"{", b"", b"not json", b"[]", b"null", b'"SK"', b'{"SK": 1, "Endpoint": "http://a/v1"}',
    b'{"SK": "sk-x", "Endpoint": ["http://a/v1"]}', b'{"SK": "", "Endpoint": "http://a/v1"}',
    b'{"SK": "sk-x", "Endpoint": ""}', b'{"SK": "sk-x"}', b'{"Endpoint": "http://a/v1"}',
    b'{"SK": null, "Endpoint": "http://a/v1"}', b"{}",
])
def test_add_upstream_rejects_bad_bodies(proxy_factory, body):
    p = proxy_factory()
    r = admin(p, "POST", "/admin/upstreams", body,
              headers={"Content-Type": "application/json"})
    assert_error_shape(r, 400, repr(body))
    assert_cors(r)
    assert list_upstreams(p) == []


def test_add_duplicate_is_409(proxy_factory):
    p = proxy_factory()
    add_upstream(p, SK, "http://a/v1")
    r = admin(p, "POST", "/admin/upstreams", {"SK": SK, "Endpoint": "http://a/v1"})
    assert_error_shape(r, 409)
    # Same key elsewhere, or another key at the same endpoint: different upstreams.
    add_upstream(p, SK, "http://b/v1")
    add_upstream(p, SK2, "http://a/v1")
    assert len(list_upstreams(p)) == 3


def test_update_upstream(proxy_factory):
    p = proxy_factory()
    uid = add_upstream(p, SK, "http://a/v1")
    other = add_upstream(p, SK2, "http://b/v1")
    before = {u["ID"]: u for u in list_upstreams(p)}[uid]

    # Only SK named: Endpoint kept.
    assert ok_json(admin(p, "PUT", "/admin/upstreams/%d" % uid, {"SK": "sk-new"})) == {
        "message": "success"}
    u = {u["ID"]: u for u in list_upstreams(p)}[uid]
    assert (u["SK"], u["Endpoint"]) == ("sk-new", "http://a/v1")
    assert u["CreatedAt"] == before["CreatedAt"]

    # Only Endpoint named: SK kept. Empty or null fields are kept too.
    for body in ({"Endpoint": "http://c/v1"}, {"SK": "", "Endpoint": None}, {}):
        assert admin(p, "PUT", "/admin/upstreams/%d" % uid, body).status == 200, body
        u = {u["ID"]: u for u in list_upstreams(p)}[uid]
        assert (u["SK"], u["Endpoint"]) == ("sk-new", "http://c/v1"), body

    # Both, lower-case keys (Go binds them).
    assert admin(p, "PUT", "/admin/upstreams/%d" % uid,
                 {"sk": SK, "endpoint": "http://a/v1"}).status == 200
    row = [r for r in p.upstream_rows() if r["id"] == uid][0]
    assert (row["sk"], row["endpoint"]) == (SK, "http://a/v1")

    # The other upstream's pair is taken.
    r = admin(p, "PUT", "/admin/upstreams/%d" % uid, {"SK": SK2, "Endpoint": "http://b/v1"})
    assert_error_shape(r, 409)
    assert {(u["ID"], u["SK"]) for u in list_upstreams(p)} == {(uid, SK), (other, SK2)}

    assert_error_shape(admin(p, "PUT", "/admin/upstreams/999", {"SK": "x"}), 404)
    for bad in ("abc", "0", "-1", "1x", "99999999999999999999999"):
        assert_error_shape(admin(p, "PUT", "/admin/upstreams/%s" % bad, {"SK": "x"}), 400, bad)
    for body in (b"{", b"[1]", b'{"SK": 5}'):
        assert_error_shape(admin(p, "PUT", "/admin/upstreams/%d" % uid, body), 400, repr(body))

    # A deleted upstream cannot be updated.
    assert admin(p, "DELETE", "/admin/upstreams/%d" % other).status == 200
    assert_error_shape(admin(p, "PUT", "/admin/upstreams/%d" % other, {"SK": "x"}), 404)


def test_soft_delete_and_revive(proxy_factory):
    p = proxy_factory()
    uid = add_upstream(p, SK, "http://a/v1")
    keep = add_upstream(p, SK2, "http://a/v1")

    r = admin(p, "DELETE", "/admin/upstreams/%d" % uid)
    assert ok_json(r) == {"message": "success"}
    assert [u["ID"] for u in list_upstreams(p)] == [keep]
    row = [r for r in p.upstream_rows() if r["id"] == uid]
    assert len(row) == 1 and row[0]["deleted_at"] is not None, row  # soft: still there

    assert_error_shape(admin(p, "DELETE", "/admin/upstreams/%d" % uid), 404)  # already gone
    assert_error_shape(admin(p, "DELETE", "/admin/upstreams/999"), 404)
    assert_error_shape(admin(p, "DELETE", "/admin/upstreams/x"), 400)

    # Adding the pair again revives the row.
    assert add_upstream(p, SK, "http://a/v1") == uid
    row = [r for r in p.upstream_rows() if r["id"] == uid][0]
    assert row["deleted_at"] is None
    assert sorted(u["ID"] for u in list_upstreams(p)) == sorted([uid, keep])


def test_deleted_upstream_is_not_used(proxy_factory, mock_factory):
    a, b = mock_factory("a"), mock_factory("b")
    p = proxy_factory(upstreams=[(SK, a.endpoint()), (SK2, b.endpoint())])
    ida = [u["ID"] for u in list_upstreams(p) if u["Endpoint"] == a.endpoint()][0]
    assert admin(p, "DELETE", "/admin/upstreams/%d" % ida).status == 200
    for _ in range(4):
        assert p.chat().status == 200
    assert a.requests == [] and len(b.requests) == 4


# --------------------------------------------------------------------------- records

def test_request_records(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    uid = list_upstreams(p)[0]["ID"]
    for i in range(3):
        assert p.chat(content="q%d" % i, model="m%d" % i,
                      headers={"User-Agent": "admin-test/%d" % i}).status == 200
    p.wait_for_records(3)

    recs = ok_json(admin(p, "GET", "/admin/request_records"))
    assert [r["Model"] for r in recs] == ["m2", "m1", "m0"]  # newest first
    r = recs[0]
    assert list(r) == RECORD_FIELDS
    assert UUID_RE.match(r["ID"]) and RFC3339NANO_RE.match(r["CreatedAt"]), r
    assert r["IP"] == "127.0.0.1"
    assert '"q2"' in r["Body"] and r["Response"] == "Hello from the mock."
    assert isinstance(r["ElapsedTime"], int) and r["ElapsedTime"] > 0
    assert isinstance(r["ResponseTime"], int) and 0 <= r["ResponseTime"] <= r["ElapsedTime"]
    assert (r["Status"], r["UpstreamID"], r["UpstreamEndpoint"]) == (200, uid, mock.endpoint())
    assert (r["PromptTokens"], r["CompletionTokens"], r["TotalTokens"]) == (5, 7, 12)
    assert r["UserAgent"] == "admin-test/2" and r["Error"] == ""
    # The same row as stored.
    row = db_query(p.db_path, "SELECT * FROM records WHERE id = ?", (r["ID"],))[0]
    assert row["elapsed_time"] == r["ElapsedTime"] and row["model"] == "m2"

    def models(query):
        return [x["Model"] for x in ok_json(admin(p, "GET", "/admin/request_records" + query))]

    assert models("?limit=2") == ["m2", "m1"]
    assert models("?limit=1&offset=1") == ["m1"]
    assert models("?offset=2") == ["m0"]
    assert models("?offset=10") == []
    assert models("?limit=0") == []
    assert models("?limit=5000") == ["m2", "m1", "m0"]  # capped, not refused
    assert models("?limit=&offset=") == ["m2", "m1", "m0"]
    assert models("?other=1") == ["m2", "m1", "m0"]
    for q in ("?limit=abc", "?limit=-1", "?offset=x", "?offset=-5", "?limit=1.5", "?limit=+3"):
        assert_error_shape(admin(p, "GET", "/admin/request_records" + q), 400, q)


def test_request_records_of_a_failure(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    mock.enqueue(Status(500))
    assert p.chat(model="fails").status == 502
    p.wait_for_records(1)
    r = ok_json(admin(p, "GET", "/admin/request_records"))[0]
    assert r["Model"] == "fails" and r["Status"] == 502
    # Named by upstream id and host (SPEC "Details"), never by key.
    assert routetest.upstream_label(mock.endpoint(), 1) in r["Error"], r["Error"]
    assert SK not in r["Error"]


def test_request_records_with_bytes_that_are_not_text(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    body = b'{"model": "bin", "x": "\xff\xfe"}\x01\x1f"\\'
    assert p.request("POST", "/v1/chat/completions", body).status == 200
    # (Python's sqlite3 cannot read this row's text, so ask the API until it is there.)
    r = wait_until(lambda: ok_json(admin(p, "GET", "/admin/request_records")),
                   message="one record")[0]  # the list stays valid JSON
    assert r["Body"].startswith('{"model": "bin"') and "\ufffd" in r["Body"]
    assert r["Body"].endswith('\x01\x1f"\\')


def test_request_records_empty(proxy_factory):
    p = proxy_factory()
    r = admin(p, "GET", "/admin/request_records")
    assert ok_json(r) == [] and r.body.strip() == b"[]"


# --------------------------------------------------------------------------- reload

def test_reload(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    assert ok_json(admin(p, "POST", "/admin/reload")) == {"message": "success"}
    (p.scripts_dir / "route.lua").write_text("return {  -- broken\n")
    r = admin(p, "POST", "/admin/reload")
    assert "route.lua" in assert_error_shape(r, 400)
    assert p.chat().status == 200  # the running scripts stay


# --------------------------------------------------------------------------- /metrics

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def parse_metrics(text):
    """{(name, ((label, value), ...) sorted): float}; checks each line's syntax."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line == "" or line.startswith("# HELP ") or line.startswith("# TYPE "), line
            continue
        m = SAMPLE_RE.match(line)
        assert m, "bad sample line %r" % line
        labels = ()
        if m.group(2):
            pairs = LABEL_RE.findall(m.group(2))
            assert ",".join('%s="%s"' % kv for kv in pairs) == m.group(2), line
            labels = tuple(sorted((k, v.replace('\\"', '"').replace("\\n", "\n")
                                   .replace("\\\\", "\\")) for k, v in pairs))
        key = (m.group(1), labels)
        assert key not in out, "duplicate series %r" % (key,)
        out[key] = float(m.group(3))
    return out


def get_metrics(p, **kw):
    r = admin(p, "GET", "/metrics", **kw)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
    return r.body.decode(), parse_metrics(r.body.decode())


def test_metrics_needs_the_admin_token(proxy_factory):
    p = proxy_factory()
    r = admin(p, "GET", "/metrics", auth=False)
    assert assert_error_shape(r, 403) == START_MSG
    r = admin(p, "GET", "/metrics", token="wrong")
    assert assert_error_shape(r, 403) == WRONG_MSG
    text, _ = get_metrics(p)
    # Names as issue 10 item 4 gave them (namespace openai_route_; test_metrics.py has more).
    for name, kind in (("openai_route_requests_total", "counter"),
                       ("openai_route_request_duration_seconds", "histogram"),
                       ("openai_route_first_byte_seconds", "histogram"),
                       ("openai_route_tokens_total", "counter"),
                       ("openai_route_upstream_attempts_total", "counter"),
                       ("openai_route_active_connections", "gauge"),
                       ("openai_route_active_requests", "gauge")):
        assert "# TYPE %s %s\n" % (name, kind) in text, name

    # metrics_public is read per request.
    p.set_config("metrics_public", "1")
    get_metrics(p, auth=False)
    p.set_config("metrics_public", "0")
    assert admin(p, "GET", "/metrics", auth=False).status == 403


def test_metrics_public_from_the_start(proxy_factory):
    p = proxy_factory(config={"metrics_public": "1"})
    get_metrics(p, auth=False)
    get_metrics(p, token="wrong")
    assert admin(p, "POST", "/admin/login", auth=False).status == 403  # admin is not public


def test_metrics_count_proxied_requests(proxy_factory, mock):
    p = proxy_factory(upstreams=[(SK, mock.endpoint())])
    ep = mock.endpoint()
    dead = "http://127.0.0.1:%d/v1" % closed_port()
    assert p.chat().status == 200
    mock_id = [u["ID"] for u in list_upstreams(p) if u["Endpoint"] == ep][0]
    up = str(mock_id)  # upstreams are labelled by id, never by URL or key

    def counted():
        _, m = get_metrics(p)
        key = ("openai_route_requests_total",
               (("model", "gpt-test"), ("status", "200"), ("upstream", up)))
        return m if m.get(key) == 1 else None

    m = wait_until(counted, message="openai_route_requests_total 1")
    tokens = "openai_route_tokens_total"
    assert m[(tokens, (("kind", "prompt"), ("model", "gpt-test"), ("upstream", up)))] == 5
    assert m[(tokens, (("kind", "completion"), ("model", "gpt-test"), ("upstream", up)))] == 7
    for h in ("openai_route_request_duration_seconds", "openai_route_first_byte_seconds"):
        assert m[(h + "_count", ())] == 1
        assert m[(h + "_bucket", (("le", "+Inf"),))] == 1
        assert m[(h + "_sum", ())] > 0
        buckets = sorted((float(dict(k[1])["le"]), v) for k, v in m.items()
                         if k[0] == h + "_bucket")
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert m[("openai_route_active_connections", ())] >= 1
    assert m[("openai_route_active_requests", ())] >= 1  # this very request

    # A failed attempt: only an upstream nobody listens at is left; the client gets a 502.
    add_upstream(p, SK2, dead)
    dead_id = str([u["ID"] for u in list_upstreams(p) if u["Endpoint"] == dead][0])
    assert admin(p, "DELETE", "/admin/upstreams/%d" % mock_id).status == 200
    assert p.chat().status == 502

    attempts = "openai_route_upstream_attempts_total"

    def failed():
        _, m = get_metrics(p)
        fails = {k: v for k, v in m.items()
                 if k[0] == attempts and dict(k[1])["upstream"] == dead_id}
        return m if fails == {(attempts, (("outcome", "connect"), ("upstream", dead_id))): 1} \
            else None

    m = wait_until(failed, message="openai_route_upstream_attempts_total connect 1")
    assert {k: v for k, v in m.items() if k[0] == attempts and dict(k[1])["upstream"] == up} \
        == {(attempts, (("outcome", "success"), ("upstream", up))): 1}
    assert sum(v for k, v in m.items() if k[0] == "openai_route_requests_total"
               and dict(k[1])["status"] == "502") == 1
    assert m[("openai_route_request_duration_seconds_count", ())] == 2

    text, _ = get_metrics(p)
    assert SK not in text and p.token not in text
