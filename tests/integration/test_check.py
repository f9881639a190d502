"""-check (issue 10, item 6): like `nginx -t`, it loads the scripts, reads the database's config
through the typed table and the TLS files the flags name, then exits 0 with one line on stdout,
or prints each problem (a script's with file and line) and exits 1. It never writes the
database (it opens it read-only and never creates it)."""

import hashlib
import sqlite3
import subprocess
from pathlib import Path

import routetest

TOKEN = "check-secret-token-0001"


def run(binary, tmp_path, *args, scripts=None, db=None):
    db = db or tmp_path / "db.sqlite"
    scripts = scripts or tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    argv = [binary, "-database", str(db), "-scripts", str(scripts)] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, cwd=str(tmp_path))


def seed(binary, tmp_path, *sets):
    for kv in ("authorization=" + TOKEN,) + sets:
        r = run(binary, tmp_path, "-set", kv)
        assert r.returncode == 0, r.stderr


def write_script(tmp_path, text):
    d = tmp_path / "scripts"
    d.mkdir(exist_ok=True)
    (d / "route.lua").write_text(text)
    return d


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_good_setup_passes_with_one_line(binary, tmp_path):
    seed(binary, tmp_path, "timeout=300", "policy=round_robin")
    write_script(tmp_path, "return { authorize = function(req) return true end }\n")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("check ok"), r.stdout
    assert "route.lua" in lines[0] and "3 config key(s) valid" in lines[0]
    assert r.stderr == ""
    assert TOKEN not in r.stdout + r.stderr


def test_embedded_default_and_missing_database_pass_and_create_nothing(binary, tmp_path):
    db = tmp_path / "none.sqlite"
    r = run(binary, tmp_path, "-check", db=db)
    assert r.returncode == 0, r.stderr
    assert "embedded route.lua" in r.stdout and "does not exist yet" in r.stdout
    assert not db.exists()


def test_syntax_error_names_file_and_line(binary, tmp_path):
    seed(binary, tmp_path)
    scripts = write_script(tmp_path, "local x = 1\nlocal y = = 2\nreturn {}\n")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 1
    assert "%s/route.lua:2:" % scripts in r.stderr, r.stderr
    assert "check failed: 1 problem(s)" in r.stderr
    assert r.stdout == ""


def test_script_that_raises_at_load_fails(binary, tmp_path):
    seed(binary, tmp_path)
    scripts = write_script(tmp_path, "local t = {}\nerror('refusing to load')\nreturn t\n")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 1
    assert "%s/route.lua:2: refusing to load" % scripts in r.stderr, r.stderr


def test_script_returning_no_table_fails(binary, tmp_path):
    seed(binary, tmp_path)
    write_script(tmp_path, "return 42\n")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 1
    assert "must return a table of hooks" in r.stderr, r.stderr


def test_bad_config_value_in_database_is_named(binary, tmp_path):
    seed(binary, tmp_path)
    c = sqlite3.connect(str(tmp_path / "db.sqlite"))
    c.execute("INSERT INTO config_kvs (created_at, updated_at, key, value) VALUES "
              "(datetime('now'), datetime('now'), 'timeout', 'abc'), "
              "(datetime('now'), datetime('now'), 'records_retention_days', '-3')")
    c.commit()
    c.close()
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 1
    assert "timeout: not a number of seconds: 'abc'" in r.stderr, r.stderr
    assert "records_retention_days" in r.stderr
    assert "check failed: 2 problem(s)" in r.stderr
    assert TOKEN not in r.stdout + r.stderr
    # Only -check's own lines: the config module's warning would repeat them.
    assert "WARN" not in r.stderr


def test_problems_are_all_reported_together(binary, tmp_path):
    seed(binary, tmp_path)
    c = sqlite3.connect(str(tmp_path / "db.sqlite"))
    c.execute("UPDATE config_kvs SET value='x' WHERE key='authorization'")
    c.execute("INSERT INTO config_kvs (key, value) VALUES ('max_connections', '0')")
    c.commit()
    c.close()
    write_script(tmp_path, "return {\n")
    r = run(binary, tmp_path, "-check", "-ca-file", str(tmp_path / "missing.pem"))
    assert r.returncode == 1
    assert "max_connections" in r.stderr and "route.lua:" in r.stderr and "-ca-file" in r.stderr
    assert "check failed: 3 problem(s)" in r.stderr, r.stderr


