"""Intake: where a web worker puts a payment before answering 202.

Each web worker owns one slab (a ring of records) and is its only writer. The
slot is claimed with an exclusive ``flock`` on the slab's file: the kernel
drops the lock when the process dies, however it dies, so the worker gunicorn
starts in its place claims the same free slot and continues from the slab's
``written`` counter. A record the dead worker filled but never published is
simply overwritten; every record it published stays for the dispatcher.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from bruto.config import Settings
from bruto.shm import locks
from bruto.shm import purge
from bruto.shm.layout import DISPATCH
from bruto.shm.layout import INTAKE
from bruto.shm.layout import OUTBOX
from bruto.shm.layout import DispatcherRegions
from bruto.shm.layout import intake_path
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake
from bruto.shm.layout import open_ledger
from bruto.shm.layout import open_outbox
from bruto.shm.region import Region
from bruto.shm.region import fields_of

# One intake record as bytes, field for field as INTAKE.record lays it out
# (checked below): the hot path writes it with one pack_into.
_RECORD = struct.Struct("<16sqq")
if [offset for _, offset, *_ in fields_of(INTAKE.record).values()] != [0, 16, 24] or \
        INTAKE.record.itemsize != _RECORD.size:
    raise ImportError("bruto.shm.intake: _RECORD no longer matches INTAKE.record")


def _words(rows: np.ndarray) -> memoryview:
    """The int64 words of a mapped structured array (a region's ``counters_array``), as a memoryview.

    Its words read and write the same memory without numpy's per-access machinery.
    """
    return rows.view(np.uint8).data.cast("q")


class NoFreeSlot(RuntimeError):
    """Every intake slot is held by a live worker."""


class IntakeFull(RuntimeError):
    """The slab has no room: the dispatcher is behind by a whole slab."""


class Overloaded(IntakeFull):
    """More payments wait than ``BRUTO_SHED_BACKLOG`` (this slab's backlog plus the outbox): shed load."""


def _word(dtype: np.dtype, name: str, row: int = 0) -> int:
    """The int64 word where field ``name`` of record ``row`` starts, in an array of ``dtype``."""
    return (row * dtype.itemsize + int(fields_of(dtype)[name][1])) // 8


class IntakeWriter:
    """The web worker's side: append payments to its slab; ask for purges through :attr:`purges`.

    :meth:`claim` makes the product's (it claims a free slot of the shared
    directory); :meth:`over` one over regions already mapped, for a single
    process (tests, in-memory regions).

    Args:
        slot: The intake slot written.
        slabs: Every slot's slab (a purge request records where each stands: bruto.shm.purge).
        ledger, dispatch, outbox: The other regions it reads.
        shed_backlog: Payments waiting (this slab's backlog plus the outbox)
            from which :meth:`append` sheds load.
        purge_lock_path: The purge lock's file; None: no lock (one process).
        lock_fd: The descriptor holding the slot's lock, kept open while the writer lives.
    """

    def __init__(self, slot: int, slabs: list[Region], ledger: Region, dispatch: Region, outbox: Region, *,
                 shed_backlog: int, purge_lock_path: str | None = None, lock_fd: int | None = None):
        self.slot = slot
        self._lock_fd = lock_fd
        self.slab = slabs[slot]
        self.purges = purge.PurgeAsker(slot, slabs, ledger, dispatch, purge_lock_path)
        self._capacity = self.slab.capacity
        self._counters = self.slab.counters
        self._records = self.slab.records
        self._counters["owner_pid"] = os.getpid()
        # NOTE: the hot path (append) reads and writes through plain views of
        # the same memory: a numpy field access costs several µs when the
        # caches are cold, as they are for most requests (docs/BENCHMARKS.md).
        self._record_bytes = self._records.view(np.uint8).data
        self._counter_words = _words(self.slab.counters_array)
        self._written_word = _word(INTAKE.counters, "written")
        self._cursor_words = dispatch.records.view(np.uint8).data.cast("q")
        self._drained_word = _word(DISPATCH.record, "drained", row=slot)
        # Load shedding (bruto.config's shed_backlog): one more word read and
        # an addition on the hot path, and no extra comparison: the outbox's
        # count is never negative, so a full slab also crosses this limit.
        self._outbox_words = _words(outbox.counters_array)
        self._in_use_word = _word(OUTBOX.counters, "in_use")
        self._limit = min(shed_backlog, self._capacity)

    @classmethod
    def claim(cls, settings: Settings) -> IntakeWriter:
        """The writer of a free slot of ``settings``' shared directory (raises :class:`NoFreeSlot`)."""
        slot, lock_fd = _claim_slot(settings)
        return cls(slot, [open_intake(settings, n) for n in range(settings.intake_slots)], open_ledger(settings),
                   open_dispatch(settings), open_outbox(settings), shed_backlog=settings.shed_backlog,
                   purge_lock_path=purge.lock_path(settings), lock_fd=lock_fd)

    @classmethod
    def over(cls, slot: int, regions: DispatcherRegions, shed_backlog: int | None = None) -> IntakeWriter:
        """A writer of ``slot`` over regions already mapped: no slot claim and no purge lock, for a
        single process; no shedding unless ``shed_backlog``."""
        # Without shedding, the limit is the slab's capacity and the outbox
        # counted against it is an empty one: only a full slab refuses.
        outbox = regions.outbox if shed_backlog else Region.in_memory(OUTBOX, 1)
        return cls(slot, regions.intake, regions.ledger, regions.dispatch, outbox,
                   shed_backlog=shed_backlog or regions.intake[slot].capacity)

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


def _claim_slot(settings: Settings) -> tuple[int, int]:
    for slot in range(settings.intake_slots):
        fd = locks.claim(intake_path(settings, slot))
        if fd is not None:
            return slot, fd  # the fd stays open for the life of the worker: it is the lock
    raise NoFreeSlot(
        f"all {settings.intake_slots} intake slots in {settings.shm_dir} are held by live workers; "
        "raise BRUTO_INTAKE_SLOTS to at least instances x workers")
