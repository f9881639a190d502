"""mock_upstream.py: a programmable mock of the OpenAI HTTP API, for the integration tests.

A threaded HTTP/1.1 server on 127.0.0.1 (a free port picked by the kernel) that records every
request it receives and answers from a small "script":

    with MockUpstream(name="a") as mock:
        mock.endpoint()                       # "http://127.0.0.1:PORT/v1"
        mock.set("/v1/chat/completions", ChatStream(["Hel", "lo"], usage=(3, 2, 5)))
        mock.enqueue(Status(500))             # the next request (any path) gets a 500
        ... run requests through the proxy ...
        mock.requests                         # [MockRequest], in arrival order
        mock.connection_count()               # distinct TCP connections seen

How a request is answered: the enqueued responses first (FIFO), then the response set for its
exact path (without the query), then the one set for "*", then the default `Auto()` (a JSON
chat.completion, or an SSE chat stream when the body says "stream": true).

Every HTTP response the mock writes carries `X-Mock-Name: <name>`, and the JSON bodies it builds
carry `"mock": "<name>"`, so routing tests can see which upstream answered.

Responses: Json, ChatCompletion, Sse, ChatStream, Chunked, CloseDelimited, Status, Echo, Raw,
Drop, Hang, Delay, ResponsesJson, ResponsesStream, or any callable `fn(req) -> response`.
`Sse(..., then="reset")` resets the connection (TCP RST) after its events instead of ending.

Timing: `Sse(..., gates={1: event})` waits (bounded) on `event` before sending event 1, and
`sse.sent[i]` is set once event i has been written, so a test can prove event 0 reached the
client before event 1 left the mock.

Standalone: `python3 mock_upstream.py --port 9000 --name m` serves the default script.
Python standard library only.
"""

import hashlib
import json
import socket
import socketserver
import threading
import time

__all__ = [
    "MockUpstream", "MockRequest", "ClientGone",
    "Auto", "Json", "ChatCompletion", "Sse", "ChatStream", "Chunked", "CloseDelimited",
    "Status", "Echo", "Raw", "Drop", "Hang", "Delay", "ResponsesJson", "ResponsesStream",
    "chat_completion_body", "chat_chunk", "responses_body", "usage_dict",
]

MAX_HEADER_BYTES = 1024 * 1024
GATE_TIMEOUT = 15.0  # the longest a gated response waits for its test


class ClientGone(Exception):
    """The proxy closed the connection while the mock was writing."""


class BadRequest(Exception):
    pass


# --------------------------------------------------------------------------- requests

class MockRequest:
    """One request as the mock received it."""

    def __init__(self, method, target, version, headers, body, conn_id, client_port, chunked):
        self.method = method
        self.target = target  # path + query, as received
        self.path, _, self.query = target.partition("?")
        self.version = version  # "HTTP/1.1"
        self.headers = headers  # [(name, value)] as received, in order
        self.body = body  # bytes (de-chunked)
        self.conn_id = conn_id  # 1, 2, ... per accepted TCP connection
        self.client_port = client_port
        self.chunked = chunked  # the body came with Transfer-Encoding: chunked
        self.time = time.monotonic()

    def header(self, name, default=None):
        """First value of a header, case-insensitive."""
        n = name.lower()
        for k, v in self.headers:
            if k.lower() == n:
                return v
        return default

    def header_all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    @property
    def headers_dict(self):
        """Lower-case names; repeated headers joined with ", "."""
        d = {}
        for k, v in self.headers:
            k = k.lower()
            d[k] = d[k] + ", " + v if k in d else v
        return d

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def json_or_none(self):
        try:
            return self.json()
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def sha256(self):
        return hashlib.sha256(self.body).hexdigest()

    def __repr__(self):
        return "<MockRequest %s %s conn=%d body=%dB>" % (self.method, self.target, self.conn_id,
                                                        len(self.body))


# --------------------------------------------------------------------------- the wire

