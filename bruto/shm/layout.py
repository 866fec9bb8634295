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

import dataclasses
import os

import numpy as np

from bruto.config import Settings
from bruto.shm.region import Layout
from bruto.shm.region import Region

# Processors are numbered; the number is what the ledger stores.
DEFAULT = 0
FALLBACK = 1
PROCESSOR_NAMES = ("default", "fallback")

# Most intake slots a directory can have: a purge request records where every
# slot stood when it was asked, in a fixed-size field of the asking slab.
MAX_INTAKE_SLOTS = 64

INTAKE = Layout(
    kind=b"intake",
    version=2,
    counters=np.dtype([
        ("written", "<i8"),         # records published; the next one goes at written % capacity
        ("owner_pid", "<i8"),       # informational: the worker that holds the slot now
        # POST /purge-payments through this slab (bruto.shm.intake): the ticket,
        # until when the dispatcher may carry it out, the ticket the gateway
        # gave up on, and where the ledger and every slab stood when it was asked.
        ("purge_ticket", "<i8"),
        ("purge_deadline", "<i8"),
        ("purge_cancelled", "<i8"),
        ("purge_ledger_below", "<i8"),
        ("purge_below", "<i8", (MAX_INTAKE_SLOTS,)),
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),  # UUID bytes
        ("amount_cents", "<i8"),
        ("accepted_at", "<i8"),     # when the gateway answered 202
    ]),
)

DISPATCH = Layout(
    kind=b"dispatch",
    version=2,
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
        # The purge being carried out (claimed, not yet done): the ledger
        # records it drops; the slabs' records it drops are in `purge_below`.
        ("purge_ledger_below", "<i8"),
    ]),
    # One record per intake slot.
    record=np.dtype([
        ("drained", "<i8"),        # intake records of this slot moved to the outbox (or dropped)
        ("purge_below", "<i8"),    # of the purge being carried out: this slot's records below it go
        ("purge_claimed", "<i8"),  # the last purge ticket of this slot the dispatcher committed to
        ("purges_done", "<i8"),    # the last purge ticket of this slot carried out to the end
    ]),
)

# Outbox entry states (bruto.dispatcher.outbox has the transitions).
FREE = 0
QUEUED = 1      # stored by no processor: may go to either, with a fresh requestedAt
SENT = 2        # an attempt to `processor` is out
UNRESOLVED = 3  # `processor` may have stored it: only that processor may have it
STATE_NAMES = ("free", "queued", "sent", "unresolved")

OUTBOX = Layout(
    kind=b"outbox",
    version=2,
    counters=np.dtype([
        ("in_use", "<i8"),
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),
        ("amount_cents", "<i8"),
        ("accepted_at", "<i8"),
        ("requested_at", "<i8"),     # sent with the last attempt; kept while SENT or UNRESOLVED
        ("sent_at", "<i8"),          # when the last attempt went out
        ("announced_ms", "<i4"),     # the processor's delay as last announced when the attempt went out
        ("attempts", "<u2"),         # sends and lookups so far (backoff)
        ("state", "u1"),
        ("processor", "u1"),         # target of the last attempt
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

# Seconds of delay evidence kept one by one (bruto.dispatcher.delays).
DELAY_SECONDS = 64

HEALTH = Layout(
    kind=b"health",
    version=2,
    counters=np.dtype([
        ("poller_pid", "<i8"),
    ]),
    # One row per processor (DEFAULT, FALLBACK).
    record=np.dtype([
        ("failing", "<i8"),             # as last reported by service-health (0/1)
        ("min_response_ms", "<i8"),     # as last reported by service-health
        ("polled_at", "<i8"),           # when the call behind that report was made (0: never)
        ("next_poll_at", "<i8"),        # earliest next call (window, Retry-After)
        ("latency_p90_ms", "<i8"),      # of recent successful payments
        ("consecutive_failures", "<i8"),
        ("breaker", "<i8"),             # CLOSED / OPEN / HALF_OPEN, see bruto.dispatcher.breaker
        ("down_since", "<i8"),          # when the breaker last left CLOSED (0: up)
        ("probe_at", "<i8"),            # when the last half-open probe started
        # The largest delay the processor showed (an answer's latency) or
        # announced (service-health), per second: second s at s % DELAY_SECONDS.
        ("delay_second", "<i8"),        # the latest second recorded
        ("delay_before_ms", "<i8"),     # the largest of every second the ring has forgotten
        ("delay_ms", "<i8", (DELAY_SECONDS,)),
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


@dataclasses.dataclass(frozen=True)
class DispatcherRegions:
    """Every region the dispatcher reads or writes."""

    intake: list[Region]
    dispatch: Region
    outbox: Region
    ledger: Region
    health: Region

    @classmethod
    def open(cls, settings: Settings) -> "DispatcherRegions":
        return cls([open_intake(settings, slot) for slot in range(settings.intake_slots)],
                   open_dispatch(settings), open_outbox(settings), open_ledger(settings), open_health(settings))

    @classmethod
    def in_memory(cls, intake_slots: int, intake_capacity: int, outbox_capacity: int,
                  ledger_capacity: int) -> "DispatcherRegions":
        """The same regions in process memory, for tests of the dispatcher's logic."""
        return cls([Region.in_memory(INTAKE, intake_capacity) for _ in range(intake_slots)],
                   Region.in_memory(DISPATCH, intake_slots), Region.in_memory(OUTBOX, outbox_capacity),
                   Region.in_memory(LEDGER, ledger_capacity), Region.in_memory(HEALTH, len(PROCESSOR_NAMES)))


def create_all(settings: Settings) -> None:
    """Create every region that does not exist yet (idempotent, race-safe)."""
    if settings.intake_slots > MAX_INTAKE_SLOTS:
        raise ValueError(f"BRUTO_INTAKE_SLOTS is {settings.intake_slots}; at most {MAX_INTAKE_SLOTS} are supported")
    for slot in range(settings.intake_slots):
        open_intake(settings, slot)
    open_dispatch(settings)
    open_outbox(settings)
    open_ledger(settings)
    open_health(settings)
