"""The ledger: every payment a processor confirmed, with what was sent to it.

A ring written only by the dispatcher, stored by columns (one contiguous
array per field). ``count`` grows forever and record ``i`` lives at
``i % capacity``; ``start`` is the first index that still counts (a purge
moves it to ``count``, a purge asked on another host past what was confirmed
before it committed: :meth:`LedgerWriter.confirmed_after`). When the ring wraps, the oldest record is overwritten
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
        self._confirmed_at = columns["confirmed_at"]

    def append(self, correlation_id: bytes, requested_at: int, amount_cents: int, processor: int,
               confirmed_at: int = 0) -> bytes | None:
        """Record a confirmation learned at ``confirmed_at`` (epoch µs; 0: as old as any purge); returns the id
        of the record the ring overwrote, if any."""
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
        self._confirmed_at[slot] = confirmed_at
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

    def counted(self) -> tuple[int, int]:
        """(first, count): the indexes of the records still counted, ``first`` to ``count - 1``."""
        count = int(self._counters["count"])
        return max(int(self._counters["start"]), count - self._capacity), count

    def confirmed_after(self, moment: int) -> int:
        """The ledger index from which every record still counted was confirmed after ``moment`` (epoch µs).

        Records are appended as they are confirmed, so their times rise with
        the index; should the clock have stepped back, a record confirmed
        after ``moment`` that sits before one confirmed up to it is counted as
        confirmed up to it too: what :meth:`purge` drops is a prefix.
        """
        first, count = self.counted()
        if count <= first:
            return count
        return first + prefix_up_to(self._confirmed_at[np.arange(first, count) % self._capacity], moment)


def prefix_up_to(times: np.ndarray, moment: int) -> int:
    """How many of ``times`` (oldest first) a purge at ``moment`` drops: up to the last one not after it."""
    up_to = np.flatnonzero(times <= moment)
    return int(up_to[-1]) + 1 if len(up_to) else 0


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
