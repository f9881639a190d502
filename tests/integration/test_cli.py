"""The command line of the real binary: usage and flag errors, the one-shot commands -add,
-list and -set, and a database written with the Go program's schema. The binary comes from
conftest's `binary` fixture (ROUTE_BINARY); every test has its own database under tmp_path."""

import sqlite3
import subprocess

import pytest

FLAGS = ["-addr", "-database", "-add", "-sk", "-endpoint", "-list", "-noauth", "-scripts",
         "-set", "-ca-file", "-tls-cert", "-tls-key", "-h", "-help"]

# What the Go program (GORM) created: records still without this program's columns.
GO_SCHEMA = """
CREATE TABLE `openai_upstreams` (`id` integer,`created_at` datetime,`updated_at` datetime,
  `deleted_at` datetime,`sk` text,`endpoint` text,`success_count` integer,
  `failed_count` integer,`last_call_success_time` datetime,PRIMARY KEY (`id`));
CREATE UNIQUE INDEX `idx_sk_endpoint` ON `openai_upstreams`(`sk`,`endpoint`);
CREATE INDEX `idx_openai_upstreams_deleted_at` ON `openai_upstreams`(`deleted_at`);
CREATE TABLE `config_kvs` (`id` integer,`created_at` datetime,`updated_at` datetime,
  `deleted_at` datetime,`key` text UNIQUE,`value` text,PRIMARY KEY (`id`));
CREATE INDEX `idx_config_kvs_deleted_at` ON `config_kvs`(`deleted_at`);
CREATE TABLE `records` (`id` uuid,`created_at` datetime,`ip` text,`body` text,
  `response` text,`elapsed_time` integer,PRIMARY KEY (`id`));
"""


def run(binary, *args, db=None):
    argv = [binary] + (["-database", str(db)] if db else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_help_names_every_flag(binary):
    for form in ("-h", "-help", "--help"):
        r = run(binary, form)
        assert r.returncode == 0
        text = r.stdout + r.stderr
        for flag in FLAGS:
            assert flag in text, flag
        assert '(default ":8888")' in text


def test_unknown_flag_is_a_usage_error(binary, tmp_path):
    r = run(binary, "-bogus", db=tmp_path / "db.sqlite")
    assert r.returncode == 2
    assert "flag provided but not defined: -bogus" in r.stderr
    assert "-addr" in r.stderr
    assert not (tmp_path / "db.sqlite").exists()


def test_flag_without_value_is_a_usage_error(binary, tmp_path):
    r = run(binary, "-add", "-sk", db=tmp_path / "db.sqlite")
    assert r.returncode == 2
    assert "flag needs an argument: -sk" in r.stderr


@pytest.mark.parametrize("flag", ["-tls-cert", "-tls-key"])
def test_tls_cert_and_key_go_together(binary, tmp_path, flag):
    r = run(binary, flag, str(tmp_path / "x.pem"), db=tmp_path / "db.sqlite")
    assert r.returncode == 2
    assert "-tls-cert" in r.stderr and "-tls-key" in r.stderr


def test_add_list_set_round_trip(binary, tmp_path):
    db = tmp_path / "db.sqlite"
    r = run(binary, "-add", "-sk", "sk-first-0123456789", db=db)
    assert r.returncode == 0, r.stderr
    assert "sk-first-0123456789" in r.stdout and "https://api.openai.com/v1" in r.stdout

    r = run(binary, "--add", "--sk=sk-second", "-endpoint=http://127.0.0.1:9/v1", db=db)
    assert r.returncode == 0, r.stderr

    r = run(binary, "-set", "policy=round_robin", db=db)
    assert r.returncode == 0, r.stderr
    assert "policy=round_robin" in r.stdout
    r = run(binary, "-set=authorization=tok-a,tok-b", db=db)
    assert r.returncode == 0, r.stderr

    r = run(binary, "-list", db=db)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = lines[0]
    for column in ("SK", "Endpoint", "Success", "Failed", "Last Success Time"):
        assert column in header
    first = next(line for line in lines if "sk-first-0123456789" in line)
    assert "https://api.openai.com/v1" in first and "never" in first
    assert any("sk-second" in line and "http://127.0.0.1:9/v1" in line for line in lines)
    assert "policy=round_robin" in lines
    assert "authorization=tok-a,tok-b" in lines

    # What the Go program reads: the same tables, its text times.
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT sk, endpoint, success_count, failed_count, "
                            "last_call_success_time, deleted_at, created_at "
                            "FROM openai_upstreams ORDER BY id").fetchall()
    assert [row[:6] for row in rows] == [
        ("sk-first-0123456789", "https://api.openai.com/v1", 0, 0, None, None),
        ("sk-second", "http://127.0.0.1:9/v1", 0, 0, None, None)]
    assert rows[0][6][4] == "-" and rows[0][6][10] == " " and rows[0][6][-3] == ":"


