"""routetest.py: the shared harness of the integration tests (Python 3 stdlib only).

    from routetest import Proxy, RawConn, wait_for_records, assert_cors, assert_error_shape
    from mock_upstream import MockUpstream, ChatStream

    with MockUpstream("a") as mock, Proxy(tmp_path, upstreams=[("sk-a", mock.endpoint())]) as p:
        status, headers, body = p.request("POST", "/v1/chat/completions", {"model": "m"})

Proxy(tmp_path, upstreams=[(sk, endpoint)], config={k: v}, args=[...], scripts_dir=None)
seeds the database with the binary's one-shots (`-set authorization=test-token`, `-set k=v`,
`-add -sk -endpoint`), starts the server on a free 127.0.0.1 port and waits (bounded) until it
accepts connections. Every wait here is bounded; every process started is ended by stop(),
by the context manager, or at interpreter exit.

The binary: $ROUTE_BINARY (ctest sets it), else <repo>/build/openai-api-route, else
<repo>/build*/openai-api-route; pytest skips the test when none exists and ROUTE_BINARY is
unset.
"""

import atexit
import glob
import hashlib
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

TOKEN = "test-token"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
ONESHOT_TIMEOUT = 20.0
DEFAULT_TIMEOUT = 10.0

CORS_EXPECTED = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, GET, OPTIONS, PUT, DELETE, PATCH",
    "access-control-allow-headers": "Origin, Authorization, Content-Type",
    "access-control-expose-headers": (
        "x-request-id, openai-processing-ms, openai-version, openai-organization, retry-after, "
        "x-ratelimit-limit-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, "
        "x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, x-ratelimit-reset-tokens"),
    "access-control-max-age": "600",
}

# The columns the C program adds to the Go program's `records`.
RECORD_ADDED_COLUMNS = ("model", "status", "upstream_id", "upstream_endpoint", "prompt_tokens",
                        "completion_tokens", "total_tokens", "response_time", "user_agent",
                        "error")

# "2023-08-10 13:32:51.123456789+08:00" (fraction optional), as Go's SQLite driver writes.
GO_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,9})?([+-]\d{2}:\d{2}|Z)$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)

# Go's table definitions (v0.1.0 + the elapsed_time diff), for tests that build an old DB.
GO_SCHEMA = """
CREATE TABLE `openai_upstreams` (`id` integer,`created_at` datetime,`updated_at` datetime,
  `deleted_at` datetime,`sk` text,`endpoint` text,`success_count` integer,`failed_count` integer,
  `last_call_success_time` datetime,PRIMARY KEY (`id`));
CREATE UNIQUE INDEX `idx_sk_endpoint` ON `openai_upstreams`(`sk`,`endpoint`);
CREATE TABLE `config_kvs` (`id` integer,`created_at` datetime,`updated_at` datetime,
  `deleted_at` datetime,`key` text UNIQUE,`value` text,PRIMARY KEY (`id`));
CREATE TABLE `records` (`id` uuid,`created_at` datetime,`ip` text,`body` text,`response` text,
  `elapsed_time` integer,PRIMARY KEY (`id`));
"""


class BinaryMissing(Exception):
    pass


