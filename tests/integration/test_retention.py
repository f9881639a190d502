"""records_retention_days (issue 10, item 8): the server's writer thread deletes the records
older than that many days, in batches of at most 1,000 rows (one statement each, logged per
pass with its batch count), and keeps the newer ones; 0 (the default) keeps every row; the
one-shot commands never delete."""

import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

import routetest

PASS_LINE = "store: records_retention_days=%d: deleted %d record(s) in %d batch(es) of at most 1000"


def go_text(dt):
    """The store's created_at text: '2023-08-10 13:32:51.123456789+08:00'."""
    off = dt.utcoffset()
    sign = "-" if off < timedelta(0) else "+"
    mins = abs(int(off.total_seconds())) // 60
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + "%06d123" % dt.microsecond + \
        "%s%02d:%02d" % (sign, mins // 60, mins % 60)


def insert(db, prefix, ages, tz=timezone(timedelta(hours=8))):
    """One row per age (a timedelta before now); returns their ids."""
    now = datetime.now(tz)
    c = sqlite3.connect(str(db), timeout=10)
    rows = [("%s-%05d" % (prefix, i), go_text(now - age)) for i, age in enumerate(ages)]
    c.executemany("INSERT INTO records (id, created_at, ip, body, response, elapsed_time, model,"
                  " status, upstream_id) VALUES (?, ?, '127.0.0.1', '{}', 'x', 0, 'm', 200, 1)",
                  rows)
    c.commit()
    c.close()
    return [r[0] for r in rows]


def record_ids(db):
    return {r["id"] for r in routetest.db_query(db, "SELECT id FROM records")}


def seeded(proxy_factory, config):
    p = proxy_factory(config=config, start=False)
    old = insert(p.db_path, "old", [timedelta(days=10, minutes=i) for i in range(2450)])
    old += insert(p.db_path, "old-utc", [timedelta(days=1, hours=1)] * 50, tz=timezone.utc)
    old += insert(p.db_path, "old-west", [timedelta(days=3)], tz=timezone(timedelta(hours=-7)))
    new = insert(p.db_path, "new", [timedelta(hours=23), timedelta(hours=1), timedelta(0)])
    c = sqlite3.connect(str(p.db_path))
    c.execute("INSERT INTO records (id, created_at) VALUES ('no-time', NULL), "
              "('bad-time', 'yesterday')")
    c.commit()
    c.close()
    return p, old, new + ["no-time", "bad-time"]


@pytest.mark.deadline(60)
def test_deletes_only_old_rows_in_batches(proxy_factory):
    p, old, keep = seeded(proxy_factory, {"records_retention_days": "1"})
    p.start()
    line = PASS_LINE % (1, len(old), 3)
    routetest.wait_until(lambda: line in p.stderr_text(), timeout=30,
                         message="the retention pass's log line")
    assert record_ids(p.db_path) == set(keep)
    # Only one pass so far, and traffic is recorded as before.
    assert p.stderr_text().count("records_retention_days=1: deleted") == 1
    p.chat("hi")
    p.wait_for_records(len(keep) + 1)


@pytest.mark.deadline(90)
def test_later_passes_delete_rows_that_became_old(proxy_factory):
    p, old, keep = seeded(proxy_factory, {"records_retention_days": "2"})
    p.start()
    routetest.wait_until(lambda: "records_retention_days=2: deleted" in p.stderr_text(),
                         timeout=30, message="the first pass")
    # 10 days and 3 days old: gone; 1 day 1 hour old: kept at 2 days.
    kept = record_ids(p.db_path)
    assert kept == set(keep) | {i for i in old if i.startswith("old-utc")}
    late = insert(p.db_path, "late", [timedelta(days=5)] * 5)
    # A pass at most every 20 s: the next one finds them.
    routetest.wait_until(lambda: not (set(late) & record_ids(p.db_path)), timeout=45,
                         message="the next pass")
    assert record_ids(p.db_path) == kept


def test_zero_keeps_everything_and_turning_it_on_applies(proxy_factory):
    p, old, keep = seeded(proxy_factory, {})
    p.start()
    # The writer polled (it saw this change), so it had its chance to run retention: none.
    p.set_config("policy", "main")
    p.chat("hi")
    p.wait_for_records(len(old) + len(keep) + 1)
    assert "deleted" not in p.stderr_text()
    p.set_config("records_retention_days", "1")
    p.chat("hi")  # config applies on the next request (a 500: no upstream; recorded)
    routetest.wait_until(lambda: not (set(old) & record_ids(p.db_path)), timeout=30,
                         message="the old rows to go")
    assert set(keep) <= record_ids(p.db_path)


def test_one_shot_commands_never_delete(proxy_factory):
    p, old, keep = seeded(proxy_factory, {"records_retention_days": "1"})
    for args in (["-list"], ["-set", "policy=main"], ["-export", "-"], ["-check"]):
        r = p.oneshot(*args)
        assert r.returncode == 0, r.stderr
    assert record_ids(p.db_path) == set(old) | set(keep)


def test_bad_value_is_refused(proxy_factory, tmp_path):
    p = proxy_factory(start=False)
    for v in ("-1", "1.5", "abc", "36501"):
        r = p.oneshot("-set", "records_retention_days=%s" % v)
        assert r.returncode == 1 and "records_retention_days" in r.stderr, (v, r.stderr)
