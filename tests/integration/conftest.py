"""pytest fixtures over routetest.py and mock_upstream.py.

Fixtures:
  mock            a started MockUpstream named "mock" (stopped after the test)
  mock_factory    mock_factory(name="m", **kw) -> a started MockUpstream; all stopped after
  proxy_factory   proxy_factory(upstreams=[...], config={...}, args=[...], scripts_dir=None,
                  tmp=None, **kw) -> a started Proxy in its own folder under tmp_path; all
                  stopped after, and the test errors if one crashed or printed a sanitizer
                  report
  proxy           proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])

Markers:
  @pytest.mark.deadline(seconds)  the test's wall-clock limit (default 60 s; SIGALRM)
  @pytest.mark.slow               waits on a real timeout (tens of seconds); skipped when
                                  the environment has ROUTE_SKIP_SLOW=1

Tests are skipped when ROUTE_BINARY is unset and no build has a binary; they fail when
ROUTE_BINARY names no executable.
"""

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import routetest  # noqa: E402
from mock_upstream import MockUpstream  # noqa: E402

DEFAULT_DEADLINE = 60
UPSTREAM_SK = "sk-upstream-secret-0001"


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): wall-clock limit of the test")
    config.addinivalue_line("markers", "slow: waits on a real server timeout")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ROUTE_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="ROUTE_SKIP_SLOW is set")
        for item in items:
            if item.get_closest_marker("slow"):
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    m = item.get_closest_marker("deadline")
    secs = int(m.args[0]) if m else DEFAULT_DEADLINE

    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded its %d s deadline" % secs)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(secs)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def require_binary():
    """The binary's path. Fails when ROUTE_BINARY names no executable (ctest), skips when
    ROUTE_BINARY is unset and no build has one."""
    try:
        return routetest.route_binary()
    except routetest.BinaryMissing as e:
        if os.environ.get("ROUTE_BINARY"):
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))


@pytest.fixture
def binary():
    return require_binary()


@pytest.fixture
def mock_factory():
    mocks = []

    def make(name="mock", **kw):
        m = MockUpstream(name, **kw).start()
        mocks.append(m)
        return m

    yield make
    for m in mocks:
        m.stop()


@pytest.fixture
def mock(mock_factory):
    return mock_factory("mock")


def check_proxy_health(p):
    """After stop(): the process must not have died on its own, nor reported a sanitizer
    error. Returns a problem description or None."""
    problems = []
    if p.crashed is not None:
        problems.append("the server exited by itself during the test (status %r)" % p.crashed)
    rep = p.sanitizer_report()
    if rep:
        problems.append("sanitizer report:\n" + rep)
    if problems:
        return "\n".join(problems) + "\n--- stderr tail:\n" + p.stderr_text()[-3000:]
    return None


@pytest.fixture
def proxy_factory(tmp_path, binary):
    proxies = []

    def make(upstreams=(), config=None, args=(), scripts_dir=None, tmp=None, start=True,
             **kw):
        d = Path(tmp) if tmp else tmp_path / ("proxy%d" % (len(proxies) + 1))
        p = routetest.Proxy(d, upstreams=upstreams, config=config, args=args,
                            scripts_dir=scripts_dir, start=False, **kw)
        proxies.append(p)
        if start:
            p.start()
        return p

    yield make
    problems = []
    for p in proxies:
        p.stop()
        why = check_proxy_health(p)
        if why:
            problems.append("%s: %s" % (p.dir, why))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def proxy(proxy_factory, mock):
    return proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])


SDK_DIR = Path(__file__).resolve().parent.parent / "sdk"


@pytest.fixture(scope="session")
def sdk_dir():
    """tests/sdk with its pinned npm packages (the openai SDK, ws) installed from the lockfile.
    A lock file keeps two test processes (ctest -j) from running npm ci in it at once: npm ci
    removes node_modules first."""
    import fcntl
    import shutil
    import subprocess
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("node and npm are needed (third_party/bootstrap.sh installs them)")
    with open(SDK_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((SDK_DIR / "node_modules" / pkg).is_dir() for pkg in ("openai", "ws")):
            subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SDK_DIR, check=True,
                           timeout=300, stdout=subprocess.DEVNULL)
    return SDK_DIR