def test_add_needs_sk(binary, tmp_path):
    r = run(binary, "-add", db=tmp_path / "db.sqlite")
    assert r.returncode == 1
    assert "-sk" in r.stderr


def test_duplicate_add_fails(binary, tmp_path):
    db = tmp_path / "db.sqlite"
    assert run(binary, "-add", "-sk", "sk-dup", db=db).returncode == 0
    r = run(binary, "-add", "-sk", "sk-dup", db=db)
    assert r.returncode == 1
    assert "exists" in r.stderr
    # The same key at another endpoint is another upstream.
    r = run(binary, "-add", "-sk", "sk-dup", "-endpoint", "https://other/v1", db=db)
    assert r.returncode == 0, r.stderr


def test_set_without_equals_fails(binary, tmp_path):
    r = run(binary, "-set", "policy", db=tmp_path / "db.sqlite")
    assert r.returncode == 1
    assert "key=value" in r.stderr


def test_go_database_is_listed_and_extended(binary, tmp_path):
    db = tmp_path / "db.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(GO_SCHEMA)
        conn.execute("INSERT INTO openai_upstreams VALUES (1, '2023-08-10 13:32:51.123+08:00', "
                     "'2023-08-10 13:32:51.123+08:00', NULL, 'sk-go-never', "
                     "'https://api.openai.com/v1', 4, 2, '0001-01-01 00:00:00+00:00')")
        conn.execute("INSERT INTO openai_upstreams VALUES (2, '2023-08-10 13:32:51+08:00', "
                     "'2023-08-11 09:00:00.5+08:00', NULL, 'sk-go-used', 'https://b/v1', "
                     "7, 0, '2023-08-11 09:00:00.5+08:00')")
        conn.execute("INSERT INTO openai_upstreams VALUES (3, '2023-08-10 13:32:51+08:00', "
                     "'2023-08-10 13:32:51+08:00', '2023-08-12 10:00:00+08:00', "
                     "'sk-go-deleted', 'https://c/v1', 0, 0, NULL)")
        conn.execute("INSERT INTO config_kvs VALUES (1, '2023-08-10 13:32:51+08:00', "
                     "'2023-08-10 13:32:51+08:00', NULL, 'authorization', 'go-token')")
        conn.execute("INSERT INTO records VALUES ('7f1e0a52-5a9b-4b8e-9f0e-1d2c3b4a5f6e', "
                     "'2023-08-10 13:32:52.5+08:00', '1.2.3.4', '{}', 'hi', 1500000000)")

    r = run(binary, "-list", db=db)
    assert r.returncode == 0, r.stderr
    never = next(line for line in r.stdout.splitlines() if "sk-go-never" in line)
    assert "never" in never and " 4 " in never and " 2 " in never
    used = next(line for line in r.stdout.splitlines() if "sk-go-used" in line)
    assert "never" not in used and "2023-08-11" in used
    assert "sk-go-deleted" not in r.stdout
    assert "authorization=go-token" in r.stdout

    r = run(binary, "-add", "-sk", "sk-new", db=db)
    assert r.returncode == 0, r.stderr
    assert run(binary, "-add", "-sk", "sk-go-never", db=db).returncode == 1
    # Adding the soft-deleted pair revives it.
    r = run(binary, "-add", "-sk", "sk-go-deleted", "-endpoint", "https://c/v1", db=db)
    assert r.returncode == 0, r.stderr
    assert "sk-go-deleted" in run(binary, "-list", db=db).stdout

    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(records)")]
        kept = conn.execute("SELECT id, ip, body, response, elapsed_time FROM records").fetchall()
        count = conn.execute("SELECT count(*) FROM openai_upstreams").fetchone()[0]
    assert columns[:6] == ["id", "created_at", "ip", "body", "response", "elapsed_time"]
    for column in ("model", "status", "upstream_id", "upstream_endpoint", "prompt_tokens",
                   "completion_tokens", "total_tokens", "response_time", "user_agent", "error"):
        assert column in columns
    assert kept == [("7f1e0a52-5a9b-4b8e-9f0e-1d2c3b4a5f6e", "1.2.3.4", "{}", "hi", 1500000000)]
    assert count == 4
