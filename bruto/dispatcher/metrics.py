"""The dispatcher's counters: what it sent, what came back, how long it took.

The dispatcher is the only writer of ``metrics.bin`` (bruto.shm.layout.METRICS:
a counters row and one row per processor); the metrics endpoint and the
inspector read it. Every count only grows, from the region's creation on, so
it reads as a Prometheus counter; histograms keep one count per bucket (not
cumulative) and the sum of what they observed.

Each call is a few integer increments: the fields are reached through
``memoryview``s made once, which index and store a machine integer in place
without making a numpy scalar per access (several times cheaper than numpy
indexing). An aligned 8-byte store is atomic on x86-64, so a reader never sees
a torn count (bruto.shm.region has the rest of that argument).
"""

from __future__ import annotations

import bisect

from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import RateLimited
from bruto.dispatcher.outcomes import Stored
from bruto.shm.layout import HEALTH_POLL_RESULTS
from bruto.shm.layout import LATENCY_BOUNDS_US
from bruto.shm.layout import LOOKUP_RESULTS
from bruto.shm.layout import OUTCOMES
from bruto.shm.region import Region

OUTCOME_INDEX = {Outcome(name): index for index, name in enumerate(OUTCOMES)}
FOUND, NOT_FOUND, LOOKUP_UNKNOWN = (LOOKUP_RESULTS.index(r) for r in ("found", "not_found", "unknown"))
POLL_OK, POLL_RATE_LIMITED, POLL_FAILED = (HEALTH_POLL_RESULTS.index(r) for r in ("ok", "rate_limited", "failed"))


# An hour: beyond every histogram bound, and 2.5 billion of them still fit the int64 sum.
MAX_WAIT_US = 3_600_000_000


def bucket_of(microseconds: int) -> int:
    """The histogram bucket of a duration: the first whose upper bound is not below it."""
    return bisect.bisect_left(LATENCY_BOUNDS_US, microseconds)


class DispatcherMetrics:
    """Increments on ``metrics.bin``, one method per thing the dispatcher does.

    Args:
        region: ``bruto.shm.layout.open_metrics(settings)``.
    """

    def __init__(self, region: Region):
        counters, rows = region.counters_array, region.records
        self._duplicates = counters["duplicates_dropped"].data
        self._purges = counters["purges"].data
        self._wait_sum = counters["outbox_wait_sum_us"].data
        self._wait_buckets = counters["outbox_wait_buckets"][0].data
        self._attempts = rows["attempts"].data
        self._retries = rows["retries"].data
        self._outcomes = rows["outcomes"].data
        self._lookups = rows["lookups"].data
        self._confirmed = rows["confirmed"].data
        self._confirmed_cents = rows["confirmed_cents"].data
        self._polls = rows["health_polls"].data
        self._send_sum = rows["send_sum_us"].data
        self._send_buckets = rows["send_buckets"].data

    def attempt(self, processor: int, attempts_before: int) -> None:
        """A POST is going out; ``attempts_before``: earlier attempts of the same payment."""
        self._attempts[processor] += 1
        if attempts_before:
            self._retries[processor] += 1

    def answered(self, processor: int, outcome: Outcome, elapsed_us: int) -> None:
        """A POST came back (or gave up) after ``elapsed_us``, with this outcome."""
        self._outcomes[processor, OUTCOME_INDEX[outcome]] += 1
        self._send_sum[processor] += elapsed_us
        self._send_buckets[processor, bucket_of(elapsed_us)] += 1

    def answered_nothing(self, processor: int) -> None:
        """A POST whose answer a dispatcher's crash lost: its outcome is unknown, its time too."""
        self._outcomes[processor, OUTCOME_INDEX[Outcome.UNKNOWN]] += 1

    def looked_up(self, processor: int, found: Stored | None | Outcome) -> None:
        """A GET /payments/{id} answered ``found`` (what ProcessorClient.lookup returns)."""
        if isinstance(found, Stored):
            result = FOUND
        else:
            result = NOT_FOUND if found is None else LOOKUP_UNKNOWN
        self._lookups[processor, result] += 1

    def confirmed(self, processor: int, amount_cents: int, waited_us: int) -> None:
        """A payment entered the ledger, ``waited_us`` after it was accepted."""
        self._confirmed[processor] += 1
        self._confirmed_cents[processor] += amount_cents
        # accepted_at comes from another process's clock reading, and a wrong
        # one must not overflow the sum (an int64 store that overflows raises,
        # and the dispatcher would exit): counted within [0, MAX_WAIT_US].
        waited_us = min(max(waited_us, 0), MAX_WAIT_US)
        self._wait_sum[0] += waited_us
        self._wait_buckets[bucket_of(waited_us)] += 1

    def health_polled(self, processor: int, report: Health | RateLimited | None) -> None:
        """A service-health call answered ``report`` (what ProcessorClient.health returns)."""
        if isinstance(report, Health):
            result = POLL_OK
        else:
            result = POLL_RATE_LIMITED if isinstance(report, RateLimited) else POLL_FAILED
        self._polls[processor, result] += 1

    def duplicate_dropped(self) -> None:
        self._duplicates[0] += 1

    def purged(self) -> None:
        self._purges[0] += 1

