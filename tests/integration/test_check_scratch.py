"""-check without a database yet: the scripts load against an empty database (as at the start
that creates the file), so what they do at load works the same; the -database file is still
not created, and the temporary one is gone afterwards."""

import os
import subprocess

SCRIPT = """\
local route = require "route"
route.config.set("seen_at_load", "1")
assert(route.config.get("seen_at_load") == "1")
assert(#route.upstreams() == 0)
return {}
"""


def test_script_writing_config_at_load_passes_without_a_database(binary, tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "route.lua").write_text(SCRIPT)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    db = tmp_path / "none.sqlite"
    env = dict(os.environ, TMPDIR=str(tmp))
    r = subprocess.run([binary, "-check", "-database", str(db), "-scripts", str(scripts)],
                       capture_output=True, text=True, timeout=30, env=env,
                       stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "does not exist yet" in r.stdout, r.stdout
    assert not db.exists()
    assert list(tmp.iterdir()) == []
