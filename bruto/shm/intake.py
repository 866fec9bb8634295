"""Intake: where a web worker puts a payment before answering 202.

Each web worker owns one slab (a ring of records) and is its only writer. The
slot is claimed with an exclusive ``flock`` on the slab's file: the kernel
drops the lock when the process dies, however it dies, so the worker gunicorn
starts in its place claims the same free slot and continues from the slab's
``written`` counter. A record the dead worker filled but never published is
simply overwritten; every record it published stays for the dispatcher.
"""

from __future__ import annotations

import fcntl
import os

from bruto.config import Settings
from bruto.shm.layout import intake_path
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake


class NoFreeSlot(RuntimeError):
    """Every intake slot is held by a live worker."""


class IntakeFull(RuntimeError):
    """The slab has no room: the dispatcher is behind by a whole slab."""


class IntakeWriter:
    """The web worker's side: claim a slot, append payments, request purges."""

    def __init__(self, settings: Settings):
        self.slot, self._lock_fd = _claim_slot(settings)
        self.slab = open_intake(settings, self.slot)
        self._dispatch = open_dispatch(settings)
        self._capacity = self.slab.capacity
        self._counters = self.slab.counters
        self._records = self.slab.records
        self._cursor = self._dispatch.records[self.slot]
        self._counters["owner_pid"] = os.getpid()

    def append(self, correlation_id: bytes, amount_cents: int, accepted_at: int) -> None:
        """Publish one payment; raise :class:`IntakeFull` when there is no room.

        Fields first, then ``written``: see bruto.shm.region for why that order is
        enough for the dispatcher to never read a half-written record.
        """
        written = int(self._counters["written"])
        if written - int(self._cursor["drained"]) >= self._capacity:
            raise IntakeFull(f"intake slot {self.slot} holds {self._capacity} undrained payments")
        record = self._records[written % self._capacity]
        record["correlation_id"] = correlation_id
        record["amount_cents"] = amount_cents
        record["accepted_at"] = accepted_at
        self._counters["written"] = written + 1

    def request_purge(self) -> int:
        """Ask the dispatcher to purge; returns the ticket :meth:`purge_done` waits for."""
        ticket = int(self._counters["purge_requests"]) + 1
        self._counters["purge_requests"] = ticket
        return ticket

    def purge_done(self, ticket: int) -> bool:
        return int(self._cursor["purges_done"]) >= ticket


def _claim_slot(settings: Settings) -> tuple[int, int]:
    for slot in range(settings.intake_slots):
        path = intake_path(settings, slot)
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd  # the fd stays open for the life of the worker: it is the lock
    raise NoFreeSlot(
        f"all {settings.intake_slots} intake slots in {settings.shm_dir} are held by live workers; "
        "raise BRUTO_INTAKE_SLOTS to at least instances x workers")
