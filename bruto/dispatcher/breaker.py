"""Circuit breaker per processor, as pure transitions over a health-table row.

    CLOSED ──(THRESHOLD failures in a row, or health says failing)──► OPEN
    OPEN ──(PROBE_INTERVAL passed, or health says not failing)──► HALF_OPEN
    HALF_OPEN ──(the single probe payment succeeds)──► CLOSED
    HALF_OPEN ──(the probe fails)──► OPEN

The row lives in shared memory (bruto.shm.layout.HEALTH), so a restarted
dispatcher finds the breakers as they were and the inspector can show them.
``down_since`` is kept from the first opening until the breaker closes again:
it is the clock the routing policy's patience is measured on. Every change of
state is counted in the row's ``transitions`` (indexed by the state entered),
for the metrics endpoint.
"""

from __future__ import annotations

CLOSED = 0
OPEN = 1
HALF_OPEN = 2
NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}

# Failures in a row that open a closed breaker. A single 500 is noise (a retry
# costs nothing); five in a row at 500 payments/s is ten milliseconds of
# evidence that the processor is failing for real.
THRESHOLD = 5
# Time between probes while open, in microseconds. A probe is one payment; a
# failed probe costs nothing but a retry, and a processor that recovered is
# found within this interval.
PROBE_INTERVAL_US = 200_000


def record_success(row) -> None:
    if int(row["breaker"]) != CLOSED:
        _count_transition(row, CLOSED)
    row["breaker"] = CLOSED
    row["consecutive_failures"] = 0
    row["down_since"] = 0


def record_failure(row, now: int) -> None:
    row["consecutive_failures"] = int(row["consecutive_failures"]) + 1
    state = int(row["breaker"])
    if state == HALF_OPEN or (state == CLOSED and row["consecutive_failures"] >= THRESHOLD):
        _open(row, now)


def record_health(row, failing: bool, now: int) -> None:
    """Fold a service-health report in: it can open, or invite a probe, never close."""
    state = int(row["breaker"])
    if failing and state == CLOSED:
        _open(row, now)
    elif not failing and state == OPEN:
        row["probe_at"] = 0  # probe at once rather than after the interval


def may_probe(row, now: int) -> bool:
    """Whether an open breaker is due for a probe (then call :func:`start_probe`)."""
    return int(row["breaker"]) == OPEN and now - int(row["probe_at"]) >= PROBE_INTERVAL_US


def start_probe(row, now: int) -> None:
    _count_transition(row, HALF_OPEN)
    row["breaker"] = HALF_OPEN
    row["probe_at"] = now


def down_for(row, now: int) -> int:
    """Microseconds since the breaker left CLOSED, 0 when closed."""
    since = int(row["down_since"])
    return now - since if since else 0


def _open(row, now: int) -> None:
    if not int(row["down_since"]):
        row["down_since"] = now
    if int(row["breaker"]) != OPEN:
        _count_transition(row, OPEN)
    row["breaker"] = OPEN
    row["probe_at"] = now


def _count_transition(row, state: int) -> None:
    row["transitions"][state] += 1