def repo_root():
    env = os.environ.get("ROUTE_SOURCE_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2]


def route_binary():
    """Path of the server binary. BinaryMissing when there is none."""
    env = os.environ.get("ROUTE_BINARY")
    if env:
        if not os.access(env, os.X_OK):
            raise BinaryMissing("ROUTE_BINARY=%s is not an executable file" % env)
        return env
    root = repo_root()
    cands = [root / "build" / "openai-api-route"]
    cands += [Path(p) for p in sorted(glob.glob(str(root / "build*" / "openai-api-route")))]
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise BinaryMissing("no openai-api-route binary (set ROUTE_BINARY or build in %s/build)"
                        % root)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port():
    """A port where nothing listens (connecting gets ECONNREFUSED)."""
    return free_port()


def wait_port(port, timeout=START_TIMEOUT, proc=None):
    """Waits until 127.0.0.1:port accepts a TCP connection. False on timeout or proc exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------- replies

class Reply(tuple):
    """(status, headers, body) with extras: header_list [(name, value)] as received,
    framing ("length" | "chunked" | "close" | "none"; raw-socket replies only), version,
    and json()."""

    def __new__(cls, status, headers, body, header_list=(), framing=None, version=None,
                reason=None):
        self = tuple.__new__(cls, (status, headers, body))
        self.header_list = list(header_list)
        self.framing = framing
        self.version = version
        self.reason = reason
        return self

    status = property(lambda self: self[0])
    headers = property(lambda self: self[1])
    body = property(lambda self: self[2])

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.header_list if k.lower() == n]

    def __repr__(self):
        b = self.body if len(self.body) <= 300 else self.body[:300] + b"..."
        return "Reply(%r, %r, %r)" % (self.status, self.headers, b)


def headers_to_dict(header_list):
    d = {}
    for k, v in header_list:
        k = k.lower()
        d[k] = d[k] + ", " + v if k in d else v
    return d


def assert_cors(reply, where=""):
    """The spec's CORS headers, each exactly once with the spec's value."""
    for name, value in CORS_EXPECTED.items():
        got = reply.header_all(name)
        assert got == [value], ("%s: expected exactly one %s: %r, got %r (status %s)"
                                % (where or "response", name, value, got, reply[0]))


def assert_error_shape(reply, status=None, where=""):
    """A JSON body {"error": {"message": str, "type": str}}. Returns the message."""
    if status is not None:
        assert reply[0] == status, "%s: expected status %d, got %d: %r" % (
            where or "response", status, reply[0], reply[2][:500])
    try:
        j = json.loads(reply[2].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AssertionError("%s: error body is not JSON: %r" % (where or "response",
                                                                 reply[2][:500]))
    assert isinstance(j, dict) and isinstance(j.get("error"), dict), (
        "%s: expected {\"error\": {...}}, got %r" % (where or "response", j))
    assert isinstance(j["error"].get("message"), str), "error.message missing: %r" % j
    assert isinstance(j["error"].get("type"), str), "error.type missing: %r" % j
    return j["error"]["message"]


def upstream_label(endpoint, upstream_id=None):
    """How error messages name an attempt (SPEC "Details": by upstream id and host, never by
    key or path): "upstream 3 (127.0.0.1:8080)", or "(127.0.0.1:8080)" without an id."""
    scheme, _, rest = endpoint.partition("://")
    host = rest.split("/", 1)[0].split("?", 1)[0]
    if ":" not in host.rsplit("]", 1)[-1]:
        host += ":443" if scheme == "https" else ":80"
    label = "(%s)" % host
    return label if upstream_id is None else "upstream %d %s" % (upstream_id, label)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- raw sockets

class FramingError(AssertionError):
    pass


def build_request(method, path, body=None, headers=None, version="HTTP/1.1",
                  host="127.0.0.1", content_length=True):
    """Request bytes. body: bytes/str/dict/list (JSON). Adds Host (HTTP/1.1; host=None: none),
    Content-Length (when a body is given and content_length is True, and none is in headers),
    and Content-Type: application/json for dict/list bodies."""
    hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hs}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        if "content-type" not in names:
            hs.append(("Content-Type", "application/json"))
    elif isinstance(body, str):
        body = body.encode("utf-8")
    if host and "host" not in names and version != "HTTP/1.0":
        hs.insert(0, ("Host", host))
    if body is not None and content_length and "content-length" not in names \
            and "transfer-encoding" not in names:
        hs.append(("Content-Length", str(len(body))))
    head = "%s %s %s\r\n" % (method, path, version)
    head += "".join("%s: %s\r\n" % (k, v) for k, v in hs) + "\r\n"
    return head.encode("latin-1") + (body or b"")


class BodyReader:
    """Decodes one response body from a RawConn as bytes arrive."""

    def __init__(self, conn, framing, length=None):
        self.conn, self.framing = conn, framing
        self.remaining = length  # "length": bytes left; "chunked": bytes left in chunk
        self.state = "size" if framing == "chunked" else "data"
        self.body = bytearray()
        self.done = framing == "none" or (framing == "length" and length == 0)
        self.trailers = []

    def _step(self):
        """Consumes what the buffer holds. True when progress was made."""
        buf = self.conn.buf
        if self.done:
            return False
        if self.framing == "length":
            n = min(len(buf), self.remaining)
            if n == 0:
                return False
            self.body += buf[:n]
            del buf[:n]
            self.remaining -= n
            self.done = self.remaining == 0
            return True
        if self.framing == "close":
            if buf:
                self.body += buf
                del buf[:]
                return True
            if self.conn.eof:
                self.done = True
                return True
            return False
        # chunked
        if self.state == "size":
            i = buf.find(b"\r\n")
            if i < 0:
                if len(buf) > 1024:
                    raise FramingError("chunk-size line too long: %r" % bytes(buf[:100]))
                return False
            line = bytes(buf[:i])
            del buf[:i + 2]
            m = re.match(rb"^([0-9a-fA-F]+)[ \t]*(;.*)?$", line)
            if not m:
                raise FramingError("bad chunk-size line %r" % line)
            size = int(m.group(1), 16)
            if size == 0:
                self.state = "trailers"
            else:
                self.remaining, self.state = size, "data"
            return True
        if self.state == "data":
            n = min(len(buf), self.remaining)
            if n == 0:
                return False
            self.body += buf[:n]
            del buf[:n]
            self.remaining -= n
            if self.remaining == 0:
                self.state = "crlf"
            return True
        if self.state == "crlf":
            if len(buf) < 2:
                return False
            if bytes(buf[:2]) != b"\r\n":
                raise FramingError("chunk data not followed by CRLF: %r" % bytes(buf[:20]))
            del buf[:2]
            self.state = "size"
            return True
        if self.state == "trailers":
            i = buf.find(b"\r\n")
            if i < 0:
                return False
            line = bytes(buf[:i])
            del buf[:i + 2]
            if line:
                self.trailers.append(line)
            else:
                self.done = True
            return True
        return False

    def _pump(self, deadline):
        """Decodes what is buffered; reads more only when that made no progress."""
        progress = False
        while self._step():
            progress = True
        if self.done or progress:
            return
        if self.conn.eof:
            raise FramingError("connection closed inside a %s body (%d bytes decoded)"
                               % (self.framing, len(self.body)))
        self.conn._fill(deadline)

    def read_until(self, pred, timeout=DEFAULT_TIMEOUT):
        """Reads until pred(body so far) is true (pred may be bytes: contained). Returns the
        decoded body so far. TimeoutError if it doesn't happen in time."""
        if isinstance(pred, (bytes, bytearray)):
            needle = bytes(pred)
            pred = lambda b: needle in b  # noqa: E731
        deadline = time.monotonic() + timeout
        while not pred(bytes(self.body)):
            if self.done:
                raise AssertionError("body ended without the expected content: %r"
                                     % bytes(self.body[-500:]))
            self._pump(deadline)
        return bytes(self.body)

    def read_all(self, timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not self.done:
            self._pump(deadline)
        return bytes(self.body)


class RawConn:
    """A plain TCP connection to the proxy, for pipelining, malformed input, slow clients and
    checking the exact framing of responses."""

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.reset = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def send_request(self, *a, **kw):
        """send(build_request(...))"""
        self.send(build_request(*a, **kw))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from the proxy in time (buffered: %r)"
                               % bytes(self.buf[:200]))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(256 * 1024)
        except socket.timeout:
            raise TimeoutError("no data from the proxy in time (buffered: %r)"
                               % bytes(self.buf[:200]))
        except ConnectionResetError:
            self.eof = self.reset = True
            return
        if not data:
            self.eof = True
        self.buf += data

    def read_head(self, timeout=DEFAULT_TIMEOUT, method="GET", skip_1xx=True):
        """Reads a response head; returns a Reply with an empty body and `.framing`, plus the
        BodyReader in `.reader`. Validates the framing headers (RFC 9112 6.3)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n\r\n" not in self.buf:
                if self.eof:
                    raise FramingError("connection closed before a complete response head "
                                       "(got %r)" % bytes(self.buf[:300]))
                if len(self.buf) > 1024 * 1024:
                    raise FramingError("response head over 1 MiB")
                self._fill(deadline)
            i = self.buf.find(b"\r\n\r\n")
            head = bytes(self.buf[:i]).decode("latin-1")
            del self.buf[:i + 4]
            lines = head.split("\r\n")
            m = re.match(r"^(HTTP/1\.[01]) (\d{3})(?: (.*))?$", lines[0])
            if not m:
                raise FramingError("bad status line %r" % lines[0])
            version, status, reason = m.group(1), int(m.group(2)), m.group(3) or ""
            hl = []
            for ln in lines[1:]:
                name, sep, value = ln.partition(":")
                if not sep or not name or name != name.strip() or " " in name:
                    raise FramingError("bad header line %r" % ln)
                hl.append((name, value.strip(" \t")))
            if 100 <= status < 200 and skip_1xx:
                continue
            break
        hd = headers_to_dict(hl)
        te = [v for k, v in hl if k.lower() == "transfer-encoding"]
        cl = [v for k, v in hl if k.lower() == "content-length"]
        if te and cl:
            raise FramingError("response has both Transfer-Encoding and Content-Length: %r" % hl)
        if len(te) > 1:
            raise FramingError("Transfer-Encoding repeated: %r" % te)
        if len(set(cl)) > 1:
            raise FramingError("conflicting Content-Length headers: %r" % cl)
        if method == "HEAD" or status in (204, 304) or status < 200:
            framing, length = "none", None
        elif te:
            if te[0].strip().lower() != "chunked":
                raise FramingError("Transfer-Encoding other than chunked: %r" % te[0])
            if version == "HTTP/1.0":
                raise FramingError("chunked Transfer-Encoding in an HTTP/1.0 response")
            framing, length = "chunked", None
        elif cl:
            if not re.match(r"^\d+$", cl[0].strip()):
                raise FramingError("bad Content-Length %r" % cl[0])
            framing, length = "length", int(cl[0])
        else:
            framing, length = "close", None
        r = Reply(status, hd, b"", hl, framing, version, reason)
        r.reader = BodyReader(self, framing, length)
        return r

    def read_response(self, timeout=DEFAULT_TIMEOUT, method="GET"):
        """A whole response: Reply(status, headers, body) with .framing/.version/.header_list."""
        deadline = time.monotonic() + timeout
        h = self.read_head(timeout, method)
        body = h.reader.read_all(max(0.01, deadline - time.monotonic()))
        return Reply(h.status, h.headers, body, h.header_list, h.framing, h.version, h.reason)

    def wait_closed(self, timeout=5.0):
        """True when the peer closes (FIN or RST) within timeout; bytes received meanwhile are
        kept in .buf. False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._fill(deadline)
            except TimeoutError:
                return False
            except OSError:
                return True
        return True

    def is_open(self, wait=0.2):
        """True when nothing says the peer closed during `wait` seconds."""
        return not self.wait_closed(wait)


# --------------------------------------------------------------------------- the database

def db_connect_ro(db_path):
    """A read-only connection (WAL aware; never creates the file)."""
    c = sqlite3.connect("file:%s?mode=ro" % Path(db_path).resolve(), uri=True, timeout=5)
    c.row_factory = sqlite3.Row
    return c


def db_query(db_path, sql, params=()):
    """Rows as dicts, read-only. Retries briefly while the writer holds a lock."""
    deadline = time.monotonic() + 5
    while True:
        try:
            c = db_connect_ro(db_path)
            try:
                return [dict(r) for r in c.execute(sql, params).fetchall()]
            finally:
                c.close()
        except sqlite3.OperationalError as e:
            if time.monotonic() > deadline or "no such table" in str(e):
                raise
            time.sleep(0.05)


def wait_for_records(db_path, n, timeout=10.0, where="1=1", params=()):
    """Polls `records` (read-only) until at least n rows match `where`; returns them (oldest
    first by rowid). AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    rows = []
    while True:
        try:
            rows = db_query(db_path, "SELECT * FROM records WHERE %s ORDER BY rowid" % where,
                            params)
        except sqlite3.OperationalError:
            rows = []
        if len(rows) >= n:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError("expected %d records within %.1fs, found %d: %r"
                                 % (n, timeout, len(rows), rows[-3:]))
        time.sleep(0.05)


def wait_until(fn, timeout=10.0, interval=0.05, message="condition"):
    """Calls fn until it returns a true value (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except (sqlite3.OperationalError, OSError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError("%s not met within %.1fs (last: %r)" % (message, timeout, last))
        time.sleep(interval)


def make_go_database(db_path, upstreams=(), config=(), records=()):
    """Writes a database as the Go program left it: GO_SCHEMA, then rows.
    upstreams: dicts with id, sk, endpoint, and optional created_at, success_count,
    failed_count, last_call_success_time, deleted_at. config: (key, value) pairs.
    records: dicts with id, created_at, ip, body, response, elapsed_time."""
    ts = "2023-08-10 13:32:51.123456789+08:00"
    c = sqlite3.connect(str(db_path))
    try:
        c.executescript(GO_SCHEMA)
        for u in upstreams:
            c.execute("INSERT INTO openai_upstreams (id, created_at, updated_at, deleted_at, sk,"
                      " endpoint, success_count, failed_count, last_call_success_time)"
                      " VALUES (?,?,?,?,?,?,?,?,?)",
                      (u["id"], u.get("created_at", ts), u.get("updated_at", ts),
                       u.get("deleted_at"), u["sk"], u["endpoint"], u.get("success_count", 0),
                       u.get("failed_count", 0),
                       u.get("last_call_success_time", "0001-01-01 00:00:00+00:00")))
        for i, (k, v) in enumerate(config, 1):
            c.execute("INSERT INTO config_kvs (id, created_at, updated_at, deleted_at, key, value)"
                      " VALUES (?,?,?,NULL,?,?)", (i, ts, ts, k, v))
        for r in records:
            c.execute("INSERT INTO records (id, created_at, ip, body, response, elapsed_time)"
                      " VALUES (?,?,?,?,?,?)",
                      (r["id"], r.get("created_at", ts), r.get("ip", "127.0.0.1"),
                       r.get("body", ""), r.get("response", ""), r.get("elapsed_time", 0)))
        c.commit()
    finally:
        c.close()


# --------------------------------------------------------------------------- the proxy

_live = set()


@atexit.register
def _kill_leftovers():
    for p in list(_live):
        try:
            p.kill()
            p.wait(5)
        except Exception:
            pass


class Proxy:
    """The server under test. See the module docstring.

    Parameters:
      tmp_path     a directory for the db, logs and the (empty) scripts folder
      upstreams    [(sk, endpoint)] added with `-add` before the start
      config       {key: value} written with `-set key=value` before the start
      args         extra server flags (e.g. ["-noauth"])
      scripts_dir  passed as -scripts; None: an empty folder (the compiled-in route.lua)
      token        the client token: set as `authorization` (unless set_token=False) and sent
                   by request() as `Authorization: Bearer <token>`
      db_path      default tmp_path/"db.sqlite" (pass a prepared one, e.g. make_go_database)
      start        False: seed only; call start() later
    Attributes: url, port, addr, db_path, proc, binary, token, logs (stdout_path, stderr_path).
    """

    def __init__(self, tmp_path, upstreams=(), config=None, args=(), scripts_dir=None,
                 token=TOKEN, set_token=True, db_path=None, start=True, env=None):
        self.binary = route_binary()
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path) if db_path else self.dir / "db.sqlite"
        if scripts_dir is None:
            scripts_dir = self.dir / "scripts"
            scripts_dir.mkdir(exist_ok=True)
        self.scripts_dir = Path(scripts_dir)
        self.args = list(args)
        self.token = token
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.port = None
        self.returncode = None
        self.crashed = None  # set by stop(): exit status when it died before being told to
        self.killed = False  # set by stop(): it needed SIGKILL
        self._n = 0
        self.stdout_path = self.dir / "server.stdout"
        self.stderr_path = self.dir / "server.stderr"
        if token is not None and set_token:
            self.oneshot("-set", "authorization=%s" % token, check=True)
        for k, v in (config or {}).items():
            self.oneshot("-set", "%s=%s" % (k, v), check=True)
        for sk, endpoint in upstreams:
            self.add_upstream(sk, endpoint)
        if start:
            self.start()

    # ---- one-shot commands on this database
    def oneshot(self, *args, check=False, timeout=ONESHOT_TIMEOUT):
        """Runs `binary -database DB <args>` to completion; returns CompletedProcess (text)."""
        cmd = [self.binary, "-database", str(self.db_path)] + list(args)
        cp = subprocess.run(cmd, cwd=str(self.dir), env=self.env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError("%s exited %d\nstdout: %s\nstderr: %s"
                                 % (" ".join(cmd), cp.returncode, cp.stdout, cp.stderr))
        return cp

    # A running server sees another process's change (-set, -add, a hand edit) within 250 ms
    # (the spec), not on the very next request: the helpers below that change the database
    # behind its back wait until it logged the change, so a test's next request sees it.
    CHANGE_SEEN = "store: the database changed:"

    def _changes_seen(self):
        return self.stderr_text().count(self.CHANGE_SEEN)

    def _wait_change_seen(self, before, what):
        t0 = time.monotonic()
        wait_until(lambda: self._changes_seen() > before, timeout=5.0, interval=0.01,
                   message="the running server to see %s" % what)
        return time.monotonic() - t0

    def _config_value(self, key):
        c = sqlite3.connect(str(self.db_path), timeout=10)
        try:
            row = c.execute("SELECT value FROM config_kvs WHERE key=? AND deleted_at IS NULL",
                            (key,)).fetchone()
            return row[0] if row else None
        finally:
            c.close()

    def _changing(self, key, value):
        """The count of changes seen so far, when a running server should see this one."""
        if not self.alive() or (key is not None and self._config_value(key) == value):
            return None
        return self._changes_seen()

    def add_upstream(self, sk, endpoint):
        before = self._changing(None, None)
        cp = self.oneshot("-add", "-sk", sk, "-endpoint", endpoint, check=True)
        if before is not None and "already exists" not in cp.stdout + cp.stderr:
            self._wait_change_seen(before, "the upstream added")
        return cp

    def set_config(self, key, value):
        before = self._changing(key, value)
        cp = self.oneshot("-set", "%s=%s" % (key, value), check=True)
        if before is not None:
            self._wait_change_seen(before, "%s set" % key)
        return cp

    def write_config_raw(self, key, value):
        """Writes a config_kvs row by hand, as an operator editing the file would: no
        validation, unlike -set."""
        before = self._changing(key, value)
        c = sqlite3.connect(str(self.db_path), timeout=10)
        try:
            c.execute("INSERT INTO config_kvs (created_at, updated_at, key, value)"
                      " VALUES (datetime('now'), datetime('now'), ?, ?)"
                      " ON CONFLICT(key) DO UPDATE SET value=excluded.value, deleted_at=NULL",
                      (key, value))
            c.commit()
        finally:
            c.close()
        if before is not None:
            self._wait_change_seen(before, "%s written" % key)

    # ---- lifecycle
    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for attempt in range(3):
            self.port = free_port()
            self._n += 1
            cmd = [self.binary, "-addr", "127.0.0.1:%d" % self.port,
                   "-database", str(self.db_path), "-scripts", str(self.scripts_dir)] + self.args
            self._out = open(self.stdout_path, "ab")
            self._err = open(self.stderr_path, "ab")
            mark = ("--- start %d: %s\n" % (self._n, " ".join(cmd))).encode()
            self._out.write(mark)
            self._out.flush()
            self.proc = subprocess.Popen(cmd, cwd=str(self.dir), env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=self._out,
                                         stderr=self._err)
            _live.add(self.proc)
            self.returncode = self.crashed = None
            if wait_port(self.port, timeout, self.proc):
                return self
            rc = self.proc.poll()
            err = self.stderr_text()
            self._reap()
            if rc is not None and "in use" in err.lower() and attempt < 2:
                continue  # lost the port race: try another one
            raise AssertionError("server did not accept connections on 127.0.0.1:%d within "
                                 "%.0fs (exit status %r)\nstderr:\n%s\nstdout:\n%s"
                                 % (self.port, timeout, rc, err[-4000:],
                                    self.stdout_text()[-2000:]))
        return self

    def _reap(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self.returncode = self.proc.returncode
            _live.discard(self.proc)
        for f in (getattr(self, "_out", None), getattr(self, "_err", None)):
            if f:
                f.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT, sig=signal.SIGTERM):
        """Sends sig (SIGTERM), waits up to timeout, then SIGKILL. Returns the exit status
        (negative: killed by that signal). Idempotent. .crashed holds the status when the
        process had already exited before stop()."""
        if self.proc is None:
            return self.returncode
        if self.proc.returncode is not None and self.proc not in _live:
            return self.returncode
        rc = self.proc.poll()
        if rc is not None:
            self.crashed = rc
        else:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait(5)
        self._reap()
        return self.returncode

    def restart(self, timeout=START_TIMEOUT):
        self.stop()
        return self.start(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- logs
    def stderr_text(self):
        """Everything the server wrote to stderr (all starts)."""
        try:
            return self.stderr_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def stdout_text(self):
        try:
            return self.stdout_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def sanitizer_report(self):
        """The AddressSanitizer/UBSan/LeakSanitizer report in stderr, or ""."""
        t = self.stderr_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "ERROR: ThreadSanitizer"):
            i = t.find(marker)
            if i >= 0:
                return t[max(0, i - 200):i + 4000]
        return ""

    # ---- addresses
    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def auth_headers(self, token=None):
        return {"Authorization": "Bearer %s" % (token or self.token)}

    # ---- requests
    def request(self, method, path, body=None, headers=None, timeout=DEFAULT_TIMEOUT, auth=True):
        """One request on a new connection (http.client). body: bytes/str, or dict/list sent as
        JSON (with Content-Type: application/json). Adds `Authorization: Bearer <token>` unless
        auth=False or headers has one. Returns Reply(status, headers lower-case dict, body)."""
        hs = dict(headers or {})
        names = {k.lower() for k in hs}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            if "content-type" not in names:
                hs["Content-Type"] = "application/json"
        elif isinstance(body, str):
            body = body.encode("utf-8")
        if auth and self.token and "authorization" not in names:
            hs["Authorization"] = "Bearer %s" % self.token
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hs)
            resp = conn.getresponse()
            data = resp.read()
            hl = resp.getheaders()
            return Reply(resp.status, headers_to_dict(hl), data, hl,
                         version="HTTP/1.%d" % (resp.version - 10), reason=resp.reason)
        finally:
            conn.close()

    def chat(self, content="hi", model="gpt-test", stream=False, timeout=DEFAULT_TIMEOUT,
             headers=None, **extra):
        """POST /v1/chat/completions with a minimal chat body."""
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        if stream:
            body["stream"] = True
        body.update(extra)
        return self.request("POST", "/v1/chat/completions", body, headers, timeout)

    def connect(self, timeout=DEFAULT_TIMEOUT):
        """A RawConn to the proxy (close it, or use `with`)."""
        return RawConn(self.port, timeout=timeout)

    def http_connection(self, timeout=DEFAULT_TIMEOUT):
        """An http.client.HTTPConnection to the proxy, for several requests on one socket."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def raw_request(self, method, path, body=None, headers=None, auth=True, **kw):
        """build_request(...) bytes with the client token added (unless auth=False)."""
        hs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if auth and self.token and "authorization" not in {k.lower() for k, _ in hs}:
            hs.append(("Authorization", "Bearer %s" % self.token))
        return build_request(method, path, body, hs, **kw)

    # ---- the database
    def upstream_rows(self):
        return db_query(self.db_path, "SELECT * FROM openai_upstreams ORDER BY id")

    def records(self):
        return db_query(self.db_path, "SELECT * FROM records ORDER BY rowid")

    def wait_for_records(self, n, timeout=10.0, **kw):
        return wait_for_records(self.db_path, n, timeout, **kw)


def run_in_thread(fn, *args, **kwargs):
    """Starts fn in a daemon thread; returns (thread, result dict with 'value' or 'error')."""
    out = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # reported to the test through out["error"]
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out
