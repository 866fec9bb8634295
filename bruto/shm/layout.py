"""Every shared-memory region bruto uses, declared once.

| region       | file          | single writer        | what it holds                            |
| ------------ | ------------- | -------------------- | ---------------------------------------- |
| intake slab  | intake-NN.bin | the web worker in NN | payments accepted by that worker         |
| dispatch     | dispatch.bin  | dispatcher           | per slab: drain cursor, purges done      |
| outbox       | outbox.bin    | dispatcher           | payments between intake and confirmation |
| ledger       | ledger.bin    | dispatcher           | payments a processor confirmed (a ring)  |
| health       | health.bin    | the elected poller   | one row per processor                    |
| metrics      | metrics.bin   | dispatcher           | the dispatcher's counters, per processor |
| index        | index.bin     | dispatcher           | where each id it holds lives (dedup)     |
| rejected     | rejected.bin  | dispatcher           | payments a processor refused for good    |

Counters for the metrics endpoint and the inspector live with their writer: a
web worker counts its answers in its own intake slab's counters (beside
``written``), the dispatcher in ``metrics.bin``, the breakers in their health
rows. Each array below is indexed by a vocabulary declared next to it, so the
writers and the readers (bruto.shm.snapshot) agree on what index means what.

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
# A web worker's answers, counted in its intake slab by route and status.
# POST /payments answered 202 is not counted there: each one is exactly one
# record published (``written``), so the hot path pays nothing for it, and
# its refusals are counted by reason (REJECTIONS) instead.
# ``payments_by_id`` is GET /payments/{correlationId} (bruto.shm.lookup).
ROUTES = ("payments", "payments_summary", "purge_payments", "metrics", "payments_by_id", "other")
ROUTE_OF_PATH = {"/payments": 0, "/payments-summary": 1, "/purge-payments": 2, "/metrics": 3}
PAYMENT_ROUTE = ROUTES.index("payments_by_id")
OTHER_ROUTE = ROUTES.index("other")
STATUSES = (200, 202, 400, 401, 403, 404, 405, 413, 422, 500, 503)
OTHER_STATUS = len(STATUSES)  # the array has one more column, for any status not listed
# Why POST /payments refused a payment (reason, the status answered): the
# rows of bruto.gateway.validation's table, and a full intake.
REJECTIONS = (
    ("body_too_large", 413),
    ("invalid_json", 400),
    ("not_an_object", 400),
    ("correlation_id_missing", 422),
    ("correlation_id_invalid", 422),
    ("amount_missing", 422),
    ("amount_not_a_number", 422),
    ("amount_not_positive", 422),
    ("amount_too_precise", 422),
    ("amount_too_large", 422),
    ("intake_full", 503),
    ("overloaded", 503),  # more payments waiting than BRUTO_SHED_BACKLOG (load shed)
)
# Answers the worker gives before any route is known (malformed HTTP, limits,
# an app that failed), by status: they never reach the app.
PROTOCOL_ERRORS = (400, 413, 414, 431, 500)

INTAKE = Layout(
    kind=b"intake",
    version=5,
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
        # Counted by whichever worker holds the slot: they add up over its
        # successive owners, so they only grow (Prometheus counters).
        ("responses", "<i8", (len(ROUTES), len(STATUSES) + 1)),
        ("rejections", "<i8", (len(REJECTIONS),)),
        ("protocol_errors", "<i8", (len(PROTOCOL_ERRORS),)),
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

OUTBOX = Layout(
    kind=b"outbox",
    version=4,
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
        ("purged", "u1"),            # 1: out when a purge was carried out; kept only if a processor stored it
        # 1: taken over from a lost host (bruto.cluster), which may have sent it to either
        # processor: once `processor` has proven it absent, the other is looked up too.
        ("look_up_other", "u1"),
    ]),
)

LEDGER = Layout(
    kind=b"ledger",
    version=2,
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
        # When the dispatcher learned of it: a purge asked on another host drops what was
        # confirmed up to its commit and keeps what came after (bruto.shm.purge drop_before).
        ("confirmed_at", "<i8"),
    ]),
    # Summaries scan requested_at, amount_cents and processor over the whole
    # ring: one contiguous array each makes that a few memory-bound passes.
    columnar=True,
)

# The dedup index (bruto.dispatcher.dedup), in shared memory so that any web
# worker can find a payment by its id (bruto.shm.lookup): an open-addressing
# table of references, each a ledger slot (``0 <= ref < ledger_capacity``) or
# an outbox entry (``ledger_capacity + entry``), EMPTY_REF where none.
EMPTY_REF = -1
INDEX_MAX_LOAD = 0.6
INDEX = Layout(
    kind=b"index",
    version=1,
    counters=np.dtype([
        # A sequence a reader checks around its probe: odd while the
        # dispatcher makes a change a probe could miss a key in (a removal's
        # backward shift, a rebuild), and 0 until a dispatcher first built the
        # table. A probe that saw it odd, or changed, is not to be trusted.
        ("changes", "<i8"),
        ("hash_k1", "<u8"),          # the keyed hash's multipliers (bruto.dispatcher.dedup)
        ("hash_k2", "<u8"),
        ("ledger_capacity", "<i8"),  # where ledger refs end and outbox refs begin
    ]),
    record=np.dtype([
        ("ref", "<i4"),
    ]),
)

# Payments a processor refused for good (a 4XX other than 422 and 429): the
# outbox lets them go, and this ring keeps the last REJECTED_CAPACITY of them
# so GET /payments/{id} can say so. Record ``i`` at ``i % capacity``.
REJECTED_CAPACITY = 4096
REJECTED = Layout(
    kind=b"rejected",
    version=1,
    counters=np.dtype([
        ("count", "<i8"),  # records ever appended (published after the record)
        ("start", "<i8"),  # first index not purged
    ]),
    record=np.dtype([
        ("correlation_id", "V16"),
        ("amount_cents", "<i8"),
        ("requested_at", "<i8"),     # sent with the attempt the processor refused
        ("rejected_at", "<i8"),
        ("processor", "u1"),
    ]),
)

# A processor's circuit breaker as the health row's ``breaker`` holds it
# (bruto.dispatcher.breaker has the transitions), and the names readers give
# each state, indexed by its code.
BREAKER_CLOSED = 0
BREAKER_OPEN = 1
BREAKER_HALF_OPEN = 2
BREAKER_STATES = ("closed", "open", "half_open")

# Seconds of delay evidence kept one by one (bruto.dispatcher.delays).
DELAY_SECONDS = 64

HEALTH = Layout(
    kind=b"health",
    version=3,
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
        ("breaker", "<i8"),             # BREAKER_CLOSED / _OPEN / _HALF_OPEN (below)
        ("down_since", "<i8"),          # when the breaker last left CLOSED (0: up)
        ("probe_at", "<i8"),            # when the last half-open probe started
        # The largest delay the processor showed (an answer's latency) or
        # announced (service-health), per second: second s at s % DELAY_SECONDS.
        ("delay_second", "<i8"),        # the latest second recorded
        ("delay_before_ms", "<i8"),     # the largest of every second the ring has forgotten
        ("delay_ms", "<i8", (DELAY_SECONDS,)),
        ("transitions", "<i8", (3,)),   # times the breaker entered each state (indexed by state)
    ]),
)

# What the dispatcher counts (METRICS). Outcomes are bruto.dispatcher.processor.Outcome's values.
OUTCOMES = ("stored", "duplicate", "failed", "rejected", "unknown")
LOOKUP_RESULTS = ("found", "not_found", "unknown")
HEALTH_POLL_RESULTS = ("ok", "rate_limited", "failed")
# Upper bounds (inclusive, microseconds) of the latency histograms' buckets,
# from a fast local answer to the slowest the official test configures (5 s)
# and a payment waiting out an outage (tens of seconds); one more bucket
# counts what lies beyond the last bound.
LATENCY_BOUNDS_US = (
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
)
_BUCKETS = len(LATENCY_BOUNDS_US) + 1

METRICS = Layout(
    kind=b"metrics",
    version=1,
    counters=np.dtype([
        ("duplicates_dropped", "<i8"),  # intake records whose correlationId was already taken
        ("purges", "<i8"),
        # From acceptance (the 202) to the confirmation recorded in the ledger.
        ("outbox_wait_sum_us", "<i8"),
        ("outbox_wait_buckets", "<i8", (_BUCKETS,)),
    ]),
    # One row per processor (DEFAULT, FALLBACK); every field only grows.
    record=np.dtype([
        ("attempts", "<i8"),            # POSTs sent
        ("retries", "<i8"),             # of which not the payment's first attempt
        ("outcomes", "<i8", (len(OUTCOMES),)),
        ("lookups", "<i8", (len(LOOKUP_RESULTS),)),
        ("confirmed", "<i8"),           # payments recorded in the ledger for this processor
        ("confirmed_cents", "<i8"),
        ("health_polls", "<i8", (len(HEALTH_POLL_RESULTS),)),
        ("send_sum_us", "<i8"),         # time each POST took, whatever its outcome
        ("send_buckets", "<i8", (_BUCKETS,)),
    ]),
)


def intake_path(settings: Settings, slot: int) -> str:
    return slab_path(settings.shm_dir, slot)


def slab_path(shm_dir: str, slot: int) -> str:
    return os.path.join(shm_dir, f"intake-{slot:02d}.bin")


def region_path(shm_dir: str, layout: Layout) -> str:
    """The file of a one-file region: named after its kind (``ledger.bin``)."""
    return os.path.join(shm_dir, layout.kind.decode() + ".bin")


def open_intake(settings: Settings, slot: int) -> Region:
    return Region.open(intake_path(settings, slot), INTAKE, settings.intake_capacity)


def open_dispatch(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, DISPATCH), DISPATCH, settings.intake_slots)


def open_outbox(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, OUTBOX), OUTBOX, settings.outbox_capacity)


def open_ledger(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, LEDGER), LEDGER, settings.ledger_capacity)


def open_health(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, HEALTH), HEALTH, len(PROCESSOR_NAMES))


def open_metrics(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, METRICS), METRICS, len(PROCESSOR_NAMES))


_MASK64 = (1 << 64) - 1


def index_home_slot(key: bytes, k1: int, k2: int, shift: int) -> int:
    """The INDEX slot where a probe for ``key`` starts: part of the table's format, since the
    dispatcher writes where readers look (keys ``hash_k1`` and ``hash_k2``, per table)."""
    low = int.from_bytes(key[:8], "little")
    high = int.from_bytes(key[8:], "little")
    return ((low * k1 ^ high * k2) & _MASK64) >> shift


def index_hash_shift(slots: int) -> int:
    """The shift of :func:`index_home_slot` for a table of ``slots`` (a power of two)."""
    return 64 - slots.bit_length() + 1


def index_slots(ledger_capacity: int, outbox_capacity: int) -> int:
    """Slots of the dedup table for every id the ledger and the outbox can hold:
    a power of two, at a load factor of at most INDEX_MAX_LOAD."""
    slots = 8
    while slots * INDEX_MAX_LOAD < ledger_capacity + outbox_capacity:
        slots *= 2
    return slots


def open_index(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, INDEX), INDEX,
                       index_slots(settings.ledger_capacity, settings.outbox_capacity))


def open_rejected(settings: Settings) -> Region:
    return Region.open(region_path(settings.shm_dir, REJECTED), REJECTED, REJECTED_CAPACITY)


@dataclasses.dataclass(frozen=True)
class DispatcherRegions:
    """Every region the dispatcher reads or writes."""

    intake: list[Region]
    dispatch: Region
    outbox: Region
    ledger: Region
    health: Region
    metrics: Region
    index: Region
    rejected: Region

    @classmethod
    def open(cls, settings: Settings) -> "DispatcherRegions":
        return cls([open_intake(settings, slot) for slot in range(settings.intake_slots)],
                   open_dispatch(settings), open_outbox(settings), open_ledger(settings), open_health(settings),
                   open_metrics(settings), open_index(settings), open_rejected(settings))

    @classmethod
    def in_memory(cls, intake_slots: int, intake_capacity: int, outbox_capacity: int,
                  ledger_capacity: int) -> "DispatcherRegions":
        """The same regions in process memory, for tests of the dispatcher's logic."""
        return cls([Region.in_memory(INTAKE, intake_capacity) for _ in range(intake_slots)],
                   Region.in_memory(DISPATCH, intake_slots), Region.in_memory(OUTBOX, outbox_capacity),
                   Region.in_memory(LEDGER, ledger_capacity), Region.in_memory(HEALTH, len(PROCESSOR_NAMES)),
                   Region.in_memory(METRICS, len(PROCESSOR_NAMES)),
                   Region.in_memory(INDEX, index_slots(ledger_capacity, outbox_capacity)),
                   Region.in_memory(REJECTED, REJECTED_CAPACITY))


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
    open_metrics(settings)
    open_index(settings)
    open_rejected(settings)
