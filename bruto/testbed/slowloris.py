"""Slow clients: connections that hold a worker's attention as long as they can.

Three kinds, all driven by one thread (so hundreds of them cost the load
generator almost nothing):

- **slow head**: a request line, then one header byte at a time, never the
  end of the head (slowloris);
- **slow body**: a complete head announcing a body, then one body byte at a
  time, never the end of the body;
- **no reader**: pipelined GET /payments-summary requests, never reading an
  answer, with a small receive buffer, so the worker's send to it blocks
  once the socket buffers are full.

Each connection sends its next byte every ``interval_s``: never silent long
enough for a worker's idle timeout, never complete.

    with SlowClients("127.0.0.1", 9999, heads=200, bodies=100, readers=20):
        ...  # normal traffic here
"""

from __future__ import annotations

import socket
import threading

_HEAD = b"POST /payments HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
_BODY = b"POST /payments HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n"
_SUMMARY = b"GET /payments-summary HTTP/1.1\r\nHost: slow\r\n\r\n"
# A non-reader's receive buffer: small, so the worker's sends fill it soon.
_READER_RCVBUF = 4096


class SlowClients:
    """Open the slow connections on ``__enter__``, keep them trickling, close them on ``__exit__``.

    Args:
        host: Where bruto listens.
        port: Its port.
        heads: Slow-head connections.
        bodies: Slow-body connections.
        readers: Connections that never read (each pipelines ``pipelined`` summaries).
        interval_s: Seconds between two bytes of one connection.
        pipelined: Requests each non-reading connection sends at once.
    """

    def __init__(self, host: str, port: int, heads: int = 200, bodies: int = 100, readers: int = 20,
                 interval_s: float = 1.0, pipelined: int = 500):
        self.address = (host, port)
        self.counts = {"head": heads, "body": bodies, "reader": readers}
        self.interval_s = interval_s
        self.pipelined = pipelined
        self.sockets: list[tuple[socket.socket, str]] = []
        self.closed_by_server = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True, name="slow-clients")

    def __enter__(self) -> "SlowClients":
        for kind, count in self.counts.items():
            for _ in range(count):
                sock = socket.socket()
                if kind == "reader":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _READER_RCVBUF)
                sock.settimeout(5)
                sock.connect(self.address)
                sock.setblocking(False)
                first = {"head": _HEAD, "body": _BODY, "reader": _SUMMARY * self.pipelined}[kind]
                self._send(sock, first)
                self.sockets.append((sock, kind))
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for sock, _ in self.sockets:
            sock.close()

    @property
    def open(self) -> int:
        """Connections still open (the server closed none of them, or some)."""
        return len(self.sockets) - self.closed_by_server

    def _send(self, sock: socket.socket, data: bytes) -> bool:
        try:
            self.bytes_sent += sock.send(data)
            return True
        except BlockingIOError:
            return True  # its buffer is full: the point, for a non-reader
        except OSError:
            return False

    def _trickle(self) -> None:
        alive = {id(sock): True for sock, _ in self.sockets}
        while not self._stop.wait(self.interval_s):
            for sock, kind in self.sockets:
                if not alive[id(sock)]:
                    continue
                byte = {"head": b"X", "body": b"1", "reader": b""}[kind]
                if byte and not self._send(sock, byte):
                    alive[id(sock)] = False
                    self.closed_by_server += 1
