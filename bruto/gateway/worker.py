"""bruto's gunicorn worker: gevent sockets feeding the HTTP/1.1 protocol of bruto.gateway.http1.

Select it with ``BRUTO_WORKER_CLASS=bruto.gateway.worker.HttptoolsGeventWorker``
(bruto.gateway.gunicorn_conf reads it through bruto.config).

Why: gunicorn's own gevent worker spends most of its CPU per request in its
pure-Python parser, its environ and response objects, a ``gevent.Timeout``
per request and the access log's clock, not in Falcon and bruto
(docs/BENCHMARKS.md has the profile). This worker keeps everything gunicorn
does as a process manager (the arbiter, signals, the heartbeat, graceful
stop, max_requests) and gevent as the concurrency model (one greenlet per
connection, cooperative sockets), and replaces the per-connection loop.

The protocol (parsing, limits, keep-alive, answers as bytes) is
bruto.gateway.http1, which knows no socket. This module is the transport:

- :class:`Server` reads each connection, feeds its protocol, runs the WSGI
  app on each request it completes and writes every answer of a read in one
  ``send``; a rejection is written, then the connection closed. Pipelined
  requests yield to the worker's other connections between two answers.
- A connection silent for ``keepalive`` seconds (idle, or stalled within a
  request) is closed after one to two such periods; on a graceful stop, idle
  connections are closed at once.
- A unix-socket connection whose first message carries descriptors is a
  balancer's handoff channel (bruto.handoff): each descriptor is a client to
  serve here.
- The app's answer is buffered whole (bruto's bodies are tiny); an app
  error answers 500 and closes the connection. No access log, no TLS.
- :class:`HttptoolsGeventWorker` is gunicorn's gevent worker with a Server
  as its connection handler.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.pool
import gevent.socket
from gunicorn.workers.ggevent import GeventWorker

from bruto import handoff
from bruto.gateway.counters import note_protocol_error
from bruto.gateway.http1 import Connection
from bruto.gateway.http1 import Environ
from bruto.gateway.http1 import HttpDate
from bruto.gateway.http1 import Limits
from bruto.gateway.http1 import Request

RECV_SIZE = 65536
# How often the connection watcher wakes (to notice a stopping worker).
WATCH_TICK_S = 0.25
# How long, and how much, a refused client may still send before its connection closes.
LINGER_S = 1.0
LINGER_BYTES = 1 << 20

WsgiApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


def call_app(app: WsgiApp, environ: Environ) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run a WSGI app on one request: its status, headers and whole body."""
    started: list[Any] = []
    body_parts: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = (status, headers)
        return body_parts.append

    result = app(environ, start_response)
    try:
        for part in result:
            if part:
                body_parts.append(part)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return status, headers, b"".join(body_parts) if len(body_parts) != 1 else body_parts[0]


class _Client:
    """What the transport keeps of one connection beside its protocol, for the watcher."""

    __slots__ = ("protocol", "waiting", "reads", "reads_at_last_pass")

    def __init__(self, protocol: Connection):
        self.protocol = protocol
        self.waiting = False  # for its next request
        self.reads = 0
        self.reads_at_last_pass = -1


def _send(client: socket.socket, data: bytes) -> None:
    """Send all of ``data``: one ``send`` when the socket takes it whole, as it does an answer.

    gevent's ``sendall`` asks the kernel for the socket's buffer size on every
    call (a ``getsockopt`` per answer, docs/BENCHMARKS.md).
    """
    sent = client.send(data)
    if sent < len(data):
        client.sendall(memoryview(data)[sent:])


def _refuse(client: socket.socket, data: bytes) -> None:
    """Write a refusal, then read and drop what the client still sends before the connection closes.

    Closing a socket with bytes unread makes the kernel reset the connection,
    and a reset can drop the refusal before the client reads it. So the
    connection is half-closed and drained (a lingering close, as nginx's)
    until the client closes its side, for at most LINGER_S and LINGER_BYTES.
    """
    try:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_S
        drained = 0
        while drained < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            client.settimeout(left)
            chunk = client.recv(RECV_SIZE)
            if not chunk:
                return
            drained += len(chunk)
    except OSError:
        pass  # the client is gone, or took too long: nothing more to tell it


