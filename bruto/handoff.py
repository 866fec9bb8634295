"""Client connections passed to another process as file descriptors (``SCM_RIGHTS``) over a unix socket.

bruto.balancer sends each client connection it accepts down a *handoff
channel*: a connection to an API instance's unix socket, the one its gunicorn
listens on. bruto.gateway.worker tells a channel from a plain HTTP client by
its first message, which carries descriptors; from then on every message of
the channel is one byte carrying one client's descriptor, which the worker
serves as if it had accepted it.
"""

from __future__ import annotations

import socket

# The byte each descriptor travels with (a message cannot be empty).
MARKER = b"\0"
# Most descriptors taken from a channel in one read.
MAX_FDS = 64


def send(channel: socket.socket, fd: int) -> None:
    """Pass ``fd`` down ``channel`` (the receiver gets its own copy; close yours)."""
    socket.send_fds(channel, [MARKER], [fd])


def receive(channel: socket.socket, size: int = MAX_FDS) -> tuple[bytes, list[int], bool]:
    """Read up to ``size`` bytes and the descriptors they carry (close-on-exec).

    Returns ``(data, descriptors, truncated)``; ``truncated``: the kernel
    dropped descriptors that did not fit (this process is out of them, most
    likely). ``data`` empty: the sender closed the channel.
    """
    data, fds, flags, _ = socket.recv_fds(channel, size, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    return data, fds, bool(flags & socket.MSG_CTRUNC)