def test_scripts_see_the_database_config_at_load(binary, tmp_path):
    """Code that runs at load reads route.config as at start-up: no false failure."""
    seed(binary, tmp_path, "policy=round_robin")
    write_script(tmp_path, "local p = route.config.get('policy')\n"
                           "if p ~= 'round_robin' then error('policy is ' .. tostring(p)) end\n"
                           "assert(#route.upstreams() == 1)\n"
                           "return {}\n")
    r = run(binary, tmp_path, "-add", "-sk", "sk-check-1", "-endpoint", "http://127.0.0.1:9/v1")
    assert r.returncode == 0, r.stderr
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 0, r.stderr


def test_check_never_writes_the_database(binary, tmp_path):
    """A Go-era file stays as it is: no migration, no token generated."""
    db = tmp_path / "go.sqlite"
    routetest.make_go_database(db, config=[("timeout", "60")])
    before = digest(db)
    r = run(binary, tmp_path, "-check", db=db)
    assert r.returncode == 0, r.stderr
    assert "1 config key(s) valid" in r.stdout
    assert digest(db) == before
    cols = [row[1] for row in sqlite3.connect(str(db)).execute("PRAGMA table_info(records)")]
    assert "model" not in cols


def test_not_a_database_fails(binary, tmp_path):
    db = tmp_path / "junk.sqlite"
    db.write_bytes(b"this is not sqlite at all" * 100)
    r = run(binary, tmp_path, "-check", db=db)
    assert r.returncode == 1
    assert str(db) in r.stderr, r.stderr


def test_check_beside_a_running_server(proxy_factory, mock, tmp_path):
    p = proxy_factory(upstreams=[("sk-up", mock.endpoint())], config={"timeout": "30"})
    (p.scripts_dir / "route.lua").write_text("return {}\n")
    r = p.oneshot("-check", "-scripts", str(p.scripts_dir))
    assert r.returncode == 0, r.stderr
    status, _, _ = p.chat()
    assert status == 200


def test_check_is_a_command_of_its_own(binary, tmp_path):
    r = run(binary, tmp_path, "-check", "-set", "timeout=5")
    assert r.returncode == 2
    assert "-check cannot be combined" in r.stderr
    assert not (tmp_path / "db.sqlite").exists()


def test_help_lists_check(binary):
    r = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "-check" in r.stdout


def test_a_post_made_at_load_finishes_first(binary, tmp_path, mock):
    """A script that posts (a webhook) while it loads: -check lets the post end, then exits
    cleanly (it once closed the post's handles under it)."""
    seed(binary, tmp_path)
    write_script(tmp_path, "assert(route.http_post(%r, '{}', {}))\nreturn {}\n"
                 % (mock.endpoint() + "/hook"))
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 0, r.stderr
    routetest.wait_until(lambda: any(q.path.endswith("/hook") for q in mock.requests),
                         timeout=5, message="the post at load")


def test_check_by_a_user_who_cannot_write_the_database(binary, tmp_path):
    # An operator checks the service's WAL database without the right to create its -wal and
    # -shm: the check reads it as immutable and passes, as a start by the service would.
    import os
    import shutil
    import tempfile
    home = Path(tempfile.mkdtemp(prefix="route-check-ro-"))
    try:
        os.chmod(home, 0o755)
        seed(binary, home, "timeout=300")
        (home / "scripts").mkdir(exist_ok=True)
        # The one-shot commands checkpointed and closed: only the main file holds the data.
        for extra in ("db.sqlite-wal", "db.sqlite-shm"):
            if (home / extra).exists():
                (home / extra).unlink()
        os.chmod(home / "db.sqlite", 0o444)
        os.chmod(home / "scripts", 0o755)

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)

        # A copy nobody may run, wherever the build tree lives (a 0700 home in CI).
        own_binary = home / "openai-api-route"
        shutil.copy(binary, own_binary)
        os.chmod(own_binary, 0o755)
        os.chmod(home, 0o555)
        argv = [str(own_binary), "-check", "-database", str(home / "db.sqlite"), "-scripts",
                str(home / "scripts")]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, cwd="/", preexec_fn=as_nobody)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith("check ok") and "2 config key(s) valid" in r.stdout, r.stdout
    finally:
        os.chmod(home, 0o755)
        shutil.rmtree(home, ignore_errors=True)


def test_unknown_policy_is_a_problem_only_for_the_default_pick(binary, tmp_path):
    seed(binary, tmp_path, "policy=fastest_first")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "policy: unknown load balance policy 'fastest_first'" in r.stderr, r.stderr
    # A script with its own pick_upstream decides what the policy means.
    write_script(tmp_path, "return { pick_upstream = function(req, ups) return ups[1] end }\n")
    r = run(binary, tmp_path, "-check")
    assert r.returncode == 0, r.stderr
