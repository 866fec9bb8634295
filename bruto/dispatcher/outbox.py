"""The outbox: every payment between intake and the ledger, as a sans-I/O state machine.

Events come in as method calls, each with the time it happened (``now``,
epoch µs): :meth:`Outbox.recover`, :meth:`~Outbox.drain`, :meth:`~Outbox.poll`
(time passing), :meth:`~Outbox.attempt_done`, :meth:`~Outbox.lookup_done`,
:meth:`~Outbox.health_reported`, :meth:`~Outbox.purge`. What needs the
network comes out as actions, :class:`Send` and :class:`Lookup`, which the
shell (bruto.dispatcher.service) carries out and answers with the matching
event. Nothing here reads a clock, opens a socket or sleeps.

The state is the shared regions (bruto.shm.layout): intake cursors, outbox
entries, ledger, breakers, purge tickets. Every transition writes them in an
order that a crash at any point leaves recoverable (docs/DISPATCHER.md has
the argument); what lives in process memory (free list, ready queue, timers,
the dedup index) is rebuilt from them by :meth:`Outbox.recover`. The events
also count what happened in metrics.bin (bruto.dispatcher.metrics), which
only the metrics endpoint and the inspector read.

An entry's states (bruto.shm.layout) and the events that move it are a table
in code, bruto.dispatcher.transitions: every change of an entry's state goes
through :meth:`Outbox._move`, which refuses a move the table does not allow.
A payment drained while its id is held already takes no entry: it is dropped
as a duplicate.

Absence is proven when the lookup was asked at least
``LOOKUP_MARGIN_US`` after the largest delay P showed or announced since the
last attempt went out, or announced last before it, and P has answered a
service-health call made after the attempt (bruto.dispatcher.delays).
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
from collections.abc import Callable
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from bruto.dispatcher import breaker
from bruto.dispatcher import delays
from bruto.dispatcher import routing
from bruto.dispatcher import transitions
from bruto.dispatcher.dedup import DedupIndex
from bruto.dispatcher.metrics import DispatcherMetrics
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.dispatcher.transitions import Event
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import FREE
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import DispatcherRegions
from bruto.shm.ledger import LedgerWriter
from bruto.shm.purge import PurgeCarrier
from bruto.shm.rejected import RejectedWriter

log = logging.getLogger("bruto.dispatcher")

# Wait before sending again after a definite failure (500, 429, no connection)
# while the breaker stays closed: a stray failure costs 50 ms, no more.
RETRY_BACKOFF_US = 50_000
# Beyond the delay a request can spend inside a processor: the time to store
# the row and for a lookup to see it, and clock differences.
LOOKUP_MARGIN_US = 1_000_000
# Lookups that settle nothing back off: 0.25 s, doubling, at most 30 s.
LOOKUP_BACKOFF_US = 250_000
LOOKUP_BACKOFF_MAX_US = 30_000_000
# After the next service-health call is due, the time its answer may take.
HEALTH_ANSWER_US = 200_000
LATENCY_SAMPLES = 128
LATENCY_PUBLISH_US = 500_000
# The answers that say how fast a processor is now: the last few, and only
# recent ones, so a processor that recovered is not judged by its past.
RECENT_ANSWERS = 9
RECENT_US = 5_000_000
_MAX_ATTEMPTS = 65_535  # the counter is 16 bits


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Action: POST the payment to ``processor``; answer with :meth:`Outbox.attempt_done`."""

    entry: int
    generation: int
    processor: int
    correlation_id: bytes
    amount_cents: int
    requested_at: int
    timeout_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Lookup:
    """Action: GET the payment from ``processor``; answer with :meth:`Outbox.lookup_done`."""

    entry: int
    generation: int
    processor: int
    correlation_id: bytes
    asked_at: int


Action = Send | Lookup

_T = TypeVar("_T")


def _pair(values: Sequence[_T]) -> tuple[_T, _T]:
    """A per-processor list as routing takes it: one value for default, one for fallback."""
    return values[DEFAULT], values[FALLBACK]


