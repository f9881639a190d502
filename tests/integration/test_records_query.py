"""GET /admin/request_records filters (issue 10, item 8): model, status, upstream_id, since,
until besides limit/offset, each validated (a bad value is a 400 JSON error naming it, never
SQL: the values are bound), newest first as before; the indexes behind them exist after the
start, and an older file gets them at its first start (logged)."""

import json
import sqlite3
import urllib.parse

import routetest
from routetest import assert_error_shape

MODELS = ("gpt-a", "gpt-b", "/v1/audio/transcriptions")


def seed_rows(db):
    """48 rows: 2024-05-01 00:00Z + i hours, models cycling, status 200 except every 5th (500)
    and every 7th (429), upstream 1 or 2 (0 for every 11th), written with a +08:00 offset."""
    c = sqlite3.connect(str(db))
    rows = []
    for i in range(48):
        hour = i  # hours after 2024-05-01T00:00Z
        day, h = divmod(hour + 8, 24)  # as local +08:00 text
        at = "2024-05-%02d %02d:00:00.25+08:00" % (1 + day, h)
        status = 500 if i % 5 == 0 else 429 if i % 7 == 0 else 200
        upstream = 0 if i % 11 == 0 else 1 + i % 2
        rows.append(dict(id="rec-%02d" % i, at=at, hour=hour, model=MODELS[i % 3],
                         status=status, upstream=upstream))
        c.execute("INSERT INTO records (id, created_at, ip, body, response, elapsed_time, model,"
                  " status, upstream_id, error) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  (rows[-1]["id"], at, "127.0.0.1", "{}", "r%d" % i, 0, rows[-1]["model"],
                   status, upstream, ""))
    c.commit()
    c.close()
    return rows


def newest_first(rows):
    return [r["id"] for r in sorted(rows, key=lambda r: r["hour"], reverse=True)]


def get(p, query):
    reply = p.request("GET", "/admin/request_records" + ("?" + query if query else ""))
    return reply


def ids(p, query):
    reply = get(p, query)
    assert reply.status == 200, reply
    return [r["ID"] for r in reply.json()]


def start(proxy_factory):
    p = proxy_factory(start=False)
    rows = seed_rows(p.db_path)
    p.start()
    return p, rows


def test_each_filter(proxy_factory):
    p, rows = start(proxy_factory)
    assert ids(p, "") == newest_first(rows)
    for m in MODELS:
        q = "model=" + urllib.parse.quote(m, safe="")
        assert ids(p, q) == newest_first([r for r in rows if r["model"] == m]), m
    assert ids(p, "model=/v1/audio/transcriptions") == newest_first(
        [r for r in rows if r["model"] == MODELS[2]])
    for st in (200, 429, 500, 404):
        assert ids(p, "status=%d" % st) == newest_first([r for r in rows if r["status"] == st])
    for up in (0, 1, 2, 3):
        assert ids(p, "upstream_id=%d" % up) == newest_first(
            [r for r in rows if r["upstream"] == up])
    # since is inclusive, until exclusive; both compare instants (the rows say +08:00).
    assert ids(p, "since=2024-05-02") == newest_first([r for r in rows if r["hour"] >= 24])
    assert ids(p, "until=2024-05-02") == newest_first([r for r in rows if r["hour"] < 24])
    assert ids(p, "since=2024-05-01T10:00:00.25Z") == newest_first(
        [r for r in rows if r["hour"] >= 10])
    # The offset's '+' percent-encoded, or raw (not read as a space), or as the database text.
    for since in ("2024-05-01T18:00:00%2B08:00", "2024-05-01T18:00:00+08:00",
                  "2024-05-01%2018:00:00%2B08:00", "2024-05-01+18:00:00Z"):
        want = [r for r in rows if r["hour"] >= (10 if "08:00" in since else 18)]
        assert ids(p, "since=" + since) == newest_first(want), since


def test_combinations_and_paging(proxy_factory):
    p, rows = start(proxy_factory)
    want = newest_first([r for r in rows if r["model"] == "gpt-a" and r["status"] == 200
                         and 6 <= r["hour"] < 40])
    q = "model=gpt-a&status=200&since=2024-05-01T06:00:00Z&until=2024-05-02T16:00:00Z"
    assert ids(p, q) == want and len(want) > 4
    assert ids(p, q + "&limit=2") == want[:2]
    assert ids(p, q + "&limit=2&offset=2") == want[2:4]
    assert ids(p, q + "&offset=%d" % len(want)) == []
    assert ids(p, q + "&limit=0") == []
    assert ids(p, "upstream_id=1&status=500") == newest_first(
        [r for r in rows if r["upstream"] == 1 and r["status"] == 500])
    # An empty value is no filter, as for limit; unknown parameters are ignored.
    assert ids(p, "model=&status=&since=&foo=bar") == newest_first(rows)
    # Later wins, as it did for limit.
    assert ids(p, "model=gpt-b&model=gpt-a&limit=3") == newest_first(
        [r for r in rows if r["model"] == "gpt-a"])[:3]
    # since after until: nothing, not an error.
    assert ids(p, "since=2024-05-03&until=2024-05-02") == []


