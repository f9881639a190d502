"""The file watch covers the subfolders that hold modules: editing lib/pick.lua reloads the
scripts as editing route.lua does, and so does a module in a subfolder made after the start."""

from mock_upstream import MockUpstream
from routetest import wait_until

# Routes to the upstream the helper names (required at load: a reload must reread it).
ROUTE = """\
local target = require "lib.target"
return {
  pick_upstream = function(req, ups)
    for _, u in ipairs(ups) do if u.id == target.id then return u end end
    return nil, "no upstream " .. target.id
  end,
}
"""


def answered_by(p):
    r = p.chat()
    assert r.status == 200, r
    return r.json()["mock"]


def wait_answer(p, name):
    wait_until(lambda: answered_by(p) == name, timeout=5.0, interval=0.05,
               message="routing to %s" % name)


def test_module_in_a_subfolder_is_watched(proxy_factory, tmp_path):
    mocks = [MockUpstream(n).start() for n in ("a", "b", "c")]
    try:
        scripts = tmp_path / "scripts"
        (scripts / "lib").mkdir(parents=True)
        (scripts / "route.lua").write_text(ROUTE)
        (scripts / "lib" / "target.lua").write_text("return { id = 1 }\n")
        p = proxy_factory(upstreams=[("sk-%s" % m.name, m.endpoint()) for m in mocks],
                          scripts_dir=scripts)
        with p:
            assert answered_by(p) == "a"
            (scripts / "lib" / "target.lua").write_text("return { id = 2 }\n")
            wait_answer(p, "b")

            # A subfolder made while running: its module is read by the reload its creation
            # starts, and watched from then on.
            (scripts / "more").mkdir()
            (scripts / "more" / "target.lua").write_text("return { id = 3 }\n")
            (scripts / "route.lua").write_text(ROUTE.replace('"lib.target"', '"more.target"'))
            wait_answer(p, "c")
            (scripts / "more" / "target.lua").write_text("return { id = 1 }\n")
            wait_answer(p, "a")
    finally:
        for m in mocks:
            m.stop()
