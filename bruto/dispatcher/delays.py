"""The largest delay a processor has shown or announced, second by second.

A processor holds each payment for the delay in force when the payment
arrived, and only then stores it. So a lookup that answers 404 proves a
payment absent only once that delay has surely passed; the dispatcher
cannot see the delay directly, but it sees evidence of it: the delay
service-health announces, and how long answers take (bruto.dispatcher.outbox
has the rule that uses it).

The evidence is kept in the processor's health-table row, so it survives a
restart: a ring of ``DELAY_SECONDS`` maxima, one per second, and the maximum
of every second the ring has forgotten. :func:`largest_since` may answer more
than the truth (the whole first second counts, and anything the ring forgot),
never less.
"""

from __future__ import annotations

import numpy as np

from bruto.shm.layout import DELAY_SECONDS

SECOND_US = 1_000_000


def record(row: np.void, now: int, delay_ms: int) -> tuple[int, int]:
    """Record that the processor showed or announced ``delay_ms`` at ``now``.

    Returns:
        (the second it was recorded under, the largest delay of that second):
        a later delay no larger, in the same second, changes nothing.
    """
    second = now // SECOND_US
    latest = int(row["delay_second"])
    ring = row["delay_ms"]
    if second > latest:
        forgotten = [s % DELAY_SECONDS for s in range(latest + 1, min(second, latest + DELAY_SECONDS) + 1)]
        row["delay_before_ms"] = max(int(row["delay_before_ms"]), int(ring[forgotten].max()))
        ring[forgotten] = 0
        row["delay_second"] = second
    else:
        second = latest  # a clock that stepped back: count it as the latest second, later is safer
    slot = second % DELAY_SECONDS
    if delay_ms > ring[slot]:
        ring[slot] = delay_ms
    return second, int(ring[slot])


def largest_since(row: np.void, since: int) -> int:
    """The largest delay (ms) shown or announced from ``since`` (epoch µs) on; 0 if none."""
    first = since // SECOND_US
    latest = int(row["delay_second"])
    if latest < first:
        return 0
    oldest_kept = latest - DELAY_SECONDS + 1
    seconds = np.arange(max(first, oldest_kept), latest + 1) % DELAY_SECONDS
    largest = int(row["delay_ms"][seconds].max())
    if first < oldest_kept:
        largest = max(largest, int(row["delay_before_ms"]))
    return largest
