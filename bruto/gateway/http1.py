"""HTTP/1.1 for bruto's worker, sans I/O: bytes in, requests out; an answer in, bytes out.

A :class:`Connection` is one client connection's protocol state. It knows no
socket: the transport (bruto.gateway.worker) hands it the bytes it reads
(:meth:`Connection.receive`), gets back the requests they complete as WSGI
environs, runs the app on each and writes what :meth:`Connection.respond`
returns. llhttp (httptools, in C) parses; this module decides what bruto
accepts:

- HTTP/1.0 and 1.1 only. Keep-alive as the request asks (``Connection``, the
  version's default); pipelined requests come out in order; a chunked body is
  de-chunked (the app sees the ``CONTENT_LENGTH`` of the whole body).
- ``Expect: 100-continue`` on HTTP/1.1: once such a request's head is in and
  its body is not, :attr:`Connection.expects_continue` is set; the transport
  writes :data:`CONTINUE`.
- Limits like gunicorn's (:class:`Limits`): a request line over 4094 bytes
  gets 414, a header field over 8190 bytes or more than 100 fields 431, a
  body over the app's limit 413 (never read: a Content-Length says so up
  front, a chunked body is counted as it comes). A field is its name, ``: ``
  and its value; one still arriving is refused once its line holds twice
  that limit, so a client cannot make the connection hold more.
- Failing closed on framing two parties could read differently (request
  smuggling): Content-Length with Transfer-Encoding, Content-Length twice or
  not one decimal number, a Transfer-Encoding other than a final
  ``chunked``, Transfer-Encoding on HTTP/1.0, a bare LF for a line end,
  obs-fold (a header line continued on the next): 400.
- Header names with ``_`` are dropped (as gunicorn's default ``header_map =
  "drop"``), so ``X_Forwarded_For`` cannot pose as ``X-Forwarded-For``;
  repeated headers are joined with commas.

Every refusal is a :class:`Rejection`: its answer says ``Connection: close``
and the connection is done (:attr:`Connection.must_close`), as it is after an
upgrade request or an answer without keep-alive: it takes no more bytes, and
the transport closes it once what it was given to write is written. Requests
complete before a refused one are still returned, to be answered first.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import httptools

from bruto.gateway.errors import error_body
from bruto.gateway.validation import MAX_BODY

Environ = dict[str, Any]
# A complete request: its environ, and whether the client wants the connection kept.
Request = tuple[Environ, bool]

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_HTTP_VERSION = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
# Statuses whose answers carry no body (RFC 9110 §6.4.1).
_NO_BODY_PREFIXES = ("1", "204", "304")
# The request line beyond its target: the method's first byte aside, a space,
# the longest method llhttp knows, a space and ``HTTP/1.1``.
_LINE_BEYOND_TARGET = 1 + 11 + 1 + 8
_REASONS = {
    400: "Bad Request",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}
MALFORMED = "malformed HTTP request"


# Keys every request's environ gets (placeholders in the template).
_SET_PER_REQUEST: Environ = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/",
                             "QUERY_STRING": "", "wsgi.input": None}


class Limits(NamedTuple):
    """What one request may hold before it is refused (gunicorn's defaults for the head)."""

    request_line: int = 4094
    field_size: int = 8190
    fields: int = 100
    # The app's own body limit, so a larger body gets the same 413 whether the
    # protocol or the app refuses it, and is never read.
    body: int = MAX_BODY


class Rejection(NamedTuple):
    """A request refused before any app sees it: its status and the error message."""

    status: int
    message: str

    def to_bytes(self) -> bytes:
        """The answer: a JSON error (bruto.gateway.errors), and the connection closed."""
        body = error_body(self.message)
        return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
            self.status, _REASONS[self.status].encode(), len(body), body)


class _Refused(Exception):
    """Raised from a parser callback to stop llhttp; the reason is in ``Connection.rejection``."""


def http_date() -> str:
    """The Date header's value now."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


class HttpDate:
    """The Date header's value, formatted at most once a second: :meth:`now` is a ``date`` for :class:`Connection`."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.text = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
        return self.text


_HEADER_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
}
_NOT_CACHED = "not cached"


