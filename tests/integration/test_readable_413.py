"""A readable 413 (issue 9, item 4; RFC 9112 section 9.6): a client still sending a body over
the limit gets the 413 — the server answers, shuts its write side, and reads and drops what
still arrives (bounded in time and bytes) instead of closing at once, which would reset the
connection under the client's feet (Node's fetch and the SDKs saw EPIPE)."""

import socket
import threading

from routetest import assert_error_shape

CHAT = "/v1/chat/completions"
OVER = 40 * 1024 * 1024


def upload(p, chunked=False):
    """Sends a 40 MiB body as fast as the server takes it, in a thread, and reads the answer
    in this one. Returns (what was read, the send errors)."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=20)
    head = "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n" % (CHAT, p.token)
    head += ("Transfer-Encoding: chunked\r\n" if chunked else "Content-Length: %d\r\n" % OVER)
    s.sendall((head + "Content-Type: application/json\r\n\r\n").encode())
    piece = b"x" * 65536
    errors = []

    def send_all():
        try:
            for _ in range(OVER // len(piece)):
                if chunked:
                    s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    s.sendall(piece)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send_all, daemon=True)
    t.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 10:
            got = s.recv(65536)
            if not got:
                break
            data += got
    finally:
        t.join(30)
        s.close()
    return data, errors


def test_oversized_upload_reads_its_413_every_time(proxy):
    for chunked in (False, True):
        for i in range(5):
            data, errors = upload(proxy, chunked=chunked)
            assert data.startswith(b"HTTP/1.1 413"), (chunked, i, data[:200])
            # The whole body went out: the server read and dropped it, no reset (EPIPE).
            assert not errors, (chunked, i, errors)
            assert b"request body too large" in data, data[:400]
            assert b"connection: close" in data.lower()
    # The server keeps serving.
    r = proxy.request("GET", "/v1/models")
    assert r.status in (200, 404, 502), r


def test_a_client_that_never_stops_is_cut_after_the_linger(proxy):
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    s.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
               % (CHAT, 10 * OVER)).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    # Keep sending: the server drops the bytes for about 2 s (or 64 MiB), then closes.
    piece = b"y" * 65536
    closed = False
    try:
        for _ in range(20000):
            s.sendall(piece)
    except OSError:
        closed = True
    s.close()
    assert closed, "the server never closed a client that kept sending"
