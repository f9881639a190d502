"""A readable 413 for Node clients (issue 9, item 4; SPEC "Limits and bad input"): a 40 MiB
upload through Node's fetch and through the official SDK's files.create (multipart) reads the
proxy's 413 in 10 of 10 tries each (before the fix: EPIPE / "Connection error"), and the server
keeps serving. The raw-socket variant is tests/integration/test_readable_413.py."""

import json
import os
import subprocess

import pytest

import routetest


@pytest.mark.deadline(240)
def test_node_fetch_and_sdk_files_create_read_the_413(sdk_dir, proxy, mock):
    env = dict(os.environ, ROUTE_BASE_URL=proxy.url + "/v1", ROUTE_TOKEN=routetest.TOKEN)
    out = subprocess.run(["node", "upload.mjs"], cwd=sdk_dir, env=env, capture_output=True,
                         text=True, timeout=200)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert [t["status"] for t in got["fetched"]] == [413] * 10, got["fetched"]
    assert all(t["type"] == "request_too_large" for t in got["fetched"]), got["fetched"]
    assert [t["status"] for t in got["sdk"]] == [413] * 10, got["sdk"]
    # Nothing that large reached the upstream, and the server keeps serving.
    assert not [r for r in mock.requests if r.target.startswith("/v1/files")]
    r = proxy.chat("still there?")
    assert r.status == 200, r