class _Wire:
    """What a response writes through: the handler's socket, plus the request context."""

    def __init__(self, handler, mock, req):
        self.handler = handler
        self.mock = mock
        self.req = req
        self.sock = handler.connection

    def write(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError) as e:
            raise ClientGone(str(e))

    def head(self, status, headers, framing, length=None, reason=None):
        """Status line + headers. framing: "length" (needs length), "chunked", "close", "none"."""
        lines = ["HTTP/1.1 %d %s" % (status, reason or _REASONS.get(status, "Status"))]
        lines.append("X-Mock-Name: %s" % self.mock.name)
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        names = {k.lower() for k, _ in headers}
        if framing == "length" and "content-length" not in names:
            lines.append("Content-Length: %d" % length)
        elif framing == "chunked" and "transfer-encoding" not in names:
            lines.append("Transfer-Encoding: chunked")
        if framing == "close" and "connection" not in names:
            lines.append("Connection: close")
        self.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def chunk(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        if data:
            self.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self):
        self.write(b"0\r\n\r\n")

    def body_piece(self, framing, data):
        if framing == "chunked":
            self.chunk(data)
        else:
            self.write(data)

    def finish(self, framing):
        """Ends the body. Returns whether the connection may carry another request."""
        if framing == "chunked":
            self.end_chunks()
        return framing != "close"


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 408: "Request Timeout",
            409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def _hdrs(extra):
    if not extra:
        return []
    if isinstance(extra, dict):
        return list(extra.items())
    return list(extra)


# --------------------------------------------------------------------------- responses
# Each response has send(wire) -> bool (keep the connection open for another request).

