"""The Realtime API's WebSocket through the proxy (issue 9, item 6; SPEC "Proxy" step 3): a
`ws` npm client (pinned in tests/sdk/package-lock.json) opens /v1/realtime?model=x through the
proxy to a mock WebSocket upstream (RFC 6455, written here with the stdlib) over ws and over
wss (test CA, -ca-file). The handshake passes authorize and pick_upstream like any request;
after the upstream's 101 the proxy relays bytes both ways without parsing frames, until either
side closes or idle_timeout passes without a byte.
"""

import base64
import hashlib
import json
import os
import queue
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

import routetest
from conftest import UPSTREAM_SK
from tls_util import make_pki

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IO_TIMEOUT = 15.0


def checksum(data):
    s = 0
    for b in data:
        s = (s * 31 + b) & 0xFFFFFFFF
    return s


# --------------------------------------------------------------------------- mock upstream

def read_exact(sock, n):
    out = b""
    while len(out) < n:
        got = sock.recv(n - len(out))
        if not got:
            raise EOFError
        out += got
    return out


def read_frame(sock):
    """(opcode, payload) of one frame from a client (masked, as RFC 6455 requires); FIN and
    fragmentation are not needed by the scenarios here."""
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    mask = read_exact(sock, 4) if b1 & 0x80 else b"\0\0\0\0"
    data = bytearray(read_exact(sock, n))
    for i in range(n):
        data[i] ^= mask[i % 4]
    return b0 & 0x0F, bytes(data)


