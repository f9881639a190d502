"""tls_util.py: TLS helpers for the integration tests (Python 3 stdlib + the openssl CLI).

    from tls_util import make_pki, TlsMockUpstream, SilentServer, BlockedPort

    pki = make_pki(tmp_path)              # a throwaway CA, certs for DNS:localhost and a wrong name
    with TlsMockUpstream("s", pki.localhost) as m:
        m.endpoint()                      # "https://localhost:PORT/v1"
        m.handshakes, m.resumed, m.handshake_errors

TlsMockUpstream is the harness's MockUpstream (same scripting, same recorded requests) with
every accepted connection wrapped in TLS: the handshake runs in the connection's own thread,
so a client that never finishes one blocks nobody. The endpoint names "localhost" because
mbedTLS 2.28 checks DNS names only, never IP addresses.

SilentServer accepts TCP connections and never says a word (a TLS handshake to it hangs).
BlockedPort is a listening socket whose accept queue is full, so a connect to it hangs in
SYN_SENT (loopback traffic only). Everything here is bounded and closed by stop()/exit.
"""

import http.client
import json
import socket
import ssl
import subprocess
import threading
from pathlib import Path

from mock_upstream import MockUpstream, _Handler, _Server

OPENSSL_TIMEOUT = 30


# --------------------------------------------------------------------------- certificates

class CertPair:
    def __init__(self, cert, key, names):
        self.cert, self.key, self.names = str(cert), str(key), list(names)

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


class Pki:
    """ca: the CA certificate file; localhost / wrong_name: CertPairs signed by it."""

    def __init__(self, folder, ca, ca_key, localhost, wrong_name):
        self.folder, self.ca, self.ca_key = Path(folder), str(ca), str(ca_key)
        self.localhost, self.wrong_name = localhost, wrong_name

    def client_context(self):
        """A Python client context that trusts only this CA (hostname checked)."""
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx


def _openssl(*args, cwd):
    cp = subprocess.run(["openssl"] + list(args), cwd=str(cwd), capture_output=True, text=True,
                        timeout=OPENSSL_TIMEOUT, stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise AssertionError("openssl %s failed (%d): %s" % (" ".join(args), cp.returncode,
                                                            cp.stderr))
    return cp


def _ec_key(path, cwd):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path), cwd=cwd)


def make_cert(folder, name, dns_names, ca, ca_key):
    """A server certificate for dns_names signed by the CA; returns a CertPair."""
    folder = Path(folder)
    key, csr, crt = folder / (name + ".key"), folder / (name + ".csr"), folder / (name + ".crt")
    ext = folder / (name + ".ext")
    _ec_key(key, folder)
    _openssl("req", "-new", "-key", str(key), "-subj", "/CN=%s" % dns_names[0], "-out", str(csr),
             cwd=folder)
    ext.write_text("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                   % ",".join("DNS:%s" % n for n in dns_names))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "3", "-sha256", "-extfile", str(ext), "-out", str(crt),
             cwd=folder)
    return CertPair(crt, key, dns_names)


def make_pki(folder):
    """A throwaway CA in folder (created), a certificate for DNS:localhost and one for
    DNS:wrong.example, all ECDSA P-256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.crt"
    _ec_key(ca_key, folder)
    _openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=openai-api-route test CA",
             "-days", "3", "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca), cwd=folder)
    localhost = make_cert(folder, "localhost", ["localhost"], ca, ca_key)
    wrong = make_cert(folder, "wrong", ["wrong.example"], ca, ca_key)
    return Pki(folder, ca, ca_key, localhost, wrong)


# --------------------------------------------------------------------------- HTTPS mock

class _TlsServer(_Server):
    def get_request(self):
        sock, addr = self.socket.accept()
        # No I/O here: the handshake runs in the connection's thread (_TlsHandler.setup).
        return self.mock.tls_context.wrap_socket(sock, server_side=True,
                                                  do_handshake_on_connect=False), addr


class _TlsHandler(_Handler):
    def setup(self):
        mock = self.server.mock
        sock = self.request
        sock.settimeout(mock.handshake_timeout)
        self.tls_ok = False
        try:
            sock.do_handshake()
            self.tls_ok = True
        except (ssl.SSLError, OSError) as e:
            mock._handshake_failed(e)
        if self.tls_ok:
            mock._handshake_done(sock.session_reused, sock.version())
        _Handler.setup(self)

    def handle(self):
        if self.tls_ok:
            _Handler.handle(self)

    def finish(self):
        _Handler.finish(self)
        if self.tls_ok and self.server.mock.close_notify:
            try:  # a polite close: close_notify first
                self.request.settimeout(1.0)
                self.request.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
        try:
            self.request.close()
        except OSError:
            pass


class TlsMockUpstream(MockUpstream):
    """MockUpstream over TLS with the given CertPair. Extra attributes: handshakes (completed),
    resumed (of those, how many resumed a session), handshake_errors [str], versions.
    close_notify=True: a connection the mock ends gets a TLS close_notify before the FIN
    (else just the FIN, as many servers do)."""

    def __init__(self, name="tls", certpair=None, host="localhost", handshake_timeout=10.0,
                 close_notify=False, **kw):
        MockUpstream.__init__(self, name, **kw)
        self.close_notify = close_notify
        self.tls_context = certpair.server_context()
        self.host = host
        self.handshake_timeout = handshake_timeout
        self.handshakes = 0
        self.resumed = 0
        self.versions = []
        self.handshake_errors = []

    def start(self):
        self._server = _TlsServer(("127.0.0.1", 0), _TlsHandler)
        self._server.mock = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="tlsmock-%s" % self.name, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self):
        return "https://%s:%d" % (self.host, self.port)

    def _handshake_done(self, reused, version):
        with self._lock:
            self.handshakes += 1
            self.resumed += 1 if reused else 0
            self.versions.append(version)

    def _handshake_failed(self, e):
        with self._lock:
            self.handshake_errors.append(str(e))

    def reset(self):
        MockUpstream.reset(self)
        with self._lock:
            self.handshakes = self.resumed = 0
            self.versions, self.handshake_errors = [], []


# --------------------------------------------------------------------------- stalls

class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never writes; counts them. A TLS client's
    handshake to it hangs until the client gives up."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="silent")

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(c)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(2)
        for c in self.accepted + [self.sock]:
            try:
                c.close()
            except OSError:
                pass

    def endpoint(self, scheme="https", host="localhost"):
        return "%s://%s:%d/v1" % (scheme, host, self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class BlockedPort:
    """A listening socket (backlog 0) that never accepts, with its accept queue filled by
    our own connections: a further connect() gets no SYN-ACK and hangs (Linux drops SYNs to
    a listener whose accept queue is full). usable is False when this kernel answers anyway."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        self.usable = False
        for _ in range(8):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except (socket.timeout, OSError):
                s.close()
                self.usable = True  # this one hung: the queue is full
                break
            self.fillers.append(s)

    def endpoint(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def close(self):
        for s in self.fillers + [self.sock]:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def https_request(port, method, path, body=None, headers=None, cafile=None, host="localhost",
                  timeout=10.0):
    """One request to the proxy's HTTPS listener with http.client; returns
    (status, headers dict lower-case, body bytes, the TLS version)."""
    ctx = ssl.create_default_context(cafile=cafile)
    hs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hs.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hs)
        r = conn.getresponse()
        data = r.read()
        version = conn.sock.version() if conn.sock else None
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data, version
    finally:
        conn.close()


__all__ = ["make_pki", "make_cert", "Pki", "CertPair", "TlsMockUpstream", "SilentServer",
           "BlockedPort", "https_request"]