def chat_completion_body(content="Hello from the mock.", model="gpt-mock", usage=(5, 7, 12),
                         mock_name=None, finish_reason="stop"):
    body = {
        "id": "chatcmpl-mock-%d" % int(time.time() * 1000),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0,
                     "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                         "total_tokens": usage[2]}
    if mock_name is not None:
        body["mock"] = mock_name
    return body


def usage_dict(usage, responses=False):
    """(prompt, completion, total[, cached[, reasoning]]) as the API's usage object (Chat
    Completions names, or the Responses API's)."""
    p, c, t = usage[:3]
    if responses:
        u = {"input_tokens": p, "output_tokens": c, "total_tokens": t}
    else:
        u = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": t}
    if len(usage) > 3:
        u["input_tokens_details" if responses else "prompt_tokens_details"] = {
            "cached_tokens": usage[3], **({} if responses else {"audio_tokens": 0})}
    if len(usage) > 4:
        u["output_tokens_details" if responses else "completion_tokens_details"] = {
            "reasoning_tokens": usage[4]}
    return u


def chat_chunk(content=None, model="gpt-mock", role=None, finish_reason=None, usage=None,
               mock_name=None, empty_choices=False, usage_null=False):
    delta = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    ev = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": int(time.time()),
          "model": model,
          "choices": [] if empty_choices else
          [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage is not None:
        ev["usage"] = usage_dict(usage)
    elif usage_null:
        ev["usage"] = None  # what OpenAI sends in every other chunk once usage was asked for
    if mock_name is not None:
        ev["mock"] = mock_name
    return ev


def _request_model(req, default="gpt-mock"):
    j = req.json_or_none()
    if isinstance(j, dict) and isinstance(j.get("model"), str):
        return j["model"]
    return default


class Json:
    """A fixed body (dict/list are JSON-encoded; bytes/str sent as they are)."""

    def __init__(self, body, status=200, headers=None, content_type="application/json",
                 framing="length"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode("utf-8")
        self.body, self.status, self.headers = body, status, _hdrs(headers)
        self.content_type, self.framing = content_type, framing

    def send(self, w):
        hs = ([("Content-Type", self.content_type)] if self.content_type else []) + self.headers
        if self.framing == "length":
            w.head(self.status, hs, "length", len(self.body))
            w.write(self.body)
        else:
            w.head(self.status, hs, self.framing)
            w.body_piece(self.framing, self.body)
        return w.finish(self.framing)


class ChatCompletion:
    """A chat.completion JSON body; model defaults to the request's. Carries "mock": name."""

    def __init__(self, content="Hello from the mock.", model=None, usage=(5, 7, 12), status=200,
                 headers=None, framing="length"):
        self.content, self.model, self.usage = content, model, usage
        self.status, self.headers, self.framing = status, headers, framing

    def send(self, w):
        body = chat_completion_body(self.content, self.model or _request_model(w.req),
                                    self.usage, mock_name=w.mock.name)
        return Json(body, self.status, self.headers, framing=self.framing).send(w)


class Sse:
    """A text/event-stream. events: dicts (sent as `data: <json>`), or str/bytes sent as they
    are (give the whole event, blank line included). Then `data: [DONE]` when done=True.

    delay: seconds before each event (a number or a list per event).
    gates: {i: threading.Event}: before event i (len(events) = the [DONE] line), wait on it
           (at most gate_timeout s; `gate_timed_out` then holds i).
    sent: list of threading.Event, sent[i] set once event i was written (i = len(events) for
          [DONE]); `finished` is set when the response is complete, `aborted` when the client
          went away mid-stream.
    framing: "chunked" (default, as OpenAI does), "length" (one Content-Length) or "close".
    """

    def __init__(self, events, delay=0.0, gates=None, done=True, status=200, headers=None,
                 framing="chunked", gate_timeout=GATE_TIMEOUT, then=None):
        self.then = then  # "reset": a TCP RST after the events, no end of the body
        self.events = list(events)
        self.delay, self.gates, self.done = delay, dict(gates or {}), done
        self.status, self.headers, self.framing = status, _hdrs(headers), framing
        self.gate_timeout = gate_timeout
        n = len(self.events) + (1 if done else 0)
        self.sent = [threading.Event() for _ in range(n)]
        self.finished = threading.Event()
        self.aborted = threading.Event()
        self.gate_timed_out = []

    @staticmethod
    def encode(ev):
        if isinstance(ev, dict) or isinstance(ev, list):
            return ("data: %s\n\n" % json.dumps(ev)).encode()
        if isinstance(ev, str):
            return ev.encode("utf-8")
        return bytes(ev)

    def _events(self, w):
        return [self.encode(e) for e in self.events]

    def send(self, w):
        payloads = self._events(w)
        if self.done:
            payloads.append(b"data: [DONE]\n\n")
        self.payloads = payloads  # the bytes of each event, as written (for byte comparisons)
        hs = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")] + self.headers
        for g in self.gates.values():
            w.mock._add_waiter(g)
        try:
            # "length": one Content-Length for the whole stream, as some servers send SSE.
            w.head(self.status, hs, self.framing,
                   length=sum(len(p) for p in payloads) if self.framing == "length" else None)
            for i, p in enumerate(payloads):
                d = self.delay[i] if isinstance(self.delay, (list, tuple)) else self.delay
                if d:
                    time.sleep(d)
                gate = self.gates.get(i)
                if gate is not None and not gate.wait(self.gate_timeout):
                    self.gate_timed_out.append(i)
                w.body_piece(self.framing, p)
                self.sent[i].set()
            if self.then == "reset":
                _reset(w)
                self.finished.set()
                return False
            keep = w.finish(self.framing)
        except ClientGone:
            self.aborted.set()
            raise
        self.finished.set()
        return keep


def _reset(w):
    """Ends the connection with a TCP RST (SO_LINGER 0), as a crashed upstream does."""
    import struct
    try:
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.handler.rfile.close()  # the makefile holds the fd open otherwise
        w.sock.close()
    except OSError:
        pass


class ChatStream(Sse):
    """An SSE chat.completion.chunk stream: a role chunk, one chunk per piece, a finish chunk,
    then (usage given) a usage chunk with empty choices, then [DONE]. Event indexes for
    gates/sent: 0 = role chunk, 1..n = the pieces, n+1 = finish, n+2 = usage (if any).
    usage: (prompt, completion, total[, cached[, reasoning]]); usage="asked": the request's
    stream_options.include_usage decides, with usage_when_asked. usage_null: the chunks before
    the usage chunk carry "usage": null, as OpenAI's do."""

    def __init__(self, pieces=("Hello", " from", " the", " mock."), model=None, usage=None,
                 usage_null=False, usage_when_asked=(5, 4, 9), **kw):
        self.pieces, self.model, self.usage = list(pieces), model, usage
        self.usage_null, self.usage_when_asked = usage_null, usage_when_asked
        n = len(self.pieces) + 2 + (1 if usage else 0)
        super().__init__([None] * n, **kw)

    def _events(self, w):
        model = self.model or _request_model(w.req)
        name = w.mock.name
        usage = self.usage
        if usage == "asked":
            j = w.req.json_or_none()
            so = j.get("stream_options") if isinstance(j, dict) else None
            usage = self.usage_when_asked if isinstance(so, dict) and so.get(
                "include_usage") is True else None
        null = bool(usage) and self.usage_null
        evs = [chat_chunk("", model, role="assistant", mock_name=name, usage_null=null)]
        evs += [chat_chunk(p, model, mock_name=name, usage_null=null) for p in self.pieces]
        evs.append(chat_chunk(None, model, finish_reason="stop", mock_name=name,
                              usage_null=null))
        if usage:
            evs.append(chat_chunk(None, model, usage=usage, mock_name=name,
                                  empty_choices=True))
        return [self.encode(e) for e in evs]


def responses_body(text="Hello from the mock.", model="gpt-mock", usage=(5, 7, 12),
                   mock_name=None, status="completed"):
    """A Responses API response object with one assistant message."""
    body = {
        "id": "resp_mock", "object": "response", "created_at": int(time.time()),
        "status": status, "model": model,
        "output": [{"id": "msg_mock", "type": "message", "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": usage_dict(usage, responses=True) if usage else None,
    }
    if mock_name is not None:
        body["mock"] = mock_name
    return body


class ResponsesJson:
    """A /v1/responses JSON answer; model defaults to the request's."""

    def __init__(self, text="Hello from the mock.", model=None, usage=(5, 7, 12)):
        self.text, self.model, self.usage = text, model, usage

    def send(self, w):
        body = responses_body(self.text, self.model or _request_model(w.req), self.usage,
                              mock_name=w.mock.name)
        return Json(body).send(w)


class ResponsesStream(Sse):
    """A /v1/responses stream with its typed events (event: + data:), as OpenAI sends them:
    response.created, response.in_progress, output_item.added, content_part.added, one
    output_text.delta per piece, output_text.done, content_part.done, output_item.done,
    response.completed (with usage). No [DONE]. Event indexes: 0..3 before the deltas, then
    one per piece."""

    def __init__(self, pieces=("Hello", " from", " the", " mock."), model=None, usage=(5, 7, 12),
                 **kw):
        self.pieces, self.model, self.usage = list(pieces), model, usage
        kw.setdefault("done", False)
        super().__init__([None] * (len(self.pieces) + 8), **kw)

    def _events(self, w):
        model = self.model or _request_model(w.req)
        text = "".join(self.pieces)
        seq = iter(range(10000))

        def ev(type_, **fields):
            data = {"type": type_, "sequence_number": next(seq), **fields}
            return ("event: %s\ndata: %s\n\n" % (type_, json.dumps(data))).encode()

        start = responses_body("", model, None, status="in_progress")
        start["output"] = []
        item = {"id": "msg_mock", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        at = {"item_id": "msg_mock", "output_index": 0, "content_index": 0}
        evs = [ev("response.created", response=start), ev("response.in_progress", response=start),
               ev("response.output_item.added", output_index=0, item=item),
               ev("response.content_part.added", part=part, **at)]
        evs += [ev("response.output_text.delta", delta=p, logprobs=[], **at) for p in self.pieces]
        evs.append(ev("response.output_text.done", text=text, logprobs=[], **at))
        evs.append(ev("response.content_part.done", part=dict(part, text=text), **at))
        done_item = dict(item, status="completed", content=[dict(part, text=text)])
        evs.append(ev("response.output_item.done", output_index=0, item=done_item))
        final = responses_body(text, model, self.usage, mock_name=w.mock.name)
        evs.append(ev("response.completed", response=final))
        return evs


class Chunked:
    """A body in several chunks (Transfer-Encoding: chunked), optional delay between them."""

    def __init__(self, chunks, status=200, content_type="application/json", headers=None,
                 delay=0.0):
        self.chunks = [c.encode() if isinstance(c, str) else bytes(c) for c in chunks]
        self.status, self.content_type, self.headers, self.delay = (status, content_type,
                                                                    _hdrs(headers), delay)

    @property
    def body(self):
        return b"".join(self.chunks)

    def send(self, w):
        w.head(self.status, [("Content-Type", self.content_type)] + self.headers, "chunked")
        for i, c in enumerate(self.chunks):
            if i and self.delay:
                time.sleep(self.delay)
            w.chunk(c)
        w.end_chunks()
        return True


class CloseDelimited:
    """No Content-Length, no chunking: the body ends when the mock closes the connection."""

    def __init__(self, body, status=200, content_type="application/json", headers=None,
                 pieces=1, delay=0.0):
        self.body = body.encode() if isinstance(body, str) else bytes(body)
        self.status, self.content_type, self.headers = status, content_type, _hdrs(headers)
        self.pieces, self.delay = pieces, delay

    def send(self, w):
        w.head(self.status, [("Content-Type", self.content_type)] + self.headers, "close")
        step = max(1, -(-len(self.body) // self.pieces))
        for i in range(0, len(self.body), step):
            if i and self.delay:
                time.sleep(self.delay)
            w.write(self.body[i:i + step])
        return False


class Status:
    """An arbitrary status with an OpenAI-style error body (or the body given)."""

    def __init__(self, status, body=None, headers=None, content_type="application/json"):
        self.status, self.headers, self.content_type = status, headers, content_type
        self.body = body

    def send(self, w):
        body = self.body
        if body is None:
            body = {"error": {"message": "mock %s says %d" % (w.mock.name, self.status),
                              "type": "mock_error", "code": self.status},
                    "mock": w.mock.name}
        return Json(body, self.status, self.headers, self.content_type).send(w)


class Echo:
    """200 with the received request as JSON: mock, method, path, query, target, version,
    headers (lower-case dict), header_list, body (text, or null when not UTF-8), body_len,
    body_sha256, chunked, conn_id."""

    def __init__(self, status=200, headers=None):
        self.status, self.headers = status, headers

    def send(self, w):
        r = w.req
        try:
            text = r.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        body = {"mock": w.mock.name, "method": r.method, "path": r.path, "query": r.query,
                "target": r.target, "version": r.version, "headers": r.headers_dict,
                "header_list": r.headers, "body": text, "body_len": len(r.body),
                "body_sha256": r.sha256, "chunked": r.chunked, "conn_id": r.conn_id}
        return Json(body, self.status, self.headers).send(w)


class Raw:
    """Bytes written as they are (status line included, or garbage); then close (default)."""

    def __init__(self, data, close=True):
        self.data = data.encode("latin-1") if isinstance(data, str) else bytes(data)
        self.close = close

    def send(self, w):
        w.write(self.data)
        return not self.close


class Drop:
    """Close the connection without answering."""

    def send(self, w):
        return False


class Reset:
    """Reset the connection (RST, not FIN) without answering, as a crashed upstream does."""

    def send(self, w):
        import struct
        try:
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        return False


class Hang:
    """Answer nothing until `release` is set (or `timeout` s pass), then send `then` (default:
    close the connection)."""

    def __init__(self, release=None, timeout=60.0, then=None):
        self.release = release or threading.Event()
        self.timeout, self.then = timeout, then

    def send(self, w):
        w.mock._add_waiter(self.release)
        self.release.wait(self.timeout)
        if self.then is None:
            return False
        return self.then.send(w)


class Delay:
    """Wait `seconds`, then send `inner`."""

    def __init__(self, seconds, inner=None):
        self.seconds, self.inner = seconds, inner

    def send(self, w):
        time.sleep(self.seconds)
        return _resolve(self.inner or Auto(), w.req).send(w)


class Auto:
    """The default: ChatStream when the request body has "stream": true, else ChatCompletion.
    With stream_options.include_usage the stream ends with a usage event."""

    def send(self, w):
        j = w.req.json_or_none()
        if isinstance(j, dict) and j.get("stream") is True:
            so = j.get("stream_options") or {}
            usage = (5, 4, 9) if isinstance(so, dict) and so.get("include_usage") else None
            return ChatStream(usage=usage).send(w)
        return ChatCompletion().send(w)


def _resolve(resp, req):
    """A callable script entry gives the response for this request."""
    while resp is not None and not hasattr(resp, "send") and callable(resp):
        resp = resp(req)
    return resp


# --------------------------------------------------------------------------- the server

class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 128


class _Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.mock = self.server.mock
        self.connection = self.request
        self.connection.settimeout(self.mock.read_timeout)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.connection.makefile("rb")
        self.conn_id = self.mock._conn_opened(self.connection, self.client_address)

    def finish(self):
        self.mock._conn_closed(self.connection)
        try:
            self.rfile.close()
        except OSError:
            pass

    def _readline(self):
        line = self.rfile.readline(65537)
        if len(line) > 65536:
            raise BadRequest("line too long")
        return line

    def _read_request(self):
        line = self._readline()
        while line in (b"\r\n", b"\n"):  # tolerated before a request line (RFC 9112 2.2)
            line = self._readline()
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3:
            raise BadRequest("bad request line %r" % line)
        method, target, version = parts
        headers, total = [], 0
        while True:
            h = self._readline()
            total += len(h)
            if total > MAX_HEADER_BYTES:
                raise BadRequest("headers too large")
            if not h:
                return None
            if h in (b"\r\n", b"\n"):
                break
            name, sep, value = h.decode("latin-1").rstrip("\r\n").partition(":")
            if not sep:
                raise BadRequest("bad header line %r" % h)
            headers.append((name, value.strip(" \t")))
        lower = {}
        for k, v in headers:
            lower.setdefault(k.lower(), v)
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        if chunked:
            body = self._read_chunked()
        elif "content-length" in lower:
            n = int(lower["content-length"])
            body = self.rfile.read(n) if n else b""
            if len(body) != n:
                return None
        else:
            body = b""
        return MockRequest(method, target, version, headers, body, self.conn_id,
                           self.client_address[1], chunked)

    def _read_chunked(self):
        out = bytearray()
        while True:
            size_line = self._readline()
            if not size_line:
                raise BadRequest("eof in chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while self._readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += self.rfile.read(size)
            if self.rfile.read(2) != b"\r\n":
                raise BadRequest("chunk not followed by CRLF")

    def handle(self):
        while not self.mock._stopping:
            try:
                req = self._read_request()
            except (socket.timeout, OSError):
                return
            except (BadRequest, ValueError) as e:
                self.mock.errors.append("bad request: %s" % e)
                try:
                    self.connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                            b"Connection: close\r\n\r\n")
                except OSError:
                    pass
                return
            if req is None:
                return
            resp = self.mock._record_and_pick(req)
            w = _Wire(self, self.mock, req)
            try:
                keep = _resolve(resp, req).send(w)
            except ClientGone:
                self.mock.client_gone.append(req)
                return
            except Exception as e:  # a bug in a test's script: make it visible
                self.mock.errors.append("script error on %s: %r" % (req.target, e))
                return
            conn_hdr = (req.header("connection") or "").lower()
            if not keep or "close" in conn_hdr or (req.version == "HTTP/1.0"
                                                   and "keep-alive" not in conn_hdr):
                return


class MockUpstream:
    """See the module docstring. Thread-safe; start() binds 127.0.0.1 on a free port."""

    def __init__(self, name="mock", default=None, read_timeout=60.0):
        self.name = name
        self.read_timeout = read_timeout
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._routes = {}
        self._queue = []
        self._default = default
        self._requests = []
        self._conn_seq = 0
        self._open = {}  # socket -> conn_id
        self.connections = []  # [(conn_id, client_port)] in accept order
        self.errors = []  # protocol errors and script exceptions (a test may assert it's empty)
        self.client_gone = []  # requests whose answer failed because the client left
        self._stopping = False
        self._waiters = []  # events a response waits on, set by stop()
        self._server = None
        self._thread = None

    # ---- lifecycle
    def start(self):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.mock = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="mock-%s" % self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops accepting and closes every open connection. Idempotent."""
        if self._server is None:
            return
        self._stopping = True
        with self._lock:
            waiters = list(self._waiters)
        for ev in waiters:  # let Hang and gated Sse responses end now
            ev.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start() if self._server is None else self

    def __exit__(self, *exc):
        self.stop()

    # ---- addresses
    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def endpoint(self, base="/v1"):
        """The upstream base URL to register with the proxy."""
        return self.url + base

    # ---- scripting
    def set(self, path, response):
        """Answer requests to `path` (exact, without the query; "*" = any) with `response`
        (a response object, or a callable req -> response)."""
        with self._lock:
            self._routes[path] = response
        return response

    def set_default(self, response):
        return self.set("*", response)

    def enqueue(self, *responses):
        """The next requests, whatever their path, get these, in order (FIFO)."""
        with self._lock:
            self._queue.extend(responses)
        return responses[0] if len(responses) == 1 else responses

    def reset(self):
        """Forgets recorded requests and connections, and the script."""
        with self._lock:
            self._routes.clear()
            self._queue.clear()
            self._requests.clear()
            self.connections.clear()
            self.errors.clear()
            self.client_gone.clear()

    def clear_requests(self):
        with self._lock:
            self._requests.clear()
            self.connections.clear()

    # ---- what it saw
    @property
    def requests(self):
        with self._lock:
            return list(self._requests)

    @property
    def last(self):
        with self._lock:
            return self._requests[-1] if self._requests else None

    def wait_for_requests(self, n, timeout=10.0):
        """Blocks until at least n requests arrived; returns them. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("mock %s: expected %d requests within %.1fs, got %d"
                                         % (self.name, n, timeout, len(self._requests)))
                self._cond.wait(left)
            return list(self._requests)

    def connection_count(self):
        """Distinct TCP connections accepted (since start or reset)."""
        with self._lock:
            return len(self.connections)

    def open_connection_count(self):
        with self._lock:
            return len(self._open)

    # ---- internals
    def _conn_opened(self, sock, addr):
        with self._lock:
            self._conn_seq += 1
            self._open[sock] = self._conn_seq
            self.connections.append((self._conn_seq, addr[1]))
            return self._conn_seq

    def _add_waiter(self, ev):
        with self._lock:
            self._waiters.append(ev)
        if self._stopping:
            ev.set()

    def _conn_closed(self, sock):
        with self._lock:
            self._open.pop(sock, None)

    def _record_and_pick(self, req):
        with self._cond:
            self._requests.append(req)
            self._cond.notify_all()
            if self._queue:
                return self._queue.pop(0)
            r = self._routes.get(req.path)
            if r is None:
                r = self._routes.get("*")
            if r is None:
                r = self._default
            return r if r is not None else Auto()


def main():
    import argparse
    ap = argparse.ArgumentParser(description="mock OpenAI upstream")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="mock")
    a = ap.parse_args()
    m = MockUpstream(a.name)
    if a.port:
        m._server = _Server(("127.0.0.1", a.port), _Handler)
        m._server.mock = m
        m.port = a.port
        print("mock %s on %s" % (m.name, m.endpoint()), flush=True)
        try:
            m._server.serve_forever()
        except KeyboardInterrupt:
            pass
    else:
        m.start()
        print("mock %s on %s" % (m.name, m.endpoint()), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            m.stop()


if __name__ == "__main__":
    main()
