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
import struct

import numpy as np

from bruto.config import Settings
from bruto.shm.layout import DISPATCH
from bruto.shm.layout import INTAKE
from bruto.shm.layout import OUTBOX
from bruto.shm.layout import intake_path
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake
from bruto.shm.layout import open_outbox

# One intake record as bytes, field for field as INTAKE.record lays it out
# (checked below): the hot path writes it with one pack_into.
_RECORD = struct.Struct("<16sqq")
if [INTAKE.record.fields[name][1] for name in INTAKE.record.names] != [0, 16, 24] or \
        INTAKE.record.itemsize != _RECORD.size:
    raise ImportError("bruto.shm.intake: _RECORD no longer matches INTAKE.record")


def _words(row: np.void) -> memoryview:
    """The int64 words of one row of a mapped structured array, as a memoryview.

    ``row`` is a view (a field read or write goes to the mapping); its words
    read and write the same memory without numpy's per-access machinery.
    """
    return memoryview(row.base.view(np.uint8)).cast("q")


class NoFreeSlot(RuntimeError):
    """Every intake slot is held by a live worker."""


class IntakeFull(RuntimeError):
    """The slab has no room: the dispatcher is behind by a whole slab."""


class Overloaded(IntakeFull):
    """More payments wait than ``BRUTO_SHED_BACKLOG`` (this slab's backlog plus the outbox): shed load."""


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
        # NOTE: the hot path (append) reads and writes through plain views of
        # the same memory: a numpy field access costs several µs when the
        # caches are cold, as they are for most requests (docs/BENCHMARKS.md,
        # issue 14). ``written`` is word 0 of the counters; ``drained`` is word
        # 0 of this slot's dispatch record.
        self._record_bytes = memoryview(self._records.view(np.uint8))
        self._counter_words = _words(self._counters)
        self._written_word = INTAKE.counters.fields["written"][1] // 8
        self._cursor_words = memoryview(self._dispatch.records.view(np.uint8)).cast("q")
        self._drained_word = (self.slot * DISPATCH.record.itemsize + DISPATCH.record.fields["drained"][1]) // 8
        # Load shedding (bruto.config's shed_backlog): one more word read and
        # an addition on the hot path, and no extra comparison: the outbox's
        # count is never negative, so a full slab also crosses this limit.
        self._outbox = open_outbox(settings)
        self._outbox_words = _words(self._outbox.counters)
        self._in_use_word = OUTBOX.counters.fields["in_use"][1] // 8
        self._limit = min(settings.shed_backlog, self._capacity)

    def append(self, correlation_id: bytes, amount_cents: int, accepted_at: int) -> None:
        """Publish one payment; raise :class:`IntakeFull` when there is no room, :class:`Overloaded`
        when too many payments wait already.

        Fields first, then ``written``: see bruto.shm.region for why that order is
        enough for the dispatcher to never read a half-written record.
        """
        counters = self._counter_words
        written = counters[self._written_word]
        backlog = written - self._cursor_words[self._drained_word]
        if backlog + self._outbox_words[self._in_use_word] >= self._limit:
            if backlog >= self._capacity:
                raise IntakeFull(f"intake slot {self.slot} holds {self._capacity} undrained payments")
            raise Overloaded(f"{backlog} payments wait in intake slot {self.slot} and "
                             f"{self._outbox_words[self._in_use_word]} in the outbox")
        _RECORD.pack_into(self._record_bytes, (written % self._capacity) * _RECORD.size,
                          correlation_id, amount_cents, accepted_at)
        counters[self._written_word] = written + 1

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
