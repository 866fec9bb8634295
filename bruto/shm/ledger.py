"""The ledger: every payment a processor confirmed, with what was sent to it.

A ring written only by the dispatcher, stored by columns (one contiguous
array per field). ``count`` grows forever and record ``i`` lives at
``i % capacity``; ``start`` is the first index that still counts (a purge
moves it to ``count``). When the ring wraps, the oldest record is overwritten
and ``evicted_until`` remembers the latest ``requested_at`` lost that way, so a
summary can tell whether its window reaches lost data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bruto.shm.region import Region


class LedgerWriter:
    """The dispatcher's side of the ledger."""

    def __init__(self, region: Region):
        self._region = region
        self._counters = region.counters
        self._capacity = region.capacity
        columns = region.columns
        self._ids = columns["correlation_id"]
        self._requested_at = columns["requested_at"]
        self._amounts = columns["amount_cents"]
        self._processors = columns["processor"]

    def append(self, correlation_id: bytes, requested_at: int, amount_cents: int, processor: int) -> bytes | None:
        """Record a confirmation; returns the id of the record the ring overwrote, if any."""
        index = int(self._counters["count"])
        slot = index % self._capacity
        evicted_id = None
        if index - self._capacity >= int(self._counters["start"]):
            evicted_id = self._ids[slot].tobytes()
            evicted_at = int(self._requested_at[slot])
            if evicted_at > int(self._counters["evicted_until"]):
                self._counters["evicted_until"] = evicted_at
        self._ids[slot] = correlation_id
        self._requested_at[slot] = requested_at
        self._amounts[slot] = amount_cents
        self._processors[slot] = processor
        self._counters["count"] = index + 1  # publish (see bruto.shm.region)
        return evicted_id

    def next_slot(self) -> int:
        """The ring slot the next :meth:`append` writes."""
        return int(self._counters["count"]) % self._capacity

    def purge(self, below: int | None = None) -> None:
        """Stop counting the records appended before index ``below`` (default: all of them)."""
        count = int(self._counters["count"])
        below = count if below is None else min(below, count)
        if below >= count - self._capacity:
            self._counters["evicted_until"] = 0  # whatever the ring overwrote is purged too
        self._counters["start"] = max(int(self._counters["start"]), below)

    def retained(self) -> list[slice]:
        """Ring slots of the records still counted, oldest first, as at most two slices."""
        return _retained(self._region)


@dataclasses.dataclass(frozen=True)
class Totals:
    """Confirmed payments in a window, per processor (index = processor number)."""

    requests: tuple[int, int]
    amount_cents: tuple[int, int]
    truncated: bool  # the window reaches records the ring has overwritten


def totals(region: Region, since: int | None, until: int | None) -> Totals:
    """Vectorized sums over the ledger, bounds inclusive, either one optional."""
    columns = region.columns
    requests = [0, 0]
    cents = [0, 0]
    for part in _retained(region):
        amounts = columns["amount_cents"][part]
        is_fallback = columns["processor"][part].view(bool)  # 0 or 1: default or fallback
        if since is None and until is None:
            selected = None
            fallback = is_fallback
        else:
            requested_at = columns["requested_at"][part]
            if since is None:
                selected = requested_at <= until
            elif until is None:
                selected = requested_at >= since
            else:
                selected = requested_at >= since
                selected &= requested_at <= until
            fallback = selected & is_fallback
        # Sums with `where=` skip the copies that boolean indexing would make.
        total_requests = len(amounts) if selected is None else int(np.count_nonzero(selected))
        total_cents = int(np.sum(amounts, where=selected)) if selected is not None else int(amounts.sum())
        fallback_requests = int(np.count_nonzero(fallback))
        fallback_cents = int(np.sum(amounts, where=fallback))
        requests[0] += total_requests - fallback_requests
        requests[1] += fallback_requests
        cents[0] += total_cents - fallback_cents
        cents[1] += fallback_cents
    counters = region.counters
    wrapped = int(counters["count"]) - int(counters["start"]) > region.capacity
    truncated = wrapped and (since is None or since <= int(counters["evicted_until"]))
    return Totals((requests[0], requests[1]), (cents[0], cents[1]), truncated)


def _retained(region: Region) -> list[slice]:
    """Ring slots of the records still counted, oldest first, as at most two slices."""
    counters = region.counters
    capacity = region.capacity
    count = int(counters["count"])  # load the publication counter first
    first = max(int(counters["start"]), count - capacity)
    if count <= first:
        return []
    lo, hi = first % capacity, count % capacity
    if count - first == capacity:
        return [slice(lo, capacity), slice(0, lo)] if lo else [slice(0, capacity)]
    if lo < hi:
        return [slice(lo, hi)]
    return [slice(lo, capacity), slice(0, hi)]
