"""Where one payment is: GET /payments/{correlationId} and ``bruto-shm --payment``.

A payment flows one way through the shared regions, and each stage says a
state (bruto.shm.layout has the regions):

| where                                  | state       | what is known                         |
| -------------------------------------- | ----------- | ------------------------------------- |
| an intake slab, not drained yet        | waiting     | amount                                |
| outbox, QUEUED (held for default too)  | waiting     | amount                                |
| outbox, SENT                           | in_flight   | amount, processor, requestedAt sent   |
| outbox, UNRESOLVED (answer lost)       | in_flight   | the same, ``unresolved``: looked up   |
| ledger                                 | confirmed   | amount, processor, requestedAt stored |
| rejected ring                          | rejected    | amount, processor, requestedAt sent   |

The stages are read in the order a payment moves through them (intake, then
the outbox and the ledger through the dedup index, then the rejected ring),
so a payment that moves on while it is looked up is found at a later stage,
never missed; a copy accepted twice is answered by the one the dispatcher
keeps. The index (bruto.dispatcher.dedup, in ``index.bin``) makes the outbox
and the ledger one probe of a few table slots; while the dispatcher rebuilds
it (start, takeover, purge) the lookup scans the outbox and the ledger
instead. Every scan goes a chunk at a time and calls ``pause`` between
chunks (``time.sleep``, which yields to the other greenlets in a gevent
worker), so no lookup holds a worker's other connections for more than one
chunk (its cost at a full ledger: tools/bench_lookup.py, figures in docs/BENCHMARKS.md).

An id bruto does not hold is :class:`NotHeld`, with the reason when the
regions keep evidence of it: ``purged`` (the ledger, the outbox, the
rejected ring or an intake slab below its purge mark still has it, dropped
by a purge), ``aged_out`` (a freed outbox entry or a drained intake record
still has it, the ledger or the ring no longer), ``never_accepted``
(no purge ever, and no ring has overwritten anything: it was never accepted
here), or ``unknown`` (any of those, and the detail says which are possible).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable
from collections.abc import Iterator

import numpy as np
import orjson

from bruto.money import format_cents
from bruto.shm import rejected
from bruto.shm.layout import EMPTY_REF
from bruto.shm.layout import FREE
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import index_hash_shift
from bruto.shm.layout import index_home_slot
from bruto.shm.region import Region
from bruto.timefmt import format_iso_ms

# Records compared per numpy call in a scan, between two pauses: one chunk
# is the longest a lookup holds the worker's other connections (measured
# with tools/bench_lookup.py).
SCAN_CHUNK = 1 << 16
# Probes of the index that a concurrent change spoils before the lookup
# scans instead (a change takes microseconds; three in a row are rare).
PROBE_TRIES = 3
# Reads of an outbox entry that may catch it between two states.
ENTRY_TRIES = 5
class _Unavailable:
    """What a read returns when what it read changed under it: look again, or elsewhere."""


_UNAVAILABLE = _Unavailable()
PURGED = "bruto held this payment until a purge (POST /purge-payments) dropped it"
AGED_OUT = ("bruto held this payment once; the ledger (or the ring of rejected payments) has since "
            "overwritten it with newer ones")


@dataclasses.dataclass(frozen=True)
class Payment:
    """A payment bruto holds.

    ``processor``, ``requested_at`` (epoch µs) are None while unknown
    (waiting); ``unresolved`` only ever True while in flight.
    """

    correlation_id: bytes
    state: str  # waiting, in_flight, confirmed, rejected
    amount_cents: int
    processor: str | None = None
    requested_at: int | None = None
    unresolved: bool = False

    def json(self) -> bytes:
        """The body of GET /payments/{correlationId}'s 200 (README's API table)."""
        fields = ['"correlationId":"%s"' % uuid.UUID(bytes=self.correlation_id), '"state":"%s"' % self.state,
                  '"amount":%s' % format_cents(self.amount_cents)]  # a JSON number, exact: as the summary's
        if self.processor is not None:
            fields.append('"processor":"%s"' % self.processor)
        if self.requested_at is not None:
            fields.append('"requestedAt":"%s"' % format_iso_ms(self.requested_at))
        if self.state == "in_flight":
            fields.append('"unresolved":%s' % ("true" if self.unresolved else "false"))
        return ("{" + ",".join(fields) + "}").encode()


@dataclasses.dataclass(frozen=True)
class NotHeld:
    """An id bruto holds no payment of; ``reason`` as in the module, ``detail`` in words."""

    reason: str  # purged, aged_out, never_accepted, unknown
    detail: str

    def json(self, correlation_id: bytes) -> bytes:
        """The body of GET /payments/{correlationId}'s 404."""
        return orjson.dumps({"error": f"no payment {uuid.UUID(bytes=correlation_id)}: {self.detail}",
                             "reason": self.reason})