class Outbox:
    """The dispatcher's core over its regions; see the module docstring.

    Args:
        regions: the shared regions (or in-memory ones, in tests).
        policy: the routing policy.
        claiming: payments must be claimed before they are sent (many hosts,
            bruto.cluster): a queued payment waits in :meth:`to_claim` until
            :meth:`claimed` says whether this host may send it.
    """

    def __init__(self, regions: DispatcherRegions, policy: routing.Policy, claiming: bool = False):
        self.policy = policy
        self.claiming = claiming
        self._metrics = DispatcherMetrics(regions.metrics)
        self._in_flight = [0, 0]  # Sends out, per processor
        self._slabs = regions.intake
        self._cursors = regions.dispatch.records
        # The running totals (and the purge being carried out) the inspector reads; the outbox only writes them.
        self._dispatch = regions.dispatch.counters
        self._entries = regions.outbox.records
        # The state column as a memoryview: read and stored as a plain int, cheaper than numpy's
        # indexing on the path every payment takes (bruto.dispatcher.metrics says why).
        self._states = self._entries["state"].data
        self._in_use = regions.outbox.counters
        self._ledger = LedgerWriter(regions.ledger)
        self._ledger_ids = regions.ledger.columns["correlation_id"]
        self._health = regions.health.records
        self._rejected = RejectedWriter(regions.rejected)
        self.purges = PurgeCarrier(regions.intake, regions.dispatch)  # the protocol, both sides: bruto.shm.purge
        self._dedup = DedupIndex(regions.ledger.columns["correlation_id"], self._entries["correlation_id"],
                                 regions.index)
        self._generation = [0] * regions.outbox.capacity  # of each entry's one pending timer or action
        self._free: list[int] = []
        self._ready: collections.deque[int] = collections.deque()
        self._unclaimed: list[int] = []  # queued, not yet claimed (only while claiming), oldest first
        # Many hosts: nothing is sent from this moment on (epoch µs) until this host's lease is renewed
        # (bruto.cluster.link sets it); closed until the first renewal. None: one host, no lease.
        self.send_until: int | None = 0 if claiming else None
        self._cluster_purges: set[int] = set()  # slots whose purge waits for the cluster's record (claiming)
        self._timers: list[tuple[int, int, int]] = []  # heap of (due, entry, generation)
        self._latencies: tuple[collections.deque[int], ...] = tuple(
            collections.deque(maxlen=LATENCY_SAMPLES) for _ in PROCESSOR_NAMES)
        # (answered at, ms) of the last answers, and the send time of each
        # payment out, oldest first, per processor: what latency is now.
        self._recent: tuple[collections.deque[tuple[int, int]], ...] = tuple(
            collections.deque(maxlen=RECENT_ANSWERS) for _ in PROCESSOR_NAMES)
        self._out: tuple[dict[tuple[int, int], int], ...] = ({}, {})
        self._answered_sent_at = [0, 0]  # when the latest payment each has answered was sent
        self._slow_since = [0, 0]
        # When each breaker last closed after an outage: the delay announced
        # before it is stale until a health call asked since then says otherwise.
        self._closed_at = [0, 0]
        self._latency_published_at = 0
        # What the health table says, per processor, kept here too: the
        # outbox is the table's only writer (the poller's reports come
        # through health_reported), so reading it back on every send is waste.
        self._breakers = [breaker.Breaker(), breaker.Breaker()]
        self._announced_ms = [0, 0]   # min_response_ms
        self._p90_ms = [0, 0]         # latency_p90_ms
        self._delay_seen = [(0, 0), (0, 0)]  # delays.record's last (second, largest)

    # -- events ----------------------------------------------------------------

    def recover(self, now: int, pid: int = 0) -> None:
        """Start (or restart after a crash) from what the regions hold, as process ``pid`` (the inspector shows it)."""
        for slot in self.purges.unfinished():
            self._finish_purge(slot)  # committed before the crash: carry it out to the end
        self._in_flight = [0, 0]
        self._out = ({}, {})
        self._answered_sent_at = [0, 0]
        self._slow_since = [0, 0]
        self._closed_at = [0, 0]
        rows = self._health
        self._breakers = [breaker.read(row) for row in rows]
        self._announced_ms = [int(row["min_response_ms"]) for row in rows]
        self._p90_ms = [int(row["latency_p90_ms"]) for row in rows]
        self._delay_seen = [(0, 0), (0, 0)]
        self._reindex(now, crashed=True)
        self._dispatch["started_at"] = now
        self._dispatch["dispatcher_pid"] = pid
        held = len(self._entries) - len(self._free)
        log.info("recovered: %d payments in the outbox, %d in the ledger", held, self._dedup.size - held)

    def drain(self, now: int) -> int:
        """Move what the gateways accepted from intake into the outbox; returns how many records."""
        limits = self.purges.drain_limits(now)
        dedup, entries, free = self._dedup, self._entries, self._free
        ready = self._unclaimed if self.claiming else self._ready
        moved = 0
        for slot, slab in enumerate(self._slabs):
            cursor = self._cursors[slot]
            drained = int(cursor["drained"])
            written = int(slab.counters["written"])  # load the publication counter first
            if limits is not None:
                written = min(written, limits[slot])  # what came after a pending purge waits for it
            capacity = slab.capacity
            while drained < written and free:
                record = slab.records[drained % capacity]
                correlation_id = record["correlation_id"].tobytes()
                index = free[-1]
                if dedup.insert(correlation_id, dedup.outbox_ref(index)) is not None:
                    # (a record drained just before a crash, re-drained after it, is counted here too)
                    self._dispatch["duplicates_dropped"] += 1
                    self._metrics.duplicate_dropped()
                else:
                    free.pop()
                    entry = entries[index]
                    entry["correlation_id"] = correlation_id
                    entry["amount_cents"] = record["amount_cents"]
                    entry["accepted_at"] = record["accepted_at"]
                    entry["attempts"] = 0
                    entry["purged"] = 0
                    entry["look_up_other"] = 0
                    self._move(index, Event.DRAINED)  # the entry is complete: publish it
                    self._in_use["in_use"] += 1
                    ready.append(index)
                drained += 1
                cursor["drained"] = drained  # after the entry: a crash re-drains, the index drops it
                moved += 1
        return moved

    def to_claim(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest queued payments not claimed yet: (entry, correlationId), at most ``limit``."""
        return [(index, self._entries[index]["correlation_id"].tobytes()) for index in self._unclaimed[:limit]]

    def amounts(self, batch: list[tuple[int, bytes]]) -> list[int]:
        """The amount of each payment of a :meth:`to_claim` batch (a claim keeps it for a taker)."""
        return [int(self._entries[index]["amount_cents"]) for index, _ in batch]

    def claimed(self, batch: list[tuple[int, bytes]], mine: set[bytes]) -> int:
        """The claim of ``batch`` (what :meth:`to_claim` gave) is decided: the ids in ``mine`` are this
        host's to send; the others are claimed by another host and dropped. Returns how many were dropped.
        """
        decided = []
        for index, correlation_id in batch:
            entry = self._entries[index]
            # The claim ran while other events went on: a purge may have freed
            # the entry, or a new payment taken it, which waits for its own claim.
            if entry["state"] == QUEUED and entry["correlation_id"].tobytes() == correlation_id:
                decided.append((index, correlation_id))
        done = {index for index, _ in decided}
        self._unclaimed = [index for index in self._unclaimed if index not in done]
        dropped = 0
        for index, correlation_id in decided:
            if correlation_id in mine:
                self._ready.append(index)
            else:
                # Another host has it: sending it here too could store it twice.
                self._dispatch["duplicates_dropped"] += 1
                self._release(index, Event.CLAIMED_ELSEWHERE, forget=True)
                dropped += 1
        return dropped

    # -- many hosts: the lease, and takeovers (bruto.cluster.link) -----------------------

    def may_send(self, now: int) -> bool:
        """Whether a payment may go out now: always on one host; on many, while the lease holds."""
        return self.send_until is None or now < self.send_until

    def claimed_entries(self) -> list[tuple[int, bytes]]:
        """Every payment held past its claim: (entry, correlationId). A lease taken over checks them all."""
        unclaimed = set(self._unclaimed)
        ids = self._entries["correlation_id"]
        return [(int(index), ids[index].tobytes()) for index in np.flatnonzero(self._entries["state"] != FREE)
                if int(index) not in unclaimed]

    def fenced(self, checked: list[tuple[int, bytes]], others: set[bytes]) -> int:
        """Of the payments :meth:`claimed_entries` gave, those in ``others`` were taken over by another
        host while this host's lease had lapsed: dropped here, never sent from here again (an answer
        still out for one is ignored). Returns how many."""
        dropped = set()
        for index, correlation_id in checked:
            entry = self._entries[index]
            if correlation_id in others and entry["state"] != FREE and entry["correlation_id"].tobytes() == correlation_id:
                self._release(index, Event.FENCED, forget=True)
                dropped.add(index)
        if dropped:
            self._ready = collections.deque(index for index in self._ready if index not in dropped)
            self._unclaimed = [index for index in self._unclaimed if index not in dropped]
        return len(dropped)

    def adopt(self, payments: list[tuple[bytes, int, int]], delay_ms: int) -> list[bytes]:
        """Payments taken over from a lost host: (correlationId, cents, when its lease lapsed).

        The lost host may have sent each to either processor before its lease
        lapsed, so each becomes a lookup on default and then on fallback, as
        if sent at that moment with ``delay_ms`` announced (the largest delay
        known): it goes out again only once both have proven it absent.
        Returns the ids held here now; the others wait (the outbox is full).
        """
        held = []
        unclaimed = set(self._unclaimed)
        converted = set()
        for correlation_id, amount_cents, lapsed_at in payments:
            ref = self._dedup.find(correlation_id)
            if ref is None:
                if not self._free:
                    break
                index = self._free[-1]
                self._dedup.insert(correlation_id, self._dedup.outbox_ref(index))
                self._free.pop()
                entry = self._entries[index]
                entry["correlation_id"] = correlation_id
                entry["amount_cents"] = amount_cents
                entry["accepted_at"] = lapsed_at
                entry["purged"] = 0
                self._in_use["in_use"] += 1
            else:
                index = ref - self._dedup.ledger_capacity
                if index < 0 or index not in unclaimed:
                    held.append(correlation_id)  # confirmed here, or held as this host's claim already
                    continue
                # Accepted here too, waiting for its claim: the claim is this host's now, but the
                # lost host may have sent it, so it is looked up like the rest.
                entry = self._entries[index]
                converted.add(index)
            entry["processor"] = DEFAULT
            entry["requested_at"] = 0
            entry["sent_at"] = lapsed_at
            entry["announced_ms"] = min(delay_ms, 2**31 - 1)
            entry["attempts"] = 0
            entry["look_up_other"] = 1
            self._move(index, Event.ADOPTED)  # last: the entry is complete
            self._schedule(index, self._provable_at(index))
            held.append(correlation_id)
        if converted:
            self._unclaimed = [index for index in self._unclaimed if index not in converted]
        return held

    def largest_delay_ms(self) -> int:
        """The largest delay either processor has shown or announced as far as this host remembers."""
        return max(max(delays.largest_since(row, 0), int(row["min_response_ms"])) for row in self._health)

    def withheld(self, send: Send, now: int) -> None:
        """The shell did not carry a :class:`Send` out (the lease lapsed in between): queued again."""
        self._in_flight[send.processor] -= 1
        self._out[send.processor].pop((send.entry, send.generation), None)
        if send.generation == self._generation[send.entry]:
            self._move(send.entry, Event.WITHHELD)
            self._schedule(send.entry, now)

    def cluster_purges(self) -> list[tuple[int, int, int, list[bytes]]]:
        """Purges carried out here whose cluster part is pending (claiming only): (slot, ticket, the
        ledger index the purge kept from, every id this host still holds: its claims must stay)."""
        if not self._cluster_purges:
            return []
        held = [self._entries[int(i)]["correlation_id"].tobytes() for i in np.flatnonzero(self._entries["state"] != FREE)]
        ids = self._ledger_ids
        for part in self._ledger.retained():
            held.extend(raw.tobytes() for raw in ids[part])
        below = self.purges.ledger_below
        return [(slot, self.purges.claimed(slot), below, held) for slot in sorted(self._cluster_purges)]

    def apply_cluster_purge(self, moment: int, now: int) -> tuple[int, int, list[bytes]]:
        """Many hosts: a purge asked on another host, committed at ``moment``, is applied to this host's
        regions (bruto.shm.purge ``drop_before``). Returns, for the cluster's record (bruto.cluster.link),
        the ledger indexes [first, count) kept (confirmed after ``moment``) and every id this host still
        holds, in its outbox or among those records: its claims must stay."""
        self._move_all(self.purges.drop_before(moment, self._ledger, self._rejected, self._entries), Event.PURGED)
        self._reindex(now, crashed=False)
        log.info("applied a purge asked on another host")
        held = [self._entries[int(i)]["correlation_id"].tobytes() for i in np.flatnonzero(self._entries["state"] != FREE)]
        for part in self._ledger.retained():
            held.extend(raw.tobytes() for raw in self._ledger_ids[part])
        first, count = self._ledger.counted()
        return first, count, held

    @property
    def cluster_purge_pending(self) -> bool:
        return bool(self._cluster_purges)

    def cluster_purged(self, slot: int, ticket: int) -> None:
        """The cluster's part of the purge of ``slot`` is done: now the purge is."""
        if slot in self._cluster_purges and self.purges.claimed(slot) == ticket:
            self._cluster_purges.discard(slot)
            self._purge_done(slot)

    def poll(self, now: int) -> list[Action]:
        """Time passed: what is due now (sends, lookups)."""
        actions: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, index, generation = heapq.heappop(timers)
            if generation != self._generation[index]:
                continue  # superseded
            state = int(self._entries[index]["state"])
            if state == QUEUED:
                self._ready.appendleft(index)  # retries go first: they are the oldest
            elif state == UNRESOLVED:
                actions.append(self._lookup(index, now))
        if self._ready:
            self._send_ready(now, actions)
        if now - self._latency_published_at >= LATENCY_PUBLISH_US:
            self._publish_latency(now)
        return actions

    def attempt_done(self, send: Send, outcome: Outcome, now: int, elapsed_us: int) -> None:
        """The answer to a :class:`Send` (or UNKNOWN if it ended any other way)."""
        processor = send.processor
        self._in_flight[processor] -= 1
        sent_at = self._out[processor].pop((send.entry, send.generation), 0)
        if outcome is not Outcome.UNKNOWN:
            self._recent[processor].append((now, elapsed_us // 1000))
            self._answered_sent_at[processor] = max(self._answered_sent_at[processor], sent_at)
        self._metrics.answered(processor, outcome, elapsed_us)
        self._record_delay(processor, now, elapsed_us // 1000)  # how long this processor takes now
        if send.generation != self._generation[send.entry]:
            return
        index = send.entry
        entry = self._entries[index]
        if outcome is Outcome.STORED:
            self._succeeded(processor, now)
            self._latencies[processor].append(elapsed_us // 1000)
            self._confirm(index, Event.STORED, processor, send.requested_at, send.amount_cents, now)
        elif outcome is Outcome.FAILED:
            self._dispatch["failed"] += 1
            self._set_breaker(processor, breaker.failed, now)
            if entry["purged"]:
                self._release(index, Event.FAILED_PURGED, forget=True)  # stored nowhere, and purged since: gone
            else:
                self._move(index, Event.FAILED)  # nothing was stored: free to go anywhere
                self._schedule(index, now + RETRY_BACKOFF_US)
        elif outcome is Outcome.DUPLICATE:
            self._succeeded(processor, now)  # it answered, and it has the payment
            self._move(index, Event.DUPLICATE)
            self._schedule(index, now)  # a lookup tells what it stored
        elif outcome is Outcome.REJECTED:
            self._dispatch["rejected"] += 1
            log.error("%s rejected payment %s outright; dropping it",
                      PROCESSOR_NAMES[processor], send.correlation_id.hex())
            # Kept where GET /payments/{id} finds it, before the index forgets the id.
            self._rejected.append(send.correlation_id, send.amount_cents, send.requested_at, processor, now)
            self._release(index, Event.REJECTED, forget=True)
        else:
            self._dispatch["unknown"] += 1
            self._set_breaker(processor, breaker.failed, now)
            self._move(index, Event.TIMED_OUT)
            self._schedule(index, self._provable_at(index))

    def lookup_done(self, lookup: Lookup, found: Stored | Outcome | None, now: int) -> None:
        """The answer to a :class:`Lookup`: Stored, None (404), or Outcome.UNKNOWN."""
        index = lookup.entry
        self._metrics.looked_up(lookup.processor, found)
        if lookup.generation != self._generation[index]:
            return
        entry = self._entries[index]
        if isinstance(found, Stored):
            self._confirm(index, Event.FOUND, lookup.processor, found.requested_at, found.amount_cents, now)
        elif found is None and self._absence_proven(index, lookup.asked_at):
            if entry["look_up_other"]:
                # Taken over: the other processor may have it. The processor first, then the
                # flag: a crash between looks the other up once more, never neither.
                self._move(index, Event.ABSENT_LOOK_UP_OTHER)
                entry["processor"] = 1 - lookup.processor
                entry["look_up_other"] = 0
                self._schedule(index, max(now, self._provable_at(index)))
            elif entry["purged"]:
                self._release(index, Event.ABSENT_PURGED, forget=True)  # stored by no one, and purged since: gone
            else:
                self._move(index, Event.ABSENT)  # stored by no one: free to go anywhere, with a new requestedAt
                self._bump(index)
                self._ready.appendleft(index)
        else:
            self._move(index, Event.UNSETTLED)
            backoff = min(LOOKUP_BACKOFF_MAX_US, LOOKUP_BACKOFF_US << min(int(entry["attempts"]), 7))
            due = now + backoff
            if found is None:
                due = max(due, self._provable_at(index))
            self._schedule(index, due)

    def health_reported(self, processor: int, report: Health, asked_at: int, now: int) -> None:
        """A service-health answer to a call made at ``asked_at``."""
        row = self._health[processor]
        if report.min_response_ms != self._announced_ms[processor]:
            self._recent[processor].clear()  # its delay changed: answers from before say nothing now
        if asked_at >= self._closed_at[processor]:
            self._closed_at[processor] = 0  # asked since it closed: the announcement holds again
        self._record_delay(processor, now, report.min_response_ms)  # the evidence before the claim it backs
        row["min_response_ms"] = self._announced_ms[processor] = report.min_response_ms
        row["failing"] = int(report.failing)
        row["polled_at"] = asked_at
        self._set_breaker(processor, breaker.reported, report.failing, now, report.min_response_ms)

    def pending_purges(self, now: int) -> list[int]:
        """Slots whose purge ticket waits to be carried out (and may still be)."""
        return self.purges.pending(now)

    def purge(self, slot: int, now: int) -> bool:
        """Carry out the purge asked through ``slot``; False if it was cancelled or expired.

        The caller holds the purge lock: the gateway cancels a ticket it gave
        up on under the same lock, so a ticket is either cancelled or
        committed here, never both (bruto.shm.purge has the protocol).
        """
        if not self.purges.commit(slot, now):
            return False
        self._finish_purge(slot)
        self._reindex(now, crashed=False)
        log.info("purged (asked through intake slot %d)", slot)
        return True

    # -- questions (the shell's and the tests') ---------------------------------

    def wake_at(self, now: int) -> int | None:
        """When :meth:`poll` will have something to do without another event; None: never."""
        due = self._timers[0][0] if self._timers else None
        if self._ready and self.may_send(now):
            changes = [routing.next_change(_pair(self._breakers), now, self.policy, _pair(self._slow_since)),
                       *(self._latency_changes_at(processor, now) for processor in (DEFAULT, FALLBACK))]
            due = min((at for at in (due, *changes) if at is not None), default=None)
        return due

    @property
    def stored(self) -> int:
        """Payments confirmed stored (by a 200 or a lookup) since the regions were created."""
        return int(self._dispatch["stored"])

    @property
    def in_flight(self) -> tuple[int, int]:
        """Sends out, per processor (default, fallback)."""
        return _pair(self._in_flight)

    def waiting(self) -> set[int]:
        """Entries with something scheduled: in the ready queue, or a live timer."""
        live = {index for _, index, generation in self._timers if generation == self._generation[index]}
        return live | set(self._ready) | set(self._unclaimed)

    def generation(self, entry: int) -> int:
        return self._generation[entry]

    # -- transitions -----------------------------------------------------------

    def latency_ms(self, processor: int, now: int) -> int:
        """What an answer from ``processor`` takes now, as far as is known.

        The largest of: the delay it announces (unless that is older than its
        recovery), the median of its recent answers, and how long it has kept a
        payment waiting (a processor that became slow says so by not
        answering, long before its answers come).
        """
        return self._latency_and_lateness(processor, now)[0]

    def is_late(self, processor: int, now: int) -> bool:
        """routing.late: it keeps a payment waiting longer than its recent answers took."""
        return self._latency_and_lateness(processor, now)[1]

    def _latency_and_lateness(self, processor: int, now: int) -> tuple[int, bool]:
        """latency_ms and is_late together: each send decision needs both, from one look at the answers."""
        answering, waiting = self._answering_ms(processor, now), self._waiting_ms(processor, now)
        announced = 0 if self._closed_at[processor] else self._announced_ms[processor]
        return max(announced, answering, waiting), routing.late(answering, waiting)

    def _answering_ms(self, processor: int, now: int) -> int:
        """The median of the processor's answers of the last seconds; 0 if none."""
        recent = sorted(ms for at, ms in self._recent[processor] if now - at <= RECENT_US)
        return recent[len(recent) // 2] if recent else 0

    def _waiting_ms(self, processor: int, now: int) -> int:
        """How long the processor has kept us waiting: the age of its oldest payment out that was
        sent after the latest one it answered (a straggler, overtaken by later answers, is not a
        slow processor; a processor whose delay jumped answers nothing sent since)."""
        waiting_since = self._waiting_since(processor)
        return (now - waiting_since) // 1000 if waiting_since else 0

    def _waiting_since(self, processor: int) -> int:
        answered = self._answered_sent_at[processor]
        # Payments out are in the order they were sent: only the stragglers are skipped.
        return next((sent_at for sent_at in self._out[processor].values() if sent_at > answered), 0)

    def _latency_changes_at(self, processor: int, now: int) -> int | None:
        """When waiting makes the processor late, or slow, with no event meanwhile."""
        waiting_since = self._waiting_since(processor)
        if not waiting_since:
            return None
        late_ms = self._answering_ms(processor, now) * 3 // 2 + routing.LATE_MARGIN_MS
        moments = [waiting_since + (limit_ms + 1) * 1000 for limit_ms in (late_ms, self.policy.latency_limit_ms)]
        later = [at for at in moments if at > now]
        return min(later) if later else None

    def _send_ready(self, now: int, actions: list[Action]) -> None:
        announced = self._announced_ms
        default, fallback = self._latency_and_lateness(DEFAULT, now), self._latency_and_lateness(FALLBACK, now)
        latencies, is_late = (default[0], fallback[0]), (default[1], fallback[1])
        for processor, latency in enumerate(latencies):
            if latency <= self.policy.latency_limit_ms:
                self._slow_since[processor] = 0
            elif not self._slow_since[processor]:
                self._slow_since[processor] = now
        slow_since = _pair(self._slow_since)
        if not self.may_send(now):
            return  # many hosts: this host's lease is not renewed (bruto.cluster.link)
        while self._ready:
            choice = routing.choose(_pair(self._breakers), latencies, _pair(self._in_flight), now, self.policy,
                                    slow_since, is_late)
            if choice is None:
                return
            processor = choice.processor
            if choice.probe:
                self._set_breaker(processor, breaker.probing, now)
            index = self._ready.popleft()
            entry = self._entries[index]
            requested_at = now // 1000 * 1000  # whole milliseconds: what we send is what we keep
            entry["processor"] = processor
            entry["requested_at"] = requested_at
            entry["sent_at"] = now
            entry["announced_ms"] = min(announced[processor], 2**31 - 1)
            self._metrics.attempt(processor, int(entry["attempts"]))
            entry["attempts"] = min(int(entry["attempts"]) + 1, _MAX_ATTEMPTS)
            self._move(index, Event.ROUTED)  # written before the request leaves
            self._in_flight[processor] += 1
            self._dispatch["attempts"] += 1
            generation = self._bump(index)
            self._out[processor][(index, generation)] = now
            actions.append(Send(index, generation, processor, entry["correlation_id"].tobytes(),
                                int(entry["amount_cents"]), requested_at,
                                routing.timeout_s(latencies[processor])))

    def _lookup(self, index: int, now: int) -> Lookup:
        entry = self._entries[index]
        self._move(index, Event.LOOKUP_DUE)
        entry["attempts"] = min(int(entry["attempts"]) + 1, _MAX_ATTEMPTS)
        self._dispatch["lookups"] += 1
        return Lookup(index, self._bump(index), int(entry["processor"]), entry["correlation_id"].tobytes(), now)

    def _confirm(self, index: int, event: Event, processor: int, requested_at: int, amount_cents: int, now: int) -> None:
        entry = self._entries[index]
        correlation_id = entry["correlation_id"].tobytes()
        slot = self._ledger.next_slot()
        evicted = self._ledger.append(correlation_id, requested_at, amount_cents, processor, now)
        if evicted is not None:
            # The index covers what the ledger still holds, so it stays bounded.
            self._dedup.remove(evicted, self._dedup.ledger_ref(slot))
        self._dedup.move(correlation_id, self._dedup.outbox_ref(index), self._dedup.ledger_ref(slot))
        self._dispatch["stored"] += 1
        self._metrics.confirmed(processor, amount_cents, now - int(entry["accepted_at"]))
        self._release(index, event, forget=False)  # after the ledger: a crash between finds the id there

    def _release(self, index: int, event: Event, forget: bool) -> None:
        entry = self._entries[index]
        if forget:
            self._dedup.remove(entry["correlation_id"].tobytes(), self._dedup.outbox_ref(index))
        self._move(index, event)
        self._bump(index)
        self._free.append(index)
        self._in_use["in_use"] -= 1

    def _move(self, index: int, event: Event) -> None:
        """Every change of an entry's state goes through here, checked against the transition table."""
        states = self._states
        states[index] = transitions.after(states[index], event)

    def _move_all(self, which: NDArray[np.bool_], event: Event) -> None:
        """_move for the entries ``which`` selects, at once (purges and recovery)."""
        states = self._entries["state"]
        chosen = np.flatnonzero(which)
        before = states[chosen]
        moved = before.copy()
        for state in np.unique(before):
            moved[before == state] = transitions.after(int(state), event)
        states[chosen] = moved

    def _schedule(self, index: int, due: int) -> None:
        heapq.heappush(self._timers, (due, index, self._bump(index)))

    def _bump(self, index: int) -> int:
        """A new generation for the entry: whatever was pending for it before is void."""
        self._generation[index] += 1
        return self._generation[index]

    def _succeeded(self, processor: int, now: int) -> None:
        """A payment went through. After an outage, what was learnt during it is stale: its slow
        answers and announced delay stop counting, and the other processor, if down, is probed
        at once (the processors' conditions often change together)."""
        if self._breakers[processor].state != breaker.CLOSED:
            self._recent[processor].clear()
            self._closed_at[processor] = now
            self._set_breaker(1 - processor, breaker.reprobe, now)
        self._set_breaker(processor, breaker.succeeded)

    def _set_breaker(self, processor: int, transition: Callable[..., breaker.Breaker], *args: int) -> None:
        before = self._breakers[processor]
        after = transition(before, *args)
        if after != before:
            self._breakers[processor] = after
            breaker.write(self._health[processor], after)

    def _record_delay(self, processor: int, now: int, delay_ms: int) -> None:
        second, largest = self._delay_seen[processor]
        if now // delays.SECOND_US != second or delay_ms > largest:
            self._delay_seen[processor] = delays.record(self._health[processor], now, delay_ms)

    def _publish_latency(self, now: int) -> None:
        """Publish each processor's recent p90 latency to the health table."""
        self._latency_published_at = now
        for processor, samples in enumerate(self._latencies):
            if samples:
                ordered = sorted(samples)
                p90 = ordered[min(len(ordered) - 1, len(ordered) * 9 // 10)]
                self._health[processor]["latency_p90_ms"] = self._p90_ms[processor] = p90

    # -- exactly once: when a 404 proves a payment absent -------------------------

    def _delay_bound_ms(self, index: int) -> int:
        entry = self._entries[index]
        row = self._health[int(entry["processor"])]
        return max(int(entry["announced_ms"]), delays.largest_since(row, int(entry["sent_at"])))

    def _absence_proven(self, index: int, asked_at: int) -> bool:
        """Whether a 404 to a lookup asked at ``asked_at`` proves the processor never stores it."""
        entry = self._entries[index]
        sent_at = int(entry["sent_at"])
        row = self._health[int(entry["processor"])]
        if int(row["polled_at"]) <= sent_at:
            return False  # the delay in force at the attempt may not be announced yet
        return asked_at >= sent_at + self._delay_bound_ms(index) * 1000 + LOOKUP_MARGIN_US

    def _provable_at(self, index: int) -> int:
        """The earliest moment a lookup's 404 can prove absence, as far as is known now."""
        entry = self._entries[index]
        sent_at = int(entry["sent_at"])
        row = self._health[int(entry["processor"])]
        due = sent_at + self._delay_bound_ms(index) * 1000 + LOOKUP_MARGIN_US
        if int(row["polled_at"]) <= sent_at:
            due = max(due, int(row["next_poll_at"]) + HEALTH_ANSWER_US)
        return due

    # -- purges ----------------------------------------------------------------

    def _finish_purge(self, slot: int) -> None:
        """Carry out the claimed purge of ``slot`` (again, after a crash: every step is idempotent)."""
        self._move_all(self.purges.drop(self._ledger, self._rejected, self._entries), Event.PURGED)
        if self.claiming:
            # Many hosts: done once the cluster's record is purged too (the
            # shell carries that out, then calls cluster_purged).
            self._cluster_purges.add(slot)
            return
        self._purge_done(slot)

    def _purge_done(self, slot: int) -> None:
        if self.purges.finish(slot):  # counted once, even when a crash made recovery finish it again
            self._dispatch["purges"] += 1
            self._metrics.purged()

    def _reindex(self, now: int, crashed: bool) -> None:
        """Rebuild what lives in process memory from the regions."""
        entries = self._entries
        states = entries["state"]
        if crashed:
            sent = states == SENT
            for processor in entries["processor"][sent]:
                self._metrics.answered_nothing(int(processor))
            self._move_all(sent, Event.CRASHED)  # its answer is lost: the outcome is unknown
        held = np.flatnonzero(states != FREE)
        for index in self._dedup.rebuild(self._ledger.retained(), held):
            self._move(int(index), Event.CONFIRMED_BEFORE_CRASH)  # its id is in the ledger: confirmed before a crash
        self._free = [int(i) for i in np.flatnonzero(states == FREE)[::-1]]
        self._in_use["in_use"] = len(entries) - len(self._free)
        found = np.flatnonzero(states == QUEUED)
        queued = [int(i) for i in found[np.argsort(entries["accepted_at"][found], kind="stable")]]
        # Claiming: which of them were claimed is the database's to say (a
        # claim is idempotent for the host that made it), so all go through it again.
        self._ready = collections.deque([] if self.claiming else queued)
        self._unclaimed = queued if self.claiming else []
        self._timers = []
        for index in np.flatnonzero(states == UNRESOLVED):
            self._schedule(int(index), self._provable_at(int(index)))
