"""The ledger: every payment a processor confirmed, with what was sent to it.

A ring of records written only by the dispatcher. ``count`` grows forever and
record ``i`` lives at ``i % capacity``; ``start`` is the first index that still
counts (a purge moves it to ``count``). When the ring wraps, the oldest record
is overwritten and ``evicted_until`` remembers the latest ``requested_at`` lost
that way, so a summary can tell whether its window reaches lost data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bruto.shm import Region


class LedgerWriter:
    """The dispatcher's side of the ledger."""

    def __init__(self, region: Region):
        self._region = region
        self._counters = region.counters
        self._records = region.records
        self._capacity = region.capacity

    def append(self, correlation_id: bytes, requested_at: int, amount_cents: int, processor: int) -> None:
        index = int(self._counters["count"])
        record = self._records[index % self._capacity]
        if index - self._capacity >= int(self._counters["start"]):
            evicted = int(record["requested_at"])
            if evicted > int(self._counters["evicted_until"]):
                self._counters["evicted_until"] = evicted
        record["correlation_id"] = correlation_id
        record["requested_at"] = requested_at
        record["amount_cents"] = amount_cents
        record["processor"] = processor
        self._counters["count"] = index + 1  # publish (see bruto.shm)

    def purge(self) -> None:
        self._counters["evicted_until"] = 0
        self._counters["start"] = int(self._counters["count"])

    def correlation_ids(self) -> set[bytes]:
        """Ids of every record still counted: the dispatcher's dedup memory after a restart."""
        ids = set()
        for part in _retained(self._region):
            ids.update(v.tobytes() for v in part["correlation_id"])
        return ids


@dataclasses.dataclass(frozen=True)
class Totals:
    """Confirmed payments in a window, per processor (index = processor number)."""

    requests: tuple[int, int]
    amount_cents: tuple[int, int]
    truncated: bool  # the window reaches records the ring has overwritten


def totals(region: Region, since: int | None, until: int | None) -> Totals:
    """Vectorized sums over the ledger, bounds inclusive, either one optional."""
    requests = [0, 0]
    cents = [0, 0]
    for part in _retained(region):
        requested_at = part["requested_at"]
        if since is None and until is None:
            amounts = part["amount_cents"]
            processors = part["processor"]
        else:
            mask = np.ones(len(part), dtype=bool)
            if since is not None:
                mask &= requested_at >= since
            if until is not None:
                mask &= requested_at <= until
            amounts = part["amount_cents"][mask]
            processors = part["processor"][mask]
        is_fallback = processors.astype(bool)
        total_cents = int(amounts.sum())
        fallback_cents = int(amounts[is_fallback].sum())
        fallback_requests = int(np.count_nonzero(is_fallback))
        requests[0] += len(amounts) - fallback_requests
        requests[1] += fallback_requests
        cents[0] += total_cents - fallback_cents
        cents[1] += fallback_cents
    counters = region.counters
    wrapped = int(counters["count"]) - int(counters["start"]) > region.capacity
    truncated = wrapped and (since is None or since <= int(counters["evicted_until"]))
    return Totals(tuple(requests), tuple(cents), truncated)


def _retained(region: Region) -> list[np.ndarray]:
    """The records still counted, oldest first, as at most two views (no copy)."""
    counters = region.counters
    capacity = region.capacity
    count = int(counters["count"])  # load the publication counter first
    first = max(int(counters["start"]), count - capacity)
    if count <= first:
        return []
    lo, hi = first % capacity, count % capacity
    records = region.records
    if count - first == capacity:
        return [records[lo:], records[:lo]] if lo else [records]
    if lo < hi:
        return [records[lo:hi]]
    return [records[lo:], records[:hi]]
