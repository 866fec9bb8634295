"""Payments a processor refused for good: a small ring the dispatcher writes.

A processor that answers a payment with a 4XX other than 422 and 429 will
never take it (bruto.dispatcher.processor: ``Outcome.REJECTED``): the outbox
lets it go, and forgets its id, so it would otherwise vanish without a trace.
The ring keeps the last ``REJECTED_CAPACITY`` of them for GET /payments/{id}
(bruto.shm.lookup). Written fields first, then ``count`` (bruto.shm.region's
publication order); a purge moves ``start`` to ``count``.
"""

from __future__ import annotations

import numpy as np

from bruto.shm.ledger import prefix_up_to
from bruto.shm.region import Region


class RejectedWriter:
    """The dispatcher's side of ``rejected.bin``."""

    def __init__(self, region: Region):
        self._counters = region.counters
        self._records = region.records
        self._capacity = region.capacity

    def append(self, correlation_id: bytes, amount_cents: int, requested_at: int, processor: int,
               rejected_at: int) -> None:
        count = int(self._counters["count"])
        record = self._records[count % self._capacity]
        record["correlation_id"] = correlation_id
        record["amount_cents"] = amount_cents
        record["requested_at"] = requested_at
        record["processor"] = processor
        record["rejected_at"] = rejected_at
        self._counters["count"] = count + 1  # publish

    def purge(self, up_to: int | None = None) -> None:
        """Stop counting the rejections made up to ``up_to`` (epoch µs; default: all of them).

        A prefix, as in the ledger (bruto.shm.ledger ``confirmed_after``):
        the records up to the last one rejected by ``up_to``.
        """
        count = int(self._counters["count"])
        start = max(int(self._counters["start"]), count - self._capacity)
        if up_to is not None and count > start:
            count = start + prefix_up_to(self._records["rejected_at"][np.arange(start, count) % self._capacity], up_to)
        self._counters["start"] = max(int(self._counters["start"]), count)


def find(region: Region, correlation_id: bytes, purged: bool = False) -> np.void | None:
    """The latest record of ``correlation_id`` (a copy), or None.

    ``purged=False`` looks at the records still counted; ``purged=True`` at
    the ones a purge dropped that the ring has not overwritten yet.
    """
    counters = region.counters
    count = int(counters["count"])  # the publication counter first
    start = int(counters["start"])
    oldest = max(0, count - region.capacity)
    first, last = (max(start, oldest), count) if not purged else (oldest, max(oldest, min(start, count)))
    if first >= last:
        return None
    keys = region.records.view(np.uint8).reshape(region.capacity, -1)[:, :16]
    wanted = np.frombuffer(correlation_id, dtype=np.uint8)
    slots = np.arange(first, last) % region.capacity
    hits = slots[(keys[slots] == wanted).all(axis=1)]
    if not len(hits):
        return None
    record = region.records[hits[-1]].copy()  # the last hit is the newest record
    # Overwritten between the comparison and the copy (the ring went round
    # 4,096 rejections in that instant): no longer held.
    return record if record["correlation_id"].tobytes() == correlation_id else None