def frame(opcode, payload):
    """A server frame (unmasked, FIN set)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_frame(code, reason):
    return frame(8, struct.pack("!H", code) + reason.encode())


class WsMock:
    """Accepts connections on 127.0.0.1 (TLS with cert, a tls_util.CertPair), reads a handshake
    and answers by mode:
      echo    101, then "hello from upstream" in the same write as the 101; text t -> "echo:t",
              binary b -> b reversed; text "close-please" -> close 4001 "bye from mock", waits
              for the client's close, closes; a client's close is answered with the same code
      silent  101, then reads until EOF, never sends
      reject  400 with a JSON error body (no upgrade)
      flood   101, then flood_bytes raw bytes (not frames: the proxy does not parse), then EOF
      hold    101, reads nothing until `release` is set, then counts what arrives until EOF
    Records every handshake (target, lower-case headers) and events as (kind, detail)."""

    def __init__(self, cert=None, mode="echo", flood_bytes=0):
        self.mode = mode
        self.flood_bytes = flood_bytes
        self.sent = self.received = 0
        self.release = threading.Event()
        self.ctx = cert.server_context() if cert else None
        self.handshakes = []
        self.events = queue.Queue()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def endpoint(self):
        # mbedTLS checks DNS names only: the certificate is for "localhost".
        if self.ctx:
            return "https://localhost:%d/v1" % self.port
        return "http://127.0.0.1:%d/v1" % self.port

    def stop(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the other thread
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.thread.join(5)

    def wait_event(self, kind, timeout=IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(ev)
            if ev[0] == kind:
                return ev
        raise AssertionError("the mock never saw %r (saw %r)" % (kind, seen))

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        s.settimeout(IO_TIMEOUT)
        try:
            if self.ctx:
                s = self.ctx.wrap_socket(s, server_side=True)
                self.conns.append(s)
            head = b""
            while b"\r\n\r\n" not in head:
                got = s.recv(4096)
                if not got:
                    raise EOFError
                head += got
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            self.handshakes.append({"line": lines[0], "headers": hdrs})
            self.events.put(("handshake", lines[0]))
            if self.mode == "busy":
                body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
                s.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
                s.close()
                return
            if self.mode == "reject":
                body = json.dumps({"error": {"message": "model not allowed here",
                                             "type": "invalid_request_error"}}).encode()
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                          b"X-Mock: ws\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                s.close()
                return
            accept = base64.b64encode(hashlib.sha1(
                (hdrs["sec-websocket-key"] + GUID).encode()).digest()).decode()
            proto = hdrs.get("sec-websocket-protocol", "").split(",")[0].strip()
            resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n" % accept)
            if proto:
                resp += "Sec-WebSocket-Protocol: %s\r\n" % proto
            resp = resp.encode() + b"\r\n"
            if self.mode == "flood":
                s.sendall(resp)
                piece = b"\xab" * 65536
                while self.sent < self.flood_bytes:
                    n = min(len(piece), self.flood_bytes - self.sent)
                    s.sendall(piece[:n])
                    self.sent += n
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
                self.events.put(("eof", None))
                return
            if self.mode == "hold":
                s.sendall(resp)
                self.release.wait(60)
                s.settimeout(60)
                while True:
                    got = s.recv(65536)
                    if not got:
                        break
                    self.received += len(got)
                self.events.put(("eof", self.received))
                return
            if self.mode == "silent":
                s.sendall(resp)
                s.settimeout(60)
                while s.recv(4096):
                    pass
                self.events.put(("eof", None))
                return
            # The first frame leaves with the 101: the proxy must hand it over after the head.
            s.sendall(resp + frame(1, b"hello from upstream"))
            self._echo(s)
        except (EOFError, OSError, ValueError) as e:
            self.events.put(("eof", repr(e)))
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _echo(self, s):
        while True:
            op, data = read_frame(s)
            if op == 1:
                text = data.decode()
                self.events.put(("text", text))
                if text == "close-please":
                    s.sendall(close_frame(4001, "bye from mock"))
                    op, data = read_frame(s)
                    self.events.put(("close_reply", (op, data)))
                    return
                s.sendall(frame(1, b"echo:" + data))
            elif op == 2:
                self.events.put(("binary", (len(data), checksum(data))))
                s.sendall(frame(2, data[::-1]))
            elif op == 8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                self.events.put(("client_close", (code, data[2:].decode())))
                s.sendall(close_frame(code or 1000, ""))
                return
            elif op == 9:
                s.sendall(frame(10, data))


# --------------------------------------------------------------------------- fixtures

def localhost_resolves():
    try:
        return any(ai[4][0] == "127.0.0.1" for ai in socket.getaddrinfo("localhost", 80))
    except OSError:
        return False


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None or not localhost_resolves():
        pytest.skip("needs openssl and localhost -> 127.0.0.1")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def ws_mocks():
    made = []

    def make(**kw):
        m = WsMock(**kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


def run_client(sdk_dir, proxy, scenario, token=None, timeout=40):
    url = proxy.url.replace("http://", "ws://") + "/v1/realtime?model=gpt-realtime-test"
    env = dict(os.environ, ROUTE_WS_URL=url, ROUTE_TOKEN=token or routetest.TOKEN)
    out = subprocess.run(["node", "ws_client.mjs", scenario], cwd=sdk_dir, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def admin_records(p):
    r = p.request("GET", "/admin/request_records")
    assert r.status == 200, r
    return r.json()


def wait_ws_record(p, timeout=10.0):
    def find():
        rows = [x for x in admin_records(p) if x["Status"] == 101]
        return rows[0] if rows else None
    return routetest.wait_until(find, timeout=timeout, message="a records row with status 101")


def counters(p):
    return [(u["success_count"], u["failed_count"]) for u in p.upstream_rows()]


# --------------------------------------------------------------------------- tests

@pytest.mark.deadline(120)
@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_frames_both_ways_and_the_upstreams_close(sdk_dir, proxy_factory, ws_mocks, scheme,
                                                   request):
    cert = request.getfixturevalue("pki").localhost if scheme == "wss" else None
    args = ["-ca-file", request.getfixturevalue("pki").ca] if scheme == "wss" else []
    mock = ws_mocks(cert=cert)
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], args=args)
    got = run_client(sdk_dir, p, "exchange")

    assert got["opened"] and not got.get("error"), got
    assert got["protocol"] == "realtime", got  # the upstream's Sec-WebSocket-Protocol
    big = bytes((i * 7) & 0xFF for i in range(300 * 1024))
    assert got["messages"] == [
        {"text": "hello from upstream"},
        {"text": "echo:ping-text"},
        {"binary": 5, "sha": checksum(bytes([0, 250, 3, 2, 1]))},
        {"binary": len(big), "sha": checksum(big[::-1])},
    ], got
    assert (got["closeCode"], got["closeReason"]) == (4001, "bye from mock"), got

    # What the mock received, frame by frame, and the client's answer to its close.
    assert mock.wait_event("binary")[1] == (5, checksum(bytes([1, 2, 3, 250, 0])))
    assert mock.wait_event("binary")[1] == (len(big), checksum(big))
    assert mock.wait_event("close_reply")[1][0] == 8

    # The handshake the upstream saw: its key, never the client's token; the path and query;
    # the WebSocket and OpenAI headers.
    (hs,) = mock.handshakes
    assert hs["line"] == "GET /v1/realtime?model=gpt-realtime-test HTTP/1.1", hs
    h = hs["headers"]
    assert h["authorization"] == "Bearer " + UPSTREAM_SK, h
    assert routetest.TOKEN not in json.dumps(h)
    assert h["upgrade"].lower() == "websocket" and "upgrade" in h["connection"].lower(), h
    assert h["sec-websocket-version"] == "13" and h["sec-websocket-key"], h
    protos = [x.strip() for x in h["sec-websocket-protocol"].split(",")]
    assert protos == ["realtime", "openai-beta.realtime-v1"], h
    assert h["openai-beta"] == "realtime=v1", h

    rec = wait_ws_record(p)
    assert rec["Model"] == "/v1/realtime", rec
    assert rec["UpstreamID"] == 1 and rec["UpstreamEndpoint"] == mock.endpoint(), rec
    assert rec["ElapsedTime"] > 0 and not rec["Error"], rec
    # Bytes as relayed (frames with their headers; client frames are masked, so larger).
    to_up = 2 + 4 + len("ping-text") + 2 + 4 + 5 + 10 + 4 + len(big) + 2 + 4 + len("close-please")
    resp = rec["Response"]
    assert resp.startswith("websocket: "), resp
    n_up = int(resp.split(" bytes to upstream")[0].split()[-1])
    n_client = int(resp.split(" bytes to client")[0].split()[-1])
    assert n_up >= to_up, resp
    to_client = 2 + 19 + 2 + 14 + 2 + 5 + 10 + len(big) + 2 + 2 + len("bye from mock")
    assert n_client == to_client, resp
    routetest.wait_until(lambda: counters(p) == [(1, 0)], message="success counted")


@pytest.mark.deadline(90)
def test_wrong_token_gets_403_and_no_upgrade_reaches_the_upstream(sdk_dir, proxy_factory,
                                                                   ws_mocks):
    mock = ws_mocks()
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    got = run_client(sdk_dir, p, "rejected", token="not-the-token")
    assert got["status"] == 403 and not got["opened"], got
    assert json.loads(got["body"])["error"]["message"] == "wrong authorization header", got
    assert mock.handshakes == []
    # The server keeps serving, and a refusal is not recorded.
    assert p.request("GET", "/admin/upstreams").status == 200
    assert not [x for x in admin_records(p) if x["Status"] in (101, 403)]


@pytest.mark.deadline(90)
def test_non_101_answer_reaches_the_client_as_it_came(sdk_dir, proxy_factory, ws_mocks):
    mock = ws_mocks(mode="reject")
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    got = run_client(sdk_dir, p, "rejected")
    assert got["status"] == 400 and not got["opened"], got
    assert json.loads(got["body"])["error"]["message"] == "model not allowed here", got
    assert got["headers"].get("x-mock") == "ws", got
    assert len(mock.handshakes) == 1
    rows = routetest.wait_until(
        lambda: [x for x in admin_records(p) if x["Status"] == 400], message="the 400 row")
    assert rows[0]["UpstreamID"] == 1, rows


@pytest.mark.deadline(90)
def test_client_closes_first_and_the_upstream_sees_it(sdk_dir, proxy_factory, ws_mocks):
    mock = ws_mocks()
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    got = run_client(sdk_dir, p, "client-close")
    assert got["messages"] == [{"text": "hello from upstream"}], got
    assert got["closeCode"] == 4002, got  # the mock echoed the client's code
    assert mock.wait_event("client_close")[1] == (4002, "client done")
    rec = wait_ws_record(p)
    assert rec["Response"].startswith("websocket: "), rec


@pytest.mark.deadline(90)
def test_a_silent_tunnel_is_closed_after_idle_timeout(sdk_dir, proxy_factory, ws_mocks):
    mock = ws_mocks(mode="silent")
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], config={"idle_timeout": "1"})
    got = run_client(sdk_dir, p, "idle")
    assert got["opened"], got
    assert got["closeCode"] == 1006, got  # the TCP connection closed without a close frame
    assert 900 <= got["ms"] < 15000, got
    mock.wait_event("eof")
    rec = wait_ws_record(p)
    assert "idle timeout" in rec["Response"], rec


def raw_handshake(p, timeout=IO_TIMEOUT, early=b""):
    """A WebSocket handshake by hand through the proxy, with `early` bytes in the same write;
    returns (socket, the bytes after the 101's head)."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=timeout)
    s.sendall(("GET /v1/realtime?model=x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: %s\r\n\r\n" % (p.token, key)).encode() + early)
    head = b""
    while b"\r\n\r\n" not in head:
        got = s.recv(4096)
        assert got, head
        head += got
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"access-control-" not in head.lower(), head  # no CORS on a 101
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest())
    assert b"Sec-WebSocket-Accept: " + want in head, head
    return s, head.split(b"\r\n\r\n", 1)[1]