def _environ_key(name: bytes) -> str | None:
    """The WSGI environ key of a header name not in _HEADER_KEYS yet; None to drop it. Cached."""
    lowered = name.lower()
    key: str | None
    if lowered in _HEADER_KEYS:
        key = _HEADER_KEYS[lowered]
    elif b"_" in lowered:
        key = None  # dropped, like gunicorn's header_map = "drop"
    else:
        key = "HTTP_" + lowered.decode("latin-1").upper().replace("-", "_")
    if len(_HEADER_KEYS) < 512:  # names come from clients: bound the cache
        _HEADER_KEYS[name] = key
    return key


def _origin_form(url: bytes) -> bytes:
    """``http://host/path?q`` (absolute form) or ``*`` to a path with its query."""
    if url == b"*":
        return b"*"
    parsed = httptools.parse_url(url)
    path = parsed.path or b"/"
    return path + (b"?" + parsed.query if parsed.query else b"")


class Connection:
    """One client connection's HTTP/1.1 state (see the module).

    Each request's environ is built as llhttp parses it (a copy of the
    connection's template, one key per header as it comes), so a request
    costs one pass over its head.

    Args:
        environ: The template environ of this connection (copied per request):
            the WSGI and server keys, the peer's address.
        limits: What a request may hold.
        date: The Date header's value (the transport's clock).
    """

    __slots__ = (
        "environ", "limits", "date", "parser", "rejection", "must_close", "expects_continue", "in_message",
        "_ready", "_url", "_request", "_fields", "_body", "_body_size", "_in_head", "_unfinished_line",
        "_max_target", "_max_fields", "_max_field", "_max_body",
    )

    def __init__(self, environ: Environ, limits: Limits = Limits(), date: Callable[[], str] = http_date):
        # NOTE: the keys every request sets are in the template already, so a
        # request's copy has room for its headers without growing its table.
        self.environ = {**environ, **_SET_PER_REQUEST}
        self.limits = limits
        self.date = date
        # The limits as plain attributes: read per request and per header.
        self._max_target = limits.request_line - _LINE_BEYOND_TARGET
        self._max_fields = limits.fields
        self._max_field = limits.field_size
        self._max_body = limits.body
        self.parser = httptools.HttpRequestParser(self)
        self.rejection: Rejection | None = None
        self.must_close = False
        self.expects_continue = False
        self.in_message = False
        self._ready: list[Request] = []
        self._in_head = False
        self._unfinished_line = 0

    def receive(self, data: bytes | bytearray | memoryview) -> list[Request]:
        """Take bytes read from the client; the requests they complete, in order.

        Afterwards, ``rejection`` set: answer the requests returned, then the
        rejection, and close. Once ``must_close``, bytes are ignored.
        """
        if self.must_close:
            return []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.must_close = True  # bytes after an upgrade request are another protocol
        except httptools.HttpParserError:
            # After a request without keep-alive, llhttp refuses whatever
            # follows: those bytes are ignored, the request still answered.
            if self.rejection is None and not self.must_close:
                self.rejection = Rejection(400, MALFORMED)  # llhttp's own refusal, not one of ours
            self.must_close = True
        else:
            if self._in_head:
                self._measure_unfinished_line(data)
        ready = self._ready
        if ready:
            self._ready = []
        return ready

    def _measure_unfinished_line(self, data: bytes | bytearray | memoryview) -> None:
        """Refuse a head line growing past its limit before it ends (llhttp holds no limit of its own).

        Only a read that ends within a head comes here: a request arriving
        whole, as nearly all do, does not.
        """
        newline = bytes(data).rfind(b"\n")
        if newline >= 0:
            self._unfinished_line = len(data) - newline - 1
        else:
            self._unfinished_line += len(data)
        # The request line's target is measured by on_url (414); this is a header
        # line. on_header measures a field exactly (name and value) once it ends;
        # twice that limit leaves room for any whitespace around a value that fits.
        if self._unfinished_line > 2 * self._max_field and self.rejection is None:
            self.rejection = Rejection(431, "a header field is too large")
            self.must_close = True

    def _refuse(self, status: int, message: str) -> None:
        self.rejection = Rejection(status, message)
        raise _Refused(message)

    # httptools callbacks, in the order llhttp calls them.

    def on_message_begin(self) -> None:
        self.in_message = True
        self._in_head = True
        self._unfinished_line = 0
        self._url = b""
        self._request = self.environ.copy()
        self._fields = 0
        self._body: list[bytes] = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_target:
            # Measured exactly only near the limit: the method is llhttp's to fetch.
            line = len(self.parser.get_method()) + 1 + len(self._url) + 9
            if line > self.limits.request_line:
                self._refuse(414, "request line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self._max_fields:
            self._refuse(431, "too many header fields")
        if len(name) + len(value) + 2 > self._max_field:
            self._refuse(431, "a header field is too large")
        key = _HEADER_KEYS.get(name, _NOT_CACHED)  # the function call only for a name not seen yet
        if key is _NOT_CACHED:
            key = _environ_key(name)
        if key is None:
            return
        if key == "CONTENT_LENGTH":
            # llhttp checks it is one decimal number, and the only one.
            if int(value) > self._max_body:
                self._refuse(413, f"body is larger than {self._max_body} bytes")
        elif key == "HTTP_EXPECT" and value.lower() == b"100-continue":
            self.expects_continue = True
        text = value.decode("latin-1")
        request = self._request
        if key in request and key.startswith("HTTP_"):
            text = request[key] + "," + text  # repeated header: one comma-joined value
        request[key] = text

    def on_headers_complete(self) -> None:
        self._in_head = False
        request = self._request
        protocol = _HTTP_VERSION.get(self.parser.get_http_version())
        if protocol is None:
            self._refuse(400, "only HTTP/1.0 and HTTP/1.1 are served")
        elif protocol == "HTTP/1.0":
            if "HTTP_TRANSFER_ENCODING" in request:  # RFC 9112 §6.1: faulty framing
                self._refuse(400, MALFORMED)
            self.expects_continue = False  # a 1.0 client does not know 100
        request["SERVER_PROTOCOL"] = protocol

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:  # chunked bodies have no length up front
            self._refuse(413, f"body is larger than {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self.expects_continue = False
        environ = self._request
        method = self.parser.get_method()
        environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
        url = self._url
        if url[:1] != b"/":
            url = _origin_form(url)
        if b"#" in url:  # a fragment is the client's own: never sent, dropped if it is
            url = url.partition(b"#")[0]
        path, _, query = url.partition(b"?")
        if b"%" in path:
            path = unquote_to_bytes(path)
        environ["PATH_INFO"] = path.decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        if body or "CONTENT_LENGTH" in environ:
            # Chunked bodies arrive de-chunked: the app sees their real length.
            environ["CONTENT_LENGTH"] = str(len(body))
        environ["wsgi.input"] = io.BytesIO(body)
        keep_alive = self.parser.should_keep_alive()
        if not keep_alive:
            self.must_close = True  # answered, then closed
        self._ready.append((environ, keep_alive))

    # Answers.

    def send_continue(self) -> bytes:
        """The interim 100 answer a request with ``Expect: 100-continue`` waits for (once)."""
        self.expects_continue = False
        return CONTINUE

    def respond(self, environ: Environ, status: str, headers: Iterable[tuple[str, str]], body: bytes,
                keep_alive: bool) -> bytes:
        """The bytes of the answer to the request of ``environ``.

        ``status`` is WSGI's (``"202 Accepted"``); a Content-Length is added
        unless the app gave one; a HEAD request or a status without a body
        gets none. ``keep_alive`` false: the answer says ``Connection:
        close`` and the connection is done.

        Raises:
            ValueError: A header value holds a line break (it would split the answer).
        """
        lines = ["HTTP/1.1 ", status, "\r\n"]
        has_length = False
        for name, value in headers:
            if not has_length and name.lower() == "content-length":
                has_length = True
            if "\n" in value or "\r" in value:
                raise ValueError(f"response header {name!r} holds a line break")
            lines += (name, ": ", value, "\r\n")
        if status.startswith(_NO_BODY_PREFIXES):
            body = b""
        else:
            if environ["REQUEST_METHOD"] == "HEAD":
                body = b""
            if not has_length:
                lines += ("Content-Length: ", str(len(body)), "\r\n")
        lines += ("Date: ", self.date(), "\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
            self.must_close = True
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + body

    def fail(self, status: int, message: str) -> bytes:
        """The answer for a request the server could not answer (its app failed): the connection is done."""
        self.must_close = True
        return Rejection(status, message).to_bytes()
