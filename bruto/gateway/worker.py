"""A gunicorn worker on gevent that parses HTTP/1.1 with httptools (llhttp, in C).

Select it with ``BRUTO_WORKER_CLASS=bruto.gateway.worker.HttptoolsGeventWorker``
(bruto.gateway.gunicorn_conf reads it through bruto.config).

Why: gunicorn's own gevent worker spends ~140-210 µs of CPU per POST /payments
(tools/bench_worker.py), of which Falcon and bruto take ~15 %: the rest is
gunicorn's pure-Python parser (``Request.__init__``: 15 %), its environ and
response objects, a ``gevent.Timeout`` per request and two ``datetime.now()``
for the access log (docs/BENCHMARKS.md has the profile). This worker keeps
everything gunicorn does as a process manager (the arbiter, signals, the
heartbeat, graceful stop, max_requests) and gevent as the concurrency model
(one greenlet per connection, cooperative sockets), and replaces only the
per-connection loop: llhttp parses, a small per-connection template environ is
copied per request, and every answer of a read goes out in one ``send``.

Behaviour:
- HTTP/1.0 and 1.1, keep-alive as the request asks (``Connection``), pipelined
  requests answered in order, chunked request bodies de-chunked (the app sees
  ``CONTENT_LENGTH`` of the whole body).
- ``Expect: 100-continue`` is answered before the body is read.
- A request line over ``limit_request_line``, more header bytes than
  ``limit_request_fields * limit_request_field_size`` or more than
  ``limit_request_fields`` headers: 431/414 and close. A body over
  ``MAX_BODY`` bytes (bruto's validation limit): 413 and close (it is never
  read into memory).
  Malformed HTTP: 400 and close.
- Header names with ``_`` are dropped (as gunicorn's default
  ``header_map = "drop"``), so ``X_Forwarded_For`` cannot pose as
  ``X-Forwarded-For``.
- A connection silent for ``keepalive`` seconds (idle, or stalled within a
  request) is closed after one to two such periods; on a graceful stop, idle
  connections are closed at once.
- The app's answer is buffered whole (bruto's bodies are tiny) and sent with a
  Content-Length; an app error answers 500 and closes the connection.
- No access log (bruto runs with ``accesslog = None``), no HTTP/2, no TLS.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import time
from urllib.parse import unquote_to_bytes

import gevent
import gevent.pool
import gevent.socket
import httptools
from gunicorn.workers.ggevent import GeventWorker

from bruto.gateway.counters import note_protocol_error
from bruto.gateway.errors import error_body

# Largest request body read into memory: the one bruto's validation takes, so
# a larger body gets the same 413 whether the worker or the app refuses it,
# and is never read.
from bruto.gateway.validation import MAX_BODY

RECV_SIZE = 65536
# Most client descriptors taken from a handoff channel in one read.
MAX_HANDOFF_FDS = 64
# How often the connection watcher wakes (to notice a stopping worker).
WATCH_TICK_S = 0.25

_HTTP_VERSION = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
# Statuses whose answers carry no body (RFC 9110 §6.4.1).
_NO_BODY_PREFIXES = ("1", "204", "304")

# Canned answers for what never reaches the app; each closes the connection.
_REJECTIONS = {
    400: b"400 Bad Request",
    413: b"413 Content Too Large",
    414: b"414 URI Too Long",
    431: b"431 Request Header Fields Too Large",
    500: b"500 Internal Server Error",
}


def _rejection(status: int, message: str) -> bytes:
    note_protocol_error(status)
    body = error_body(message)
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (_REJECTIONS[status], len(body), body)
    )


class _Reject(Exception):
    """Raised from a parser callback: answer ``status`` and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class _HttpDate:
    """The Date header's value, formatted at most once a second."""

    __slots__ = ("second", "text")

    def __init__(self):
        self.second = -1
        self.text = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        return self.text


_HEADER_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
}


def _environ_key(name: bytes) -> str | None:
    """The WSGI environ key of a header name; None to drop it. Cached per name."""
    key = _HEADER_KEYS.get(name)
    if key is not None or name in _HEADER_KEYS:
        return key
    lowered = name.lower()
    if lowered in _HEADER_KEYS:
        key = _HEADER_KEYS[lowered]
    elif b"_" in lowered:
        key = None  # NOTE: dropped, like gunicorn's header_map = "drop"
    else:
        key = "HTTP_" + lowered.decode("latin-1").upper().replace("-", "_")
    if len(_HEADER_KEYS) < 512:  # names come from clients: bound the cache
        _HEADER_KEYS[name] = key
    return key


