"""Circuit breaker per processor, as pure transitions: a state in, a new state out.

    CLOSED ──(THRESHOLD failures in a row, or health says failing)──► OPEN
    OPEN ──(PROBE_INTERVAL passed, or health says not failing)──► HALF_OPEN
    HALF_OPEN ──(the single probe payment succeeds)──► CLOSED
    HALF_OPEN ──(the probe fails)──► OPEN
    HALF_OPEN ──(news the processor may be back while the probe is stale)──► OPEN, probe at once

The state is kept in the health table (bruto.shm.layout.HEALTH): :func:`read`
and :func:`write` move it between a row and a :class:`Breaker`, so a
restarted dispatcher finds the breakers as they were and the inspector can
show them. ``down_since`` is kept from the first opening until the breaker
closes again: with the time a processor has been too slow, it is the clock
the routing policy's patience is measured on (routing.down_since).
Every change of state is counted in the row's ``transitions`` (indexed by the
state entered), for the metrics endpoint.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bruto.shm.layout import BREAKER_CLOSED
from bruto.shm.layout import BREAKER_HALF_OPEN
from bruto.shm.layout import BREAKER_OPEN

# The states, as the health table stores them (a shared-memory format).
CLOSED, HALF_OPEN, OPEN = BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN

# Failures in a row that open a closed breaker. A single 500 is noise (a retry
# costs nothing); five in a row at 500 payments/s is ten milliseconds of
# evidence that the processor is failing for real.
THRESHOLD = 5
# Time between probes while open, in microseconds. A probe is one payment; a
# failed probe costs nothing but a retry, and a processor that recovered is
# found within this interval.
PROBE_INTERVAL_US = 200_000


@dataclasses.dataclass(frozen=True, slots=True)
class Breaker:
    state: int = CLOSED
    failures: int = 0     # in a row
    down_since: int = 0   # when it left CLOSED (0: closed)
    probe_at: int = 0     # when the last probe started, or when it opened


def succeeded(breaker: Breaker) -> Breaker:
    """A payment went through: closed, and the outage clock stops."""
    return Breaker()


def failed(breaker: Breaker, now: int) -> Breaker:
    failures = breaker.failures + 1
    if breaker.state == HALF_OPEN or (breaker.state == CLOSED and failures >= THRESHOLD):
        return _opened(breaker, now, failures)
    return dataclasses.replace(breaker, failures=failures)


def reported(breaker: Breaker, failing: bool, now: int, delay_ms: int = 0) -> Breaker:
    """Fold a service-health report in: it can open, or invite a probe, never close.

    A probe out for longer than the delay now reported went under the old
    configuration (a processor keeps the delay in force when a request
    arrived): its answer says nothing of now, so a new probe goes at once.
    """
    if failing and breaker.state == CLOSED:
        return _opened(breaker, now, breaker.failures)
    if not failing:
        return reprobe(breaker, now, delay_ms * 1000 + PROBE_INTERVAL_US)
    return breaker


def reprobe(breaker: Breaker, now: int, stale_after_us: int = PROBE_INTERVAL_US) -> Breaker:
    """There is news that the processor may be back: an open breaker probes at once, and so does a
    half-open one whose probe has been out for longer than ``stale_after_us``. Never closes."""
    if breaker.state == OPEN or (breaker.state == HALF_OPEN and now - breaker.probe_at > stale_after_us):
        return dataclasses.replace(breaker, state=OPEN, probe_at=0)
    return breaker


def may_probe(breaker: Breaker, now: int) -> bool:
    """Whether an open breaker is due for a probe (then send one and record :func:`probing`)."""
    return breaker.state == OPEN and now - breaker.probe_at >= PROBE_INTERVAL_US


def probing(breaker: Breaker, now: int) -> Breaker:
    return dataclasses.replace(breaker, state=HALF_OPEN, probe_at=now)


def probe_due_at(breaker: Breaker) -> int | None:
    """When an open breaker will let a probe through, None if it is not open."""
    return breaker.probe_at + PROBE_INTERVAL_US if breaker.state == OPEN else None


def _opened(breaker: Breaker, now: int, failures: int) -> Breaker:
    return Breaker(OPEN, failures, breaker.down_since or now, now)


def read(row: np.void) -> Breaker:
    """The breaker kept in a health-table row."""
    return Breaker(int(row["breaker"]), int(row["consecutive_failures"]), int(row["down_since"]), int(row["probe_at"]))


def write(row: np.void, breaker: Breaker) -> None:
    if breaker.state != int(row["breaker"]):
        row["transitions"][breaker.state] += 1
    row["breaker"] = breaker.state
    row["consecutive_failures"] = breaker.failures
    row["down_since"] = breaker.down_since
    row["probe_at"] = breaker.probe_at
