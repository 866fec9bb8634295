"""The load balancer: hands each client connection to an API instance, then steps aside.

    clients ──TCP :9999──► balancer ──descriptor over a unix socket──► api1 worker ┐ each serves
                                   └─────────────────────────────────► api2 worker ┘ its clients

Why: behind nginx (bruto/testbed/stack/nginx.conf), every request crosses
three processes (nginx, a worker, nginx again) and one of them, nginx,
serialises every request of a burst (docs/BENCHMARKS.md). This balancer
accepts a client's connection and passes its file descriptor to one
instance, round robin, over the unix socket that instance's gunicorn already
listens on (bruto.handoff: a handoff channel). From then on the client and
the worker talk directly: the balancer is on no request's path, and a
request wakes one process instead of three.

Load is spread by connection, not by request. A client that keeps its
connection (k6 does, one per virtual user) stays with one instance; with
hundreds of such clients the instances get equal shares.

A channel that breaks (its worker restarted or is stopping) is reopened on
the next handoff; an instance that does not take connections (stalled, its
channel full) is skipped; a connection no instance takes is closed, so its
client sees the failure at once instead of waiting. What a worker had not
yet taken from its channel when it was killed (SIGKILL) is lost: those
clients see their connection reset, as with any proxy whose upstream dies.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time

from bruto import handoff
from bruto.config import settings_or_exit

log = logging.getLogger("bruto.balancer")

# Bounds connecting a channel to an instance whose listen queue is full.
CONNECT_TIMEOUT_S = 1.0
# Pause after accept() fails (out of descriptors, most likely).
ACCEPT_BACKOFF_S = 0.05
BACKLOG = 4096


class Channel:
    """One unix-socket connection to an instance, over which client descriptors travel.

    Args:
        path: The instance's unix socket (the one gunicorn binds).
    """

    def __init__(self, path: str):
        self.path = path
        self.sock: socket.socket | None = None

    def hand_over(self, fd: int) -> bool:
        """Pass ``fd`` to the instance; False if it cannot take it now.

        Never waits: a channel whose buffer is full (its worker stalled) is
        skipped, so one slow instance cannot hold up the clients of the other.
        A broken channel is reopened once: the instance's worker may have
        restarted, or be stopping (it shuts its channels for reading), while
        its gunicorn keeps the socket.
        """
        for _ in range(2):
            sock = self.sock or self._open()
            if sock is None:
                return False
            try:
                handoff.send(sock, fd)
                return True
            except BlockingIOError:
                return False
            except OSError as error:
                log.warning("channel to %s broke (%s); reopening", self.path, error)
                self.close()
        return False

    def _open(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(self.path)
        except OSError as error:
            log.warning("cannot reach %s: %s", self.path, error)
            sock.close()
            return None
        sock.setblocking(False)  # a full channel raises instead of waiting
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Balancer:
    """Accepts client connections and hands them to instances, round robin.

    Args:
        listener: A listening TCP socket.
        instances: The instances' unix socket paths.
        channels: Channels per instance; one per gunicorn worker lets every
            worker of an instance take connections (which worker accepts
            which channel is gunicorn's choice).
    """

    def __init__(self, listener: socket.socket, instances: list[str], channels: int = 1):
        self.listener = listener
        self.channels = [Channel(path) for _ in range(channels) for path in instances]
        self.turn = 0

    def serve_forever(self) -> None:
        while True:
            self.serve_one()

    def serve_one(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError as error:
            # Out of descriptors, most likely: wait a little, do not end.
            log.error("accepting a client failed: %s", error)
            time.sleep(ACCEPT_BACKOFF_S)
            return
        with client:  # closing ours once handed over: the instance holds its own copy
            try:
                # Set here, once: the option belongs to the connection and goes with it.
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return  # the client is already gone
            if not self.hand_over(client.fileno()):
                log.error("no instance took a connection; closing it")

    def hand_over(self, fd: int) -> bool:
        """Give ``fd`` to the next instance that takes it."""
        for _ in range(len(self.channels)):
            channel = self.channels[self.turn]
            self.turn = (self.turn + 1) % len(self.channels)
            if channel.hand_over(fd):
                return True
        return False


def listen(address: str) -> socket.socket:
    """A listening TCP socket for ``host:port``."""
    host, _, port = address.rpartition(":")
    return socket.create_server((host or "0.0.0.0", int(port)), backlog=BACKLOG)


def main(argv: list[str] | None = None) -> None:
    settings = settings_or_exit("bruto-balancer")
    parser = argparse.ArgumentParser(prog="bruto-balancer", description=__doc__.split("\n")[0])
    parser.add_argument("instances", nargs="+", metavar="SOCKET",
                        help="unix socket of each API instance (gunicorn's bind)")
    parser.add_argument("--bind", default="0.0.0.0:9999", help="host:port to accept clients on (default %(default)s)")
    parser.add_argument("--channels", type=int, default=settings.workers,
                        help="channels per instance: its gunicorn workers (default: BRUTO_WORKERS, or 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    balancer = Balancer(listen(args.bind), args.instances, args.channels)
    log.info("accepting on %s for %s", args.bind, ", ".join(args.instances))
    balancer.serve_forever()


if __name__ == "__main__":
    main()
