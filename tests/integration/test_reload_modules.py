"""A reload that fails leaves the running hooks in place, their helper modules included.

A failed load may already have required the new copy of a helper from the scripts folder
before it raised; the running hooks must keep finding their own copy in package.loaded (a
hook that requires lazily, at request time, would otherwise run code from the files the
reload refused)."""

from mock_upstream import MockUpstream
from routetest import assert_error_shape

# The hook requires its helper at request time and names it in its 500.
LAZY = """\
return {
  pick_upstream = function(req, upstreams)
    return nil, "helper " .. require("helper").name
  end,
}
"""

# Requires the (new) helper, then fails to load.
BROKEN = """\
local helper = require "helper"
error("broken on purpose, after requiring " .. helper.name)
"""


def helper_named(p):
    r = p.chat()
    return assert_error_shape(r, 500)


def test_failed_reload_keeps_the_running_helper(proxy_factory, tmp_path):
    m = MockUpstream("a").start()
    try:
        scripts = tmp_path / "scripts"
        scripts.mkdir()
        (scripts / "route.lua").write_text(LAZY)
        (scripts / "helper.lua").write_text('return { name = "v1" }\n')
        p = proxy_factory(upstreams=[("sk-a-secret", m.endpoint())], scripts_dir=scripts)
        with p:
            assert "helper v1" in helper_named(p)

            # route.lua first: any reload the watch starts meanwhile fails the same way.
            (scripts / "route.lua").write_text(BROKEN)
            (scripts / "helper.lua").write_text('return { name = "v2" }\n')
            r = p.request("POST", "/admin/reload")
            msg = assert_error_shape(r, 400)
            assert "broken on purpose, after requiring v2" in msg, msg
            for _ in range(3):
                got = helper_named(p)
                assert "helper v1" in got, got

            # A reload that works takes the new helper.
            (scripts / "route.lua").write_text(LAZY)
            r = p.request("POST", "/admin/reload")
            assert r.status == 200, r
            assert "helper v2" in helper_named(p)
    finally:
        m.stop()