class _Connection:
    """One client connection: the parser's callbacks collect complete requests.

    Each request's environ is built as llhttp parses it (a copy of the
    connection's template, one key per header as it comes), so a request
    costs one pass over its headers.

    Args:
        environ: The template environ of this connection (copied per request).
        limits: ``(request line, header bytes, header count)``.
    """

    __slots__ = (
        "environ", "parser", "ready", "url", "request", "fields", "body", "body_size", "head_size",
        "continue_wanted", "limit_line", "limit_head", "limit_fields", "in_message",
        "waiting", "reads", "reads_at_last_pass",
    )

    def __init__(self, environ: dict, limits: tuple[int, int, int]):
        self.environ = environ
        self.limit_line, self.limit_head, self.limit_fields = limits
        self.parser = httptools.HttpRequestParser(self)
        self.ready: list[tuple[dict, bool]] = []
        self.in_message = False
        self.continue_wanted = False
        # Kept by the worker's loop for its watcher: waiting for a request,
        # reads so far, and reads at the watcher's last pass.
        self.waiting = False
        self.reads = 0
        self.reads_at_last_pass = -1

    # httptools callbacks, in the order llhttp calls them.

    def on_message_begin(self) -> None:
        self.in_message = True
        self.url = b""
        self.request = self.environ.copy()
        self.fields = 0
        self.head_size = 0
        self.body: list[bytes] = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limit_line:
            raise _Reject(414, "request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        self.head_size += len(name) + len(value) + 4
        if self.fields > self.limit_fields:
            raise _Reject(431, "too many header fields")
        if self.head_size > self.limit_head:
            raise _Reject(431, "header fields are too large")
        key = _environ_key(name)
        if key is None:
            return
        if key == "CONTENT_LENGTH":
            # llhttp checks it is one decimal number; a larger body is never read.
            if int(value) > MAX_BODY:
                raise _Reject(413, f"body is larger than {MAX_BODY} bytes")
        elif key == "HTTP_EXPECT" and value.lower() == b"100-continue":
            self.continue_wanted = True
        text = value.decode("latin-1")
        request = self.request
        if key in request and key.startswith("HTTP_"):
            text = request[key] + "," + text  # repeated header: one comma-joined value
        request[key] = text

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_BODY:  # chunked bodies have no length up front
            raise _Reject(413, f"body is larger than {MAX_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.continue_wanted = False
        parser = self.parser
        environ = self.request
        method = parser.get_method()
        environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
        environ["SERVER_PROTOCOL"] = _HTTP_VERSION.get(parser.get_http_version(), "HTTP/1.1")
        url = self.url
        if url[:1] != b"/":
            url = _origin_form(url)
        path, _, query = url.partition(b"?")
        query = query.partition(b"#")[0]
        if b"%" in path:
            path = unquote_to_bytes(path)
        environ["PATH_INFO"] = path.decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        if body or "CONTENT_LENGTH" in environ:
            # Chunked bodies arrive de-chunked: the app sees their real length.
            environ["CONTENT_LENGTH"] = str(len(body))
        environ["wsgi.input"] = io.BytesIO(body)
        self.ready.append((environ, parser.should_keep_alive()))


def _send(client, data: bytes) -> None:
    """Send all of ``data``: one ``send`` when the socket takes it whole, as it does an answer.

    gevent's ``sendall`` asks the kernel for the socket's buffer size on every
    call (a ``getsockopt`` per answer: ~11 % of the worker's samples when
    requests come one at a time, docs/BENCHMARKS.md, issue 14).
    """
    sent = client.send(data)
    if sent < len(data):
        client.sendall(memoryview(data)[sent:])


def _stop_reading(channel) -> None:
    """Refuse further handoffs on ``channel`` (the sender gets EPIPE); what is queued stays readable."""
    try:
        channel.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already shut, or gone


def _peer(client) -> object:
    """A handed-over client's address, or None if it is already gone."""
    try:
        return client.getpeername()
    except OSError:
        return None


def _origin_form(url: bytes) -> bytes:
    """``http://host/path?q`` (absolute form) or ``*`` to a path with its query."""
    if url == b"*":
        return b"*"
    parsed = httptools.parse_url(url)
    path = parsed.path or b"/"
    return path + (b"?" + parsed.query if parsed.query else b"")


class HttptoolsGeventWorker(GeventWorker):
    """gunicorn's gevent worker with an httptools connection loop (see the module)."""

    def init_process(self):
        self._date = _HttpDate()
        cfg = self.cfg
        self._limits = (
            cfg.limit_request_line or 1 << 20,
            (cfg.limit_request_field_size or 8190) * (cfg.limit_request_fields or 100),
            cfg.limit_request_fields or 100,
        )
        # NOTE: connections carry no socket timeout, which would start and
        # cancel a gevent.Timeout around every wait for a request (~5 % of the
        # worker's CPU per request, bench_worker profile). One watcher
        # greenlet closes what stays silent instead (see _watch_connections).
        self._silence_s = float(max(cfg.keepalive or 0, 1))
        self._connections: dict = {}
        self._channels: set = set()
        # NOTE: every connection reads into this one buffer: llhttp consumes
        # what was read before the greenlet can yield, so no two reads are
        # ever pending in it at once, and no read allocates (``recv`` would
        # allocate RECV_SIZE bytes and shrink them, per read).
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        super().init_process()

    def run(self):
        gevent.spawn(self._watch_connections)
        super().run()

    def _watch_connections(self):
        """Close silent connections, and idle ones as soon as the worker stops.

        Every ``keepalive`` seconds, a connection that has not delivered a
        byte since the previous pass is closed, whether idle between requests
        or stalled within one (or not reading its answer): so a peer is cut
        after between one and two ``keepalive`` periods of silence, never
        earlier, which keeps the load balancer's shorter idle timeout the one
        that acts. Once the worker stops (``alive`` false), connections
        waiting for their next request are closed at once, so a graceful stop
        does not wait out keep-alive peers; busy ones close after their
        answer, new ones after their first answer; handoff channels stop
        taking connections (``_serve_handoffs``).
        """
        ticks_per_pass = max(1, int(self._silence_s / WATCH_TICK_S))
        tick = 0
        while self.alive:
            gevent.sleep(WATCH_TICK_S)
            tick += 1
            if tick % ticks_per_pass == 0:
                for client, conn in list(self._connections.items()):
                    if conn.reads == conn.reads_at_last_pass:
                        client.close()  # its greenlet gets an OSError and ends
                    conn.reads_at_last_pass = conn.reads
        for client, conn in list(self._connections.items()):
            if conn.waiting and conn.reads:  # a new one first gets its request answered
                client.close()
        for channel in list(self._channels):
            _stop_reading(channel)  # its loop drains what is queued, then ends

    def _connection_environ(self, client, addr) -> dict:
        environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": self.cfg.workers > 1,
            "wsgi.run_once": False,
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "bruto",
        }
        try:
            name = client.getsockname()
        except OSError:
            name = ""
        if isinstance(name, tuple):
            environ["SERVER_NAME"], environ["SERVER_PORT"] = str(name[0]), str(name[1])
        else:
            environ["SERVER_NAME"], environ["SERVER_PORT"] = "localhost", ""
        if isinstance(addr, tuple) and len(addr) >= 2:
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = str(addr[0]), str(addr[1])
        return environ

    def handle(self, listener, client, addr):
        """Serve one accepted connection: a client's, or a balancer's handoff channel.

        A unix-socket connection whose first message carries file descriptors
        is a handoff channel from ``bruto.balancer``: each descriptor is a
        client connection to serve here (see ``_serve_handoffs``).
        """
        conn = self._register(client, addr)
        if client.family != socket.AF_UNIX:
            self._serve(client, conn, None)
            return
        conn.waiting = True  # the watcher may close it while it stays silent
        try:
            first, fds, flags, _ = socket.recv_fds(client, RECV_SIZE, MAX_HANDOFF_FDS, socket.MSG_CMSG_CLOEXEC)
        except OSError:
            first, fds, flags = b"", [], 0  # _serve sees the end of the stream and closes
        if fds or flags & socket.MSG_CTRUNC:
            del self._connections[client]
            self._serve_handoffs(client, fds, flags)
        else:
            self._serve(client, conn, first)

    def _register(self, client, addr) -> _Connection:
        conn = _Connection(self._connection_environ(client, addr), self._limits)
        self._connections[client] = conn
        client.settimeout(None)  # cooperative waits without a gevent.Timeout each
        return conn

    def _serve_handoffs(self, channel, fds: list[int], flags: int) -> None:
        """Serve the client connections a balancer passes on ``channel`` until it closes.

        Once the worker stops, the channel is shut for reading: the balancer's
        next handoff fails at once and goes to another instance, while the
        connections already queued in the channel are still taken and each
        gets its request answered (with ``Connection: close``).
        """
        served = gevent.pool.Pool(self.worker_connections)
        self._channels.add(channel)
        try:
            while True:
                if flags & socket.MSG_CTRUNC:
                    self.log.error("a handoff channel dropped client descriptors (out of descriptors?)")
                for fd in fds:
                    try:
                        client = gevent.socket.socket(fileno=fd)
                    except OSError:  # not a socket: nothing to serve
                        os.close(fd)
                        continue
                    served.spawn(self._serve, client, self._register(client, _peer(client)), None)
                if not self.alive:
                    _stop_reading(channel)
                try:
                    data, fds, flags, _ = socket.recv_fds(
                        channel, MAX_HANDOFF_FDS, MAX_HANDOFF_FDS, socket.MSG_CMSG_CLOEXEC)
                except OSError:
                    return
                if not data:
                    return  # the balancer closed it, or it is drained after a stop
        finally:
            self._channels.discard(channel)
            channel.close()
            served.join()  # a stopping worker lets its clients' current requests finish

    def _serve(self, client, conn: _Connection, first: bytes | None) -> None:
        """Serve one registered client connection until the client closes it or it must close.

        ``first``: bytes already read from it (None: nothing read yet).
        """
        feed = conn.parser.feed_data
        ready = conn.ready
        buffer, view = self._buffer, self._view
        try:
            while True:
                if not conn.in_message:
                    # NOTE: a stopping worker still answers a connection's
                    # first request: it may be one the balancer handed over
                    # just before the stop, whose client is already waiting.
                    if not self.alive and conn.reads:
                        return
                    conn.waiting = True
                if first is None:
                    try:
                        data = view[:client.recv_into(buffer)]
                    except OSError:
                        return
                else:
                    data, first = first, None
                conn.waiting = False
                conn.reads += 1
                if not data:
                    return
                close = False
                try:
                    feed(data)
                except httptools.HttpParserUpgrade:
                    close = True  # bytes after an upgrade request are another protocol
                except httptools.HttpParserError as error:
                    rejected = error.__context__
                    # Requests complete before the bad one are still answered.
                    out = self._answer(ready)[0] if ready else b""
                    if isinstance(rejected, _Reject):
                        out += _rejection(rejected.status, rejected.message)
                    else:
                        out += _rejection(400, "malformed HTTP request")
                    self._send_quietly(client, out)
                    return
                if ready:
                    out, keep_alive = self._answer(ready)
                    _send(client, out)
                    if close or not keep_alive:
                        return
                elif conn.continue_wanted:
                    conn.continue_wanted = False
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                elif close:
                    return
        except OSError:
            pass  # the client went away mid-answer, or was closed as silent
        finally:
            del self._connections[client]
            client.close()

    @staticmethod
    def _send_quietly(client, data: bytes) -> None:
        try:
            client.sendall(data)
        except OSError:
            pass

    def _answer(self, ready: list) -> tuple[bytes, bool]:
        """Run the app on each complete request; their answers, concatenated, and keep-alive."""
        chunks = []
        keep_alive = True
        for environ, wants_keep_alive in ready:
            keep_alive = wants_keep_alive and self.alive
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
                keep_alive = False
            answer = self._call_app(environ, keep_alive)
            if answer is None:
                chunks.append(_rejection(500, "internal server error"))
                keep_alive = False
                break
            chunks.append(answer)
            if not keep_alive:
                break
            if len(ready) > 1:
                # NOTE: pipelined requests: the worker's other connections go in between, or one
                # client's hundreds of requests hold them all up (docs/RELIABILITY.md, slow clients).
                gevent.sleep(0)
        ready.clear()
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), keep_alive

    def _call_app(self, environ: dict, keep_alive: bool) -> bytes | None:
        """The app's whole answer as bytes, or None if it failed."""
        started = []

        def start_response(status, headers, exc_info=None):
            if exc_info and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = (status, headers)
            return body_parts.append

        body_parts: list[bytes] = []
        try:
            result = self.wsgi(environ, start_response)
            try:
                for part in result:
                    if part:
                        body_parts.append(part)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = started
            return self._render(environ, status, headers, body_parts, keep_alive)
        except Exception:
            self.log.exception("Error handling request %s %s", environ.get("REQUEST_METHOD"),
                               environ.get("PATH_INFO"))
            return None

    def _render(self, environ, status: str, headers, body_parts: list, keep_alive: bool) -> bytes:
        body = b"".join(body_parts) if len(body_parts) != 1 else body_parts[0]
        lines = ["HTTP/1.1 ", status, "\r\n"]
        has_length = False
        for name, value in headers:
            if not has_length and name.lower() == "content-length":
                has_length = True
            if "\n" in value or "\r" in value:
                # It would split the answer (response splitting): refuse it.
                raise ValueError(f"response header {name!r} holds a line break")
            lines += (name, ": ", value, "\r\n")
        if status.startswith(_NO_BODY_PREFIXES):
            body = b""
        else:
            if environ["REQUEST_METHOD"] == "HEAD":
                body = b""
            if not has_length:
                lines += ("Content-Length: ", str(len(body)), "\r\n")
        lines += ("Date: ", self._date.get(), "\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + body