def wait_stalled(value, timeout=30.0, quiet=1.0):
    """Waits until value() stops growing for `quiet` seconds; returns it."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError("still moving after %.0f s: %r" % (timeout, last))


def masked_text(text):
    data = text.encode()
    return struct.pack("!BB", 0x81, 0x80 | len(data)) + b"\0\0\0\0" + data


@pytest.mark.deadline(60)
def test_bytes_sent_with_the_handshake_reach_the_upstream(proxy_factory, ws_mocks):
    """A client may send its first frame in the same packet as the handshake: the proxy hands
    what it read after the request head to the upstream once the 101 came."""
    mock = ws_mocks()
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    s, rest = raw_handshake(p, early=masked_text("early bird"))
    want = frame(1, b"hello from upstream") + frame(1, b"echo:early bird")
    s.settimeout(IO_TIMEOUT)
    while len(rest) < len(want):
        got = s.recv(4096)
        assert got, rest
        rest += got
    assert rest == want
    assert mock.wait_event("text")[1] == "early bird"
    s.close()


FLOOD = 96 * 1024 * 1024


@pytest.mark.deadline(120)
def test_backpressure_upstream_to_a_client_that_does_not_read(proxy_factory, ws_mocks):
    mock = ws_mocks(mode="flood", flood_bytes=FLOOD)
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    s, early = raw_handshake(p)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    # The client reads nothing: the proxy stops reading the upstream once its queue to the
    # client is full, so the mock's sends stall far short of the whole flood (socket buffers
    # on both legs plus the proxy's high-water mark, a few MiB).
    stalled = wait_stalled(lambda: mock.sent)
    assert stalled < FLOOD // 2, stalled
    total = len(early)
    s.settimeout(IO_TIMEOUT)
    while True:
        got = s.recv(1 << 20)
        if not got:
            break
        total += len(got)
    s.close()
    assert total == FLOOD
    rec = wait_ws_record(p)
    assert "%d bytes to client" % FLOOD in rec["Response"], rec


@pytest.mark.deadline(120)
def test_backpressure_client_to_an_upstream_that_does_not_read(proxy_factory, ws_mocks):
    mock = ws_mocks(mode="hold")
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    s, _ = raw_handshake(p)
    s.settimeout(1.0)
    piece = b"\xcd" * 65536
    sent = 0
    # The upstream reads nothing: the proxy stops reading the client, whose sends then block.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sent += s.send(piece)
        except socket.timeout:
            break
        assert sent < FLOOD, "the proxy kept reading with nowhere to put the bytes"
    mock.release.set()
    s.settimeout(IO_TIMEOUT)
    s.sendall(piece)
    sent += len(piece)
    s.shutdown(socket.SHUT_WR)  # the client's close: the upstream sees EOF after every byte
    assert mock.wait_event("eof")[1] == sent
    assert s.recv(4096) == b""
    s.close()
    rec = wait_ws_record(p)
    assert "%d bytes to upstream" % sent in rec["Response"], rec


@pytest.mark.deadline(90)
def test_shutdown_closes_an_open_tunnel(proxy_factory, ws_mocks):
    """A tunnel counts as an active request: SIGTERM waits for it up to shutdown_grace, then
    closes it (and records it) and exits 0."""
    mock = ws_mocks(mode="silent")
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())], config={"shutdown_grace": "1"})
    s, _ = raw_handshake(p)
    mock.wait_event("handshake")
    # The tunnel is an open connection with a request in flight (besides this /metrics call).
    metrics = p.request("GET", "/metrics").body.decode()
    assert "route_active_requests 2\n" in metrics, metrics
    # Bytes through the raw tunnel, unparsed: the silent mock just reads them.
    s.sendall(b"\x81\x80\0\0\0\0")
    p.stop()
    assert p.returncode == 0, p.stderr_text()[-2000:]
    s.settimeout(IO_TIMEOUT)
    assert s.recv(4096) == b""  # the proxy closed the client's side
    s.close()
    mock.wait_event("eof")
    rows = routetest.db_query(p.db_path, "SELECT status, response FROM records")
    assert [r["status"] for r in rows] == [101], rows
    assert "6 bytes to upstream" in rows[0]["response"], rows


BY_ID = """\
return {
  pick_upstream = function(req, ups)
    table.sort(ups, function(a, b) return a.id < b.id end)
    return ups
  end,
}
"""


def test_a_handshake_answered_503_fails_over(proxy_factory, ws_mocks, tmp_path):
    # Nothing went to the client before the 101: a 503 (or 429) fails over like any request
    # and counts as that upstream's failure; the next upstream's 101 opens the session.
    busy, good = ws_mocks(mode="busy"), ws_mocks()
    scripts = tmp_path / "ordered"
    scripts.mkdir()
    (scripts / "route.lua").write_text(BY_ID)
    p = proxy_factory(upstreams=[(UPSTREAM_SK, busy.endpoint()), (UPSTREAM_SK + "2", good.endpoint())],
                      scripts_dir=scripts)
    s, after = raw_handshake(p)
    try:
        while b"hello from upstream" not in after:
            got = s.recv(4096)
            assert got, after
            after += got
    finally:
        s.close()
    assert len(busy.handshakes) == 1 and len(good.handshakes) == 1
    rec = wait_ws_record(p)
    assert rec["UpstreamID"] == 2 and rec["Status"] == 101, rec
    routetest.wait_until(lambda: counters(p)[0][1] == 1, message="the busy upstream's failure")


def browser_handshake(p, protocols):
    """A handshake as a browser makes it: no Authorization (the WebSocket API cannot set it),
    the token as a subprotocol (OpenAI's browser convention). Returns the response head."""
    key = base64.b64encode(os.urandom(16)).decode()
    s = socket.create_connection(("127.0.0.1", p.port), timeout=IO_TIMEOUT)
    try:
        s.sendall(("GET /v1/realtime?model=x HTTP/1.1\r\nHost: x\r\nOrigin: http://app.test\r\n"
                   "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n"
                   % (key, protocols)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            got = s.recv(4096)
            if not got:
                break
            head += got
        return head
    finally:
        s.close()


def test_browser_token_in_the_subprotocol_list(proxy_factory, ws_mocks):
    mock = ws_mocks()
    p = proxy_factory(upstreams=[(UPSTREAM_SK, mock.endpoint())])
    head = browser_handshake(p, "realtime, openai-insecure-api-key.%s, openai-beta.realtime-v1"
                             % p.token)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"Sec-WebSocket-Protocol: realtime\r\n" in head, head
    hs = mock.handshakes[-1]["headers"]
    # The upstream gets the proxy's key; the client's token left the subprotocol list.
    assert hs["authorization"] == "Bearer " + UPSTREAM_SK, hs
    assert hs["sec-websocket-protocol"] == "realtime, openai-beta.realtime-v1", hs
    assert p.token not in json.dumps(mock.handshakes)
    # A wrong token there is refused before any upgrade, as a wrong Bearer is.
    n = len(mock.handshakes)
    head = browser_handshake(p, "realtime, openai-insecure-api-key.nope")
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert b"wrong authorization header" in head, head
    assert len(mock.handshakes) == n
    # The token as the only entry: the upstream gets no Sec-WebSocket-Protocol at all.
    head = browser_handshake(p, "openai-insecure-api-key." + p.token)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert "sec-websocket-protocol" not in mock.handshakes[-1]["headers"], mock.handshakes[-1]