class PaymentFinder:
    """Finds payments in the regions of one shared directory, without locks or writes.

    Args:
        slabs, dispatch, outbox, ledger, index, rejected: the regions (read-only
            ones: bruto.shm.snapshot.SharedRegions; any, in tests).
        pause: called with 0 between two chunks of a scan; ``time.sleep`` by
            default (which yields to the other greenlets in a gevent worker).
    """

    def __init__(self, slabs: list[Region], dispatch: Region, outbox: Region, ledger: Region, index: Region,
                 rejected: Region, pause: Callable[[float], object] | None = None):
        self._pause = pause or _sleep
        self._slabs = slabs
        self._slab_keys = [_keys(slab.records.view(np.uint8).reshape(slab.capacity, -1)) for slab in slabs]
        self._cursors = dispatch.records
        self._dispatch = dispatch.counters
        self._outbox = outbox.records
        self._outbox_keys = _keys(self._outbox.view(np.uint8).reshape(len(self._outbox), -1))
        self._ledger = ledger
        self._ledger_ids = ledger.columns["correlation_id"]
        self._ledger_keys = self._ledger_ids.view("<u8").reshape(-1, 2)
        self._rejected = rejected
        self._index = index.counters
        self._table = index.records["ref"]
        self._mask = index.capacity - 1
        self._shift = index_hash_shift(index.capacity)

    def find(self, correlation_id: bytes) -> Payment | NotHeld:
        """The payment of ``correlation_id`` (16 bytes) as the regions hold it now."""
        waiting = self._in_intake(correlation_id)
        # None after the loop also when an entry was freed under us each time:
        # it has moved on, and the ring of rejections may have it.
        held: Payment | None = None
        for _ in range(ENTRY_TRIES):
            ref = self._probe(correlation_id)
            found: Payment | None | _Unavailable
            if isinstance(ref, _Unavailable):
                found = self._scan_held(correlation_id)
            elif ref is None:
                found = None
            else:
                found = self._read_ref(correlation_id, ref)
            if not isinstance(found, _Unavailable):
                held = found
                break
        if held is not None:
            return held
        if waiting is not None:
            return waiting
        record = rejected.find(self._rejected, correlation_id)
        if record is not None:
            return Payment(correlation_id, "rejected", int(record["amount_cents"]),
                           PROCESSOR_NAMES[int(record["processor"])], int(record["requested_at"]))
        return self._not_held(correlation_id)

    # -- the stages --------------------------------------------------------------

    def _in_intake(self, correlation_id: bytes) -> Payment | None:
        """The earliest accepted copy not drained yet, in any slab."""
        wanted = _key(correlation_id)
        best = None
        for slot, slab in enumerate(self._slabs):
            drained = int(self._cursors[slot]["drained"])
            written = int(slab.counters["written"])  # the publication counter, after the cursor
            keys = self._slab_keys[slot]
            for n in self._hits(keys, wanted, drained, written, slab.capacity):
                record = slab.records[n % slab.capacity]
                if best is None or int(record["accepted_at"]) < best[0]:
                    best = (int(record["accepted_at"]), int(record["amount_cents"]))
        return None if best is None else Payment(correlation_id, "waiting", best[1])

    def _probe(self, correlation_id: bytes) -> int | None | _Unavailable:
        """The index's ref for the id, None if it holds none, or _UNAVAILABLE."""
        table, mask, counters = self._table, self._mask, self._index
        for _ in range(PROBE_TRIES):
            changes = int(counters["changes"])
            if changes == 0 or changes % 2:
                return _UNAVAILABLE  # never built, or being rebuilt: scan instead
            ledger_capacity = int(counters["ledger_capacity"])
            i = index_home_slot(correlation_id, int(counters["hash_k1"]), int(counters["hash_k2"]), self._shift)
            found: int | None | _Unavailable = None
            for _ in range(mask + 1):
                ref = int(table[i])
                if ref == EMPTY_REF:
                    break
                if self._key_at(ref, ledger_capacity) == correlation_id:
                    found = ref
                    break
                if int(table[i]) != ref:
                    found = _UNAVAILABLE  # moved while compared: probe again
                    break
                i = (i + 1) & mask
            if found is not _UNAVAILABLE and int(counters["changes"]) == changes:
                return found
        return _UNAVAILABLE

    def _key_at(self, ref: int, ledger_capacity: int) -> bytes:
        if ref < ledger_capacity:
            return bytes(self._ledger_ids[ref].tobytes())
        return bytes(self._outbox[ref - ledger_capacity]["correlation_id"].tobytes())

    def _read_ref(self, correlation_id: bytes, ref: int) -> Payment | _Unavailable:
        ledger_capacity = int(self._index["ledger_capacity"])
        if ref < ledger_capacity:
            return self._read_ledger(correlation_id, ref)
        return self._read_entry(correlation_id, ref - ledger_capacity)

    def _read_ledger(self, correlation_id: bytes, slot: int) -> Payment | _Unavailable:
        columns = self._ledger.columns
        requested_at = int(columns["requested_at"][slot])
        amount_cents = int(columns["amount_cents"][slot])
        processor = int(columns["processor"][slot])
        if self._ledger_ids[slot].tobytes() != correlation_id or not self._retained(slot):
            return _UNAVAILABLE  # overwritten or purged since the probe: look again
        return Payment(correlation_id, "confirmed", amount_cents, PROCESSOR_NAMES[processor], requested_at)

    def _retained(self, slot: int) -> bool:
        counters = self._ledger.counters
        capacity = self._ledger.capacity
        count = int(counters["count"])
        first = max(int(counters["start"]), count - capacity)
        return count > first and (slot - first) % capacity < count - first

    def _read_entry(self, correlation_id: bytes, index: int) -> Payment | _Unavailable:
        """The state of an outbox entry; _UNAVAILABLE if it changed while read, or is free."""
        entry = self._outbox[index]
        state = int(entry["state"])
        amount_cents = int(entry["amount_cents"])
        processor = int(entry["processor"])
        requested_at = int(entry["requested_at"])
        if entry["correlation_id"].tobytes() != correlation_id or int(entry["state"]) != state or state == FREE:
            return _UNAVAILABLE
        if state == QUEUED:
            return Payment(correlation_id, "waiting", amount_cents)
        return Payment(correlation_id, "in_flight", amount_cents, PROCESSOR_NAMES[processor], requested_at,
                       unresolved=state == UNRESOLVED)

    def _scan_held(self, correlation_id: bytes) -> Payment | None:
        """The outbox, then the ledger, scanned: what the index would say."""
        wanted = _key(correlation_id)
        for index in self._hits(self._outbox_keys, wanted, 0, len(self._outbox), len(self._outbox)):
            if int(self._outbox[index]["state"]) in (QUEUED, SENT, UNRESOLVED):
                found = self._read_entry(correlation_id, index)
                if not isinstance(found, _Unavailable):
                    return found
        counters = self._ledger.counters
        count = int(counters["count"])
        first = max(int(counters["start"]), count - self._ledger.capacity)
        for n in self._hits(self._ledger_keys, wanted, first, count, self._ledger.capacity):
            found = self._read_ledger(correlation_id, n % self._ledger.capacity)
            if not isinstance(found, _Unavailable):
                return found
        return None

    # -- why an id is not held -------------------------------------------------

    def _not_held(self, correlation_id: bytes) -> NotHeld:
        wanted = _key(correlation_id)
        ledger = self._ledger
        counters = ledger.counters
        count, start = int(counters["count"]), int(counters["start"])
        oldest = max(0, count - ledger.capacity)
        if rejected.find(self._rejected, correlation_id, purged=True) is not None or \
                any(True for _ in self._hits(self._ledger_keys, wanted, oldest, max(oldest, start), ledger.capacity)):
            return NotHeld("purged", PURGED)
        for index in self._hits(self._outbox_keys, wanted, 0, len(self._outbox), len(self._outbox)):
            entry = self._outbox[index]
            if int(entry["state"]) == FREE and entry["correlation_id"].tobytes() == correlation_id:
                if int(entry["purged"]):
                    return NotHeld("purged", PURGED)
                return NotHeld("aged_out", AGED_OUT)
        drained = self._drained_reason(wanted)
        if drained is not None:
            return drained
        possible = []
        purges = int(self._dispatch["purges"])
        if purges:
            possible.append(f"dropped by one of the {purges} purges so far")
        if count > ledger.capacity:
            possible.append(f"confirmed before the last {ledger.capacity} confirmations, which are all the "
                            "ledger keeps")
        if int(self._rejected.counters["count"]) > self._rejected.capacity:
            possible.append(f"rejected before the last {self._rejected.capacity} rejections, which are all "
                            "bruto keeps")
        if not possible:
            return NotHeld("never_accepted", "bruto never accepted a payment with this correlationId "
                                             "(since its shared directory was created)")
        return NotHeld("unknown", "bruto holds no payment with this correlationId: never accepted, or "
                                  + "; or ".join(possible))

    def _drained_reason(self, wanted: tuple[int, int]) -> NotHeld | None:
        """What an intake slab's drained records still say of an id no stage holds.

        A record below the slab's last purge mark was accepted before that
        purge, which dropped it (from intake, if it was not drained yet); one
        above it was drained after the purge and has since aged out of the
        ledger or the ring of rejections. None if no slab still has the id.
        """
        for slot, slab in enumerate(self._slabs):
            cursor = self._cursors[slot]
            written = int(slab.counters["written"])
            drained = min(int(cursor["drained"]), written)
            below = int(cursor["purge_below"])
            keys = self._slab_keys[slot]
            for n in self._hits(keys, wanted, max(0, written - slab.capacity), drained, slab.capacity):
                if n + slab.capacity <= int(slab.counters["written"]):
                    continue  # a newer record is being written into its slot: no evidence
                if n < below:
                    return NotHeld("purged", PURGED)
                return NotHeld("aged_out", AGED_OUT)
        return None

    # -- scans -----------------------------------------------------------------

    def _hits(self, keys: np.ndarray, wanted: tuple[int, int], first: int, last: int,
              capacity: int) -> Iterator[int]:
        """Indices n in [first, last) whose ring slot n % capacity holds ``wanted``, a chunk at a time."""
        low, high = wanted
        n = first
        while n < last:
            end = min(last, n + SCAN_CHUNK, (n // capacity + 1) * capacity)  # one chunk within one lap
            lo = n % capacity
            part = keys[lo:lo + (end - n)]
            for i in np.flatnonzero(part[:, 0] == low):
                if part[i, 1] == high:
                    yield n + int(i)
            n = end
            if n < last:
                self._pause(0)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # looked up at each call: gevent's, once the worker has patched time


def _key(correlation_id: bytes) -> tuple[int, int]:
    return int.from_bytes(correlation_id[:8], "little"), int.from_bytes(correlation_id[8:], "little")


def _keys(rows: np.ndarray) -> np.ndarray:
    """The ids (the first 16 bytes of each row of bytes) as pairs of u64, a view."""
    return rows[:, :16].view("<u8")
