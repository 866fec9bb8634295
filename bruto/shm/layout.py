"""Every shared-memory region bruto uses, declared once.

| region       | file          | single writer        | what it holds                            |
| ------------ | ------------- | -------------------- | ---------------------------------------- |
| intake slab  | intake-NN.bin | the web worker in NN | payments accepted by that worker         |
| dispatch     | dispatch.bin  | dispatcher           | per slab: drain cursor, purges done      |
| outbox       | outbox.bin    | dispatcher           | payments between intake and confirmation |
| ledger       | ledger.bin    | dispatcher           | payments a processor confirmed (a ring)  |
| health       | health.bin    | the elected poller   | one row per processor                    |

Time is integer microseconds since the Unix epoch (UTC); money is integer cents.
"""

from __future__ import annotations

import os

import numpy as np

from bruto.config import Settings
from bruto.shm.region import Layout
from bruto.shm.region import Region

# Processors are numbered; the number is what the ledger stores.
DEFAULT = 0
FALLBACK = 1
PROCESSOR_NAMES = ("default", "fallback")

INTAKE = Layout(
    kind=b"intake",
    version=1,
    counters=np.dtype([
        ("written", "<i8"),         # records published; the next one goes at written % capacity
        ("purge_requests", "<i8"),  # POST /purge-payments calls made through this slab
        ("owner_pid", "<i8"),       # informational: the worker that holds the slot now
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),  # UUID bytes
        ("amount_cents", "<i8"),
        ("accepted_at", "<i8"),     # when the gateway answered 202
    ]),
)

DISPATCH = Layout(
    kind=b"dispatch",
    version=1,
    counters=np.dtype([
        ("dispatcher_pid", "<i8"),
        ("started_at", "<i8"),
        # Running totals since the regions were created, for the inspector.
        ("attempts", "<i8"),
        ("stored", "<i8"),
        ("failed", "<i8"),
        ("unknown", "<i8"),
        ("lookups", "<i8"),
        ("duplicates_dropped", "<i8"),
        ("rejected", "<i8"),
        ("purges", "<i8"),
    ]),
    # One record per intake slot.
    record=np.dtype([
        ("drained", "<i8"),      # intake records of this slot moved to the outbox (or dropped)
        ("purges_done", "<i8"),  # purge requests of this slot carried out
    ]),
)

# Outbox entry states.
FREE = 0
QUEUED = 1   # waiting to be sent (never sent, or the last attempt surely failed)
SENT = 2     # an attempt is out, or its outcome is unknown: resolve before rerouting

OUTBOX = Layout(
    kind=b"outbox",
    version=1,
    counters=np.dtype([
        ("in_use", "<i8"),
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),
        ("amount_cents", "<i8"),
        ("accepted_at", "<i8"),
        ("requested_at", "<i8"),     # of the current attempt; fixed while its outcome is unknown
        ("next_attempt_at", "<i8"),
        ("state", "u1"),
        ("processor", "u1"),         # target of the current attempt
        ("attempts", "<u2"),
        ("pad", "V4"),
    ]),
)

LEDGER = Layout(
    kind=b"ledger",
    version=1,
    counters=np.dtype([
        ("count", "<i8"),          # records ever appended; slot = index % capacity
        ("start", "<i8"),          # first index still counted (moved by purges)
        ("evicted_until", "<i8"),  # latest requested_at overwritten by the ring
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),
        ("requested_at", "<i8"),
        ("amount_cents", "<i8"),
        ("processor", "u1"),
    ]),
    # Summaries scan requested_at, amount_cents and processor over the whole
    # ring: one contiguous array each makes that a few memory-bound passes.
    columnar=True,
)

HEALTH = Layout(
    kind=b"health",
    version=1,
    counters=np.dtype([
        ("poller_pid", "<i8"),
    ]),
    # One row per processor (DEFAULT, FALLBACK).
    record=np.dtype([
        ("failing", "<i8"),             # as last reported by service-health (0/1)
        ("min_response_ms", "<i8"),     # as last reported by service-health
        ("polled_at", "<i8"),           # when that report arrived (0: never)
        ("next_poll_at", "<i8"),        # earliest next call (window, Retry-After)
        ("latency_p90_ms", "<i8"),      # of recent successful payments
        ("consecutive_failures", "<i8"),
        ("breaker", "<i8"),             # CLOSED / OPEN / HALF_OPEN, see bruto.dispatcher.breaker
        ("down_since", "<i8"),          # when the breaker last left CLOSED (0: up)
        ("probe_at", "<i8"),            # when the last half-open probe started
    ]),
)


def intake_path(settings: Settings, slot: int) -> str:
    return os.path.join(settings.shm_dir, f"intake-{slot:02d}.bin")


def open_intake(settings: Settings, slot: int) -> Region:
    return Region.open(intake_path(settings, slot), INTAKE, settings.intake_capacity)


def open_dispatch(settings: Settings) -> Region:
    return Region.open(os.path.join(settings.shm_dir, "dispatch.bin"), DISPATCH, settings.intake_slots)


def open_outbox(settings: Settings) -> Region:
    return Region.open(os.path.join(settings.shm_dir, "outbox.bin"), OUTBOX, settings.outbox_capacity)


def open_ledger(settings: Settings) -> Region:
    return Region.open(os.path.join(settings.shm_dir, "ledger.bin"), LEDGER, settings.ledger_capacity)


def open_health(settings: Settings) -> Region:
    return Region.open(os.path.join(settings.shm_dir, "health.bin"), HEALTH, len(PROCESSOR_NAMES))


def create_all(settings: Settings) -> None:
    """Create every region that does not exist yet (idempotent, race-safe)."""
    for slot in range(settings.intake_slots):
        open_intake(settings, slot)
    open_dispatch(settings)
    open_outbox(settings)
    open_ledger(settings)
    open_health(settings)