def test_bad_values_are_400(proxy_factory):
    p, rows = start(proxy_factory)
    bad = {
        "status=abc": "status", "status=1000": "status", "status=-1": "status",
        "status=2%2000": "status", "upstream_id=-1": "upstream_id", "upstream_id=1.5": "upstream_id",
        "upstream_id=99999999999999999999": "upstream_id", "since=yesterday": "since",
        "since=2024-13-01": "since", "until=2024-05-01T25:00:00Z": "until",
        "until=1714521600": "until", "model=%zz": "model", "model=a%00b": "model",
        "model=" + "m" * 300: "model", "limit=x": "limit", "offset=-5": "offset",
    }
    for q, name in bad.items():
        reply = get(p, q)
        msg = assert_error_shape(reply, 400, where=q)
        assert msg.startswith("invalid %s" % name), (q, msg)
    assert ids(p, "") == newest_first(rows)


def test_values_are_bound_not_spliced(proxy_factory):
    p, rows = start(proxy_factory)
    for attack in ("' OR 1=1 --", "gpt-a' OR '1'='1", "gpt-a\"; DROP TABLE records; --",
                   "x') UNION SELECT * FROM config_kvs --"):
        assert ids(p, "model=" + urllib.parse.quote(attack, safe="")) == []
    assert len(routetest.db_query(p.db_path, "SELECT id FROM records")) == 48
    assert ids(p, "") == newest_first(rows)


def test_recorded_traffic_is_filtered(proxy_factory, mock):
    """Rows the proxy wrote itself, with the filters on their real values."""
    p = proxy_factory(upstreams=[("sk-up", mock.endpoint())])
    for m in ("gpt-x", "gpt-y", "gpt-x"):
        assert p.chat("hi", model=m).status == 200
    p.wait_for_records(3)
    got = get(p, "model=gpt-x&status=200&upstream_id=1&since=2000-01-01").json()
    assert [r["Model"] for r in got] == ["gpt-x", "gpt-x"]
    assert all(r["Status"] == 200 and r["UpstreamID"] == 1 for r in got)
    assert got[0]["CreatedAt"] >= got[1]["CreatedAt"]
    assert get(p, "until=2000-01-01").json() == []


def query_plan(db, where, args=()):
    c = sqlite3.connect(str(db))
    plan = " ".join(row[3] for row in c.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM records WHERE %s "
        "ORDER BY julianday(created_at) DESC, rowid DESC LIMIT 100" % where, args))
    c.close()
    return plan


def index_names(db):
    return {r["name"] for r in routetest.db_query(
        db, "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='records'")}


def test_indexes_exist_and_an_old_file_gets_them_at_start(proxy_factory, tmp_path):
    db = tmp_path / "go.sqlite"
    routetest.make_go_database(db, records=[{"id": "go-%d" % i, "body": json.dumps({"i": i})}
                                            for i in range(50)])
    p = proxy_factory(db_path=db)
    names = index_names(db)
    assert {"idx_records_created_at", "idx_records_model", "idx_records_failed",
            "idx_records_upstream_id"} <= names
    # The -set that seeded the token opened the file first: it built them (and said so).
    assert len(get(p, "").json()) == 50
    plan = query_plan(db, "model=?", ("m",))
    assert "idx_records_model" in plan and "TEMP B-TREE" not in plan, plan


def test_failures_have_a_partial_index_and_the_old_full_one_goes(proxy_factory):
    """Only rows other than 200 go into the status index (one descent less per INSERT for
    nearly every row); a 200 pages through the time index. An earlier version's full status
    index is dropped at the start."""
    p, rows = start(proxy_factory)
    p.stop()
    c = sqlite3.connect(str(p.db_path))
    c.execute("CREATE INDEX idx_records_status ON records(status, julianday(created_at))")
    c.commit()
    c.close()
    p.start()
    names = index_names(p.db_path)
    assert "idx_records_status" not in names and "idx_records_failed" in names, names
    sql = routetest.db_query(p.db_path, "SELECT sql FROM sqlite_master WHERE "
                             "name='idx_records_failed'")[0]["sql"]
    assert sql.endswith("WHERE `status`<>200"), sql
    indexed = routetest.db_query(p.db_path, "SELECT count(*) AS n FROM records "
                                 "INDEXED BY idx_records_failed WHERE status<>200")[0]["n"]
    assert indexed == len([r for r in rows if r["status"] != 200])
    # The admin API's fragments, as sync.c writes them: a failure status names the partial
    # index's condition, so SQLite can use it; a 200 walks the time index, in order.
    plan = query_plan(p.db_path, "`status`=? AND `status`<>200", (500,))
    assert "idx_records_failed" in plan and "TEMP B-TREE" not in plan, plan
    plan = query_plan(p.db_path, "`status`=?", (200,))
    assert "idx_records_created_at" in plan and "TEMP B-TREE" not in plan, plan
    for st in (200, 429, 500):
        assert ids(p, "status=%d" % st) == newest_first([r for r in rows if r["status"] == st])
    assert ids(p, "status=429&upstream_id=1") == newest_first(
        [r for r in rows if r["status"] == 429 and r["upstream"] == 1])


def test_first_open_of_a_large_old_file_logs_the_index_build(binary, tmp_path):
    db = tmp_path / "go.sqlite"
    routetest.make_go_database(db, records=[{"id": "go-%d" % i} for i in range(10)])
    import subprocess
    r = subprocess.run([binary, "-database", str(db), "-list"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "store: built 4 index(es) of records in" in r.stderr, r.stderr
    r = subprocess.run([binary, "-database", str(db), "-list"], capture_output=True, text=True,
                       timeout=60)
    assert "index(es)" not in r.stderr