def _stop_reading(channel: socket.socket) -> None:
    """Refuse further handoffs on ``channel`` (the sender gets EPIPE); what is queued stays readable."""
    try:
        channel.shutdown(socket.SHUT_RD)
    except OSError:
        pass  # already shut, or gone


def _peer(client: socket.socket) -> Any:
    """A handed-over client's address, or None if it is already gone."""
    try:
        return client.getpeername()
    except OSError:
        return None


class Server:
    """Serves HTTP/1.1 connections with a WSGI app on gevent (see the module); no gunicorn in it.

    Args:
        app: The WSGI app.
        limits: What a request may hold (bruto.gateway.http1.Limits).
        keepalive_s: Silence after which a connection is closed (at least 1 s).
        max_requests: Requests after which the server stops (0: never).
        pool_size: Most client connections served per handoff channel.
        multiprocess: ``wsgi.multiprocess``: other processes serve the same app.
        log: Where app errors and autorestarts are logged.
    """

    def __init__(self, app: WsgiApp, *, limits: Limits = Limits(), keepalive_s: float = 2.0,
                 max_requests: int = 0, pool_size: int = 1000, multiprocess: bool = False,
                 log: logging.Logger | Any = None):
        self.app = app
        self.limits = limits
        self.silence_s = float(max(keepalive_s, 1))
        self.max_requests = max_requests or sys.maxsize
        self.pool_size = pool_size
        self.log = log or logging.getLogger("bruto.gateway.worker")
        # False once stopping: connections close after their current answer.
        self.alive = True
        self.requests = 0
        self._date = HttpDate()
        self._environ: Environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "SCRIPT_NAME": "",
            "SERVER_SOFTWARE": "bruto",
        }
        self._clients: dict[socket.socket, _Client] = {}
        self._channels: set[socket.socket] = set()
        # NOTE: every connection reads into this one buffer: the protocol
        # consumes what was read before the greenlet can yield, so no two
        # reads are ever pending in it at once, and no read allocates.
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    def handle(self, client: socket.socket, addr: Any) -> None:
        """Serve one accepted connection until it closes: a client's, or a balancer's handoff channel."""
        record = self._register(client, addr)
        if client.family != socket.AF_UNIX:
            self._serve(client, record, None)
            return
        record.waiting = True  # the watcher may close it while it stays silent
        try:
            first, fds, truncated = handoff.receive(client, RECV_SIZE)
        except OSError:
            first, fds, truncated = b"", [], False  # _serve sees the end of the stream and closes
        if fds or truncated:
            del self._clients[client]
            self._serve_handoffs(client, fds, truncated)
        else:
            self._serve(client, record, first)

    def watch(self) -> None:
        """Close silent connections, and idle ones as soon as the server stops; returns once it has.

        Every ``keepalive`` seconds, a connection that has not delivered a
        byte since the previous pass is closed, whether idle between requests
        or stalled within one (or not reading its answer): so a peer is cut
        after between one and two ``keepalive`` periods of silence, never
        earlier, which keeps the load balancer's shorter idle timeout the one
        that acts. Once the server stops (``alive`` false), connections
        waiting for their next request are closed at once, so a graceful stop
        does not wait out keep-alive peers; busy ones close after their
        answer, new ones after their first answer; handoff channels stop
        taking connections.
        """
        ticks_per_pass = max(1, int(self.silence_s / WATCH_TICK_S))
        tick = 0
        while self.alive:
            gevent.sleep(WATCH_TICK_S)
            tick += 1
            if tick % ticks_per_pass == 0:
                for client, record in list(self._clients.items()):
                    if record.reads == record.reads_at_last_pass:
                        client.close()  # its greenlet gets an OSError and ends
                    record.reads_at_last_pass = record.reads
        for client, record in list(self._clients.items()):
            if record.waiting and record.reads:  # a new one first gets its request answered
                client.close()
        for channel in list(self._channels):
            _stop_reading(channel)  # its loop drains what is queued, then ends

    def answer(self, protocol: Connection, requests: list[Request]) -> bytes:
        """Run the app on each request: their answers, concatenated (a failed app's 500 ends them)."""
        chunks = []
        for environ, wants_keep_alive in requests:
            self.requests += 1
            if self.requests >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            keep_alive = wants_keep_alive and self.alive
            try:
                status, headers, body = call_app(self.app, environ)
                chunks.append(protocol.respond(environ, status, headers, body, keep_alive))
            except Exception:
                self.log.exception("Error handling request %s %s", environ.get("REQUEST_METHOD"),
                                   environ.get("PATH_INFO"))
                note_protocol_error(500)
                chunks.append(protocol.fail(500, "internal server error"))
                break
            if not keep_alive:
                break
            if len(requests) > 1:
                # NOTE: pipelined requests: the worker's other connections go in between, or one
                # client's hundreds of requests hold them all up (docs/RELIABILITY.md, slow clients).
                gevent.sleep(0)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _register(self, client: socket.socket, addr: Any) -> _Client:
        environ = self._environ.copy()
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
        record = _Client(Connection(environ, self.limits, self._date.now))
        self._clients[client] = record
        client.settimeout(None)  # cooperative waits without a gevent.Timeout each (the watcher times out)
        return record

    def _serve_handoffs(self, channel: socket.socket, fds: list[int], truncated: bool) -> None:
        """Serve the client connections a balancer passes on ``channel`` until it closes.

        Once the server stops, the channel is shut for reading: the balancer's
        next handoff fails at once and goes to another instance, while the
        connections already queued in the channel are still taken and each
        gets its request answered (with ``Connection: close``).
        """
        served = gevent.pool.Pool(self.pool_size)
        self._channels.add(channel)
        try:
            while True:
                if truncated:
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
                    data, fds, truncated = handoff.receive(channel)
                except OSError:
                    return
                if not data:
                    return  # the balancer closed it, or it is drained after a stop
        finally:
            self._channels.discard(channel)
            channel.close()
            served.join()  # a stopping server lets its clients' current requests finish

    def _serve(self, client: socket.socket, record: _Client, first: bytes | None) -> None:
        """Serve one registered connection until the client closes it or it must close.

        ``first``: bytes already read from it (None: nothing read yet).
        """
        protocol = record.protocol
        receive = protocol.receive
        buffer, view = self._buffer, self._view
        try:
            while True:
                if not protocol.in_message:
                    # NOTE: a stopping server still answers a connection's
                    # first request: it may be one the balancer handed over
                    # just before the stop, whose client is already waiting.
                    if not self.alive and record.reads:
                        return
                    record.waiting = True
                if first is None:
                    try:
                        data: bytes | memoryview = view[:client.recv_into(buffer)]
                    except OSError:
                        return
                else:
                    data, first = first, None
                record.waiting = False
                record.reads += 1
                if not data:
                    return
                requests = receive(data)
                out = self.answer(protocol, requests) if requests else b""
                rejection = protocol.rejection
                if rejection is not None:
                    note_protocol_error(rejection.status)
                    _refuse(client, out + rejection.to_bytes())
                    return
                if protocol.expects_continue:
                    out += protocol.send_continue()
                if out:
                    _send(client, out)
                if protocol.must_close:
                    return
        except OSError:
            pass  # the client went away mid-answer, or was closed as silent
        finally:
            del self._clients[client]
            client.close()


class HttptoolsGeventWorker(GeventWorker):
    """gunicorn's gevent worker whose connections a :class:`Server` serves (see the module)."""

    server: Server | None = None
    _alive = True

    # gunicorn sets ``alive`` (False on a stop signal) and reads it in its
    # loop; the server sets it on max_requests: one flag, the server's once it exists.
    @property
    def alive(self) -> bool:
        return self.server.alive if self.server is not None else self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        self._alive = value
        if self.server is not None:
            self.server.alive = value

    def run(self) -> None:
        cfg = self.cfg
        unlimited = sys.maxsize // 4  # gunicorn's 0
        limits = Limits(request_line=cfg.limit_request_line or unlimited,
                        field_size=cfg.limit_request_field_size or unlimited,
                        fields=cfg.limit_request_fields or unlimited)
        self.server = Server(self.wsgi, limits=limits, keepalive_s=cfg.keepalive or 0,
                             max_requests=self.max_requests, pool_size=self.worker_connections,
                             multiprocess=cfg.workers > 1, log=self.log)
        self.server.alive = self._alive
        gevent.spawn(self.server.watch)
        super().run()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        assert self.server is not None  # made by run(), before gunicorn accepts
        self.server.handle(client, addr)
