"""The shared directory's locks: an ``flock`` on a file, held by a live process.

One mechanism for three uses: a web worker holds its intake slab's file for
as long as it lives (its slot, bruto.shm.intake); the dispatcher holds
:data:`DISPATCHER_LOCK` (one dispatcher per directory, the others stand by,
bruto.dispatcher.service); a purge is asked for, cancelled or committed to
under :data:`PURGE_LOCK`, held for an instant (bruto.shm.purge). An flock works across
processes and containers that share the directory, and the kernel drops it
when its holder dies, however it dies: there is never a stale lock to clear.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from collections.abc import Iterator

DISPATCHER_LOCK = "dispatcher.lock"
PURGE_LOCK = "purge.lock"
# How often a waiter tries again: waiting polls rather than blocks in flock,
# so a gevent process keeps running its other greenlets meanwhile.
POLL_S = 0.001


def lock_path(shm_dir: str, name: str) -> str:
    """The file of lock ``name`` in the shared directory ``shm_dir``."""
    return os.path.join(shm_dir, name)


def _take(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def claim(path: str) -> int | None:
    """Take the lock on the existing file ``path`` if no one holds it: the descriptor that holds it, or None.

    The lock lasts as long as the descriptor stays open.
    """
    fd = os.open(path, os.O_RDWR)
    if _take(fd):
        return fd
    os.close(fd)
    return None


def wait_for(path: str, poll_s: float = POLL_S, sleep: Callable[[float], object] = time.sleep,
             on_wait: Callable[[], object] | None = None) -> int:
    """Take the lock on ``path`` (created if missing), waiting for its holder to die or let go.

    ``on_wait`` is called once if it has to wait. Returns the descriptor that
    holds the lock, for as long as it stays open.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not _take(fd):
        if on_wait is not None:
            on_wait()
        while not _take(fd):
            sleep(poll_s)
    return fd


@contextlib.contextmanager
def held(path: str, wait: bool = True) -> Iterator[bool]:
    """Hold the lock on ``path`` (created if missing) for the ``with`` block.

    Yields True once held; with ``wait=False``, yields False at once if another
    process holds it. ``time.sleep`` paces the wait: gevent-patched in the
    workers and the dispatcher, it yields to other greenlets.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while not _take(fd):
            if not wait:
                yield False
                return
            time.sleep(POLL_S)
        yield True
    finally:
        os.close(fd)  # closing drops the lock


def held_elsewhere(path: str) -> bool:
    """Whether a live process holds the lock on ``path`` (a slab's owner, the dispatcher).

    The lock says more than a PID: it works across containers (PIDs there
    belong to other namespaces) and cannot be fooled by a reused PID. The probe
    takes a shared lock for an instant; a worker claiming that very slot at
    that instant moves on to the next free one.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got one
    return False
