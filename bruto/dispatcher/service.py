"""The dispatcher: drains intake, sends payments to processors, records confirmations.

One dispatcher runs per shared directory (it holds ``dispatcher.lock``; a
second one waits and takes over when the first dies). It is the only writer of
the outbox, the ledger, the dispatch cursors and the health table.

A payment's life:

    intake slab ──drain──► outbox QUEUED ──send──► SENT ──200──► ledger, outbox FREE
                                 ▲                   │
                                 └──500/429 (surely──┤
                                    not stored)      ├──422──────► lookup ─► ledger
                                                     └──timeout──► lookup after the
                                                       (unknown)   delay bound: found ─► ledger,
                                                                   404 ─► QUEUED

Exactly once: a payment's outcome is resolved on the processor it was sent to
before it may go anywhere else. The ``requestedAt`` sent is fixed for the
attempt and kept in the outbox; it is what the ledger records, or what the
processor reports on a lookup. A new attempt after a definitive failure takes
a fresh ``requestedAt`` (nothing was stored, so nothing can disagree), which
keeps the sending moment and the stored moment together: a payment becomes
visible to the consistency window (which ends 1.5 s before "now") only after
we have recorded it.

Crash safety: every state change is written to shared memory before the next
step. Order of writes: outbox entry, then intake cursor (a crash between them
re-drains a record the dedup set then drops); ledger append, then outbox FREE
(a crash between them leaves an entry whose id recovery finds in the ledger).
"""

import collections
import fcntl
import heapq
import logging
import os
import signal
import sys

import gevent

from bruto.config import Settings
from bruto.config import settings_or_exit
from bruto.dispatcher import breaker
from bruto.dispatcher import routing
from bruto.dispatcher.health import HealthPoller
from bruto.dispatcher.metrics import DispatcherMetrics
from bruto.dispatcher.processor import Outcome
from bruto.dispatcher.processor import ProcessorClient
from bruto.dispatcher.processor import Stored
from bruto.dispatcher.processor import make_session
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import FREE
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_health
from bruto.shm.layout import open_intake
from bruto.shm.layout import open_ledger
from bruto.shm.layout import open_metrics
from bruto.shm.layout import open_outbox
from bruto.shm.ledger import LedgerWriter
from bruto.timefmt import now_us

log = logging.getLogger("bruto.dispatcher")

# Idle sleep of the main loop. Intake is polled, so this bounds how long a
# payment waits before it is picked up when the dispatcher has nothing to do.
# 20 ms rather than 1 or 5 ms: that pickup delay changes nothing a client
# sees (the 202 is already out; requestedAt is taken when the payment is
# sent), while each wake-up costs CPU on the cores the API bursts need, and
# fewer wake-ups carry more payments each: the dispatcher's CPU per test fell
# 10.5-12.2 s (1 ms) -> 8.7-11.1 s (5 ms) -> 6.5-8.8 s (20 ms) (docs/BENCHMARKS.md).
IDLE_SLEEP_S = 0.020
# Backoff after a 500 while the breaker stays closed (a stray failure).
RETRY_BACKOFF_US = 50_000
# After an unknown outcome, wait this much beyond the attempt's timeout and the
# processor's delay before asking whether it stored the payment: a request can
# still be waiting inside the processor until its delay has passed.
LOOKUP_MARGIN_US = 1_000_000
LATENCY_SAMPLES = 128


class Dispatcher:
    def __init__(self, settings: Settings, policy: routing.Policy | None = None):
        self.settings = settings
        self.policy = policy or routing.Policy(
            patience_us=int(settings.default_patience_s * 1_000_000), max_in_flight=settings.senders)
        self.slabs = [open_intake(settings, slot) for slot in range(settings.intake_slots)]
        self.dispatch = open_dispatch(settings)
        self.cursors = self.dispatch.records
        self.stats = self.dispatch.counters
        self.outbox = open_outbox(settings)
        self.entries = self.outbox.records
        self.ledger = LedgerWriter(open_ledger(settings))
        self.health = open_health(settings).records
        session = make_session(settings.senders + 8)
        self.clients = (ProcessorClient(settings.default_url, session),
                        ProcessorClient(settings.fallback_url, session))
        self.metrics = DispatcherMetrics(open_metrics(settings))
        self.poller = HealthPoller(self.clients, self.health, self.metrics)
        self.in_flight = [0, 0]
        self.latencies = (collections.deque(maxlen=LATENCY_SAMPLES), collections.deque(maxlen=LATENCY_SAMPLES))
        self.ready: collections.deque[int] = collections.deque()
        self.later: list[tuple[int, int, int]] = []  # heap of (due, entry, generation)
        self.generation = [0] * self.outbox.capacity  # bumped when an entry is freed
        self.seen: set[bytes] = set()
        self.free: list[int] = []

    # -- start-up --------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild in-process state from shared memory (after a start or a crash)."""
        self.seen = self.ledger.correlation_ids()
        confirmed = len(self.seen)
        now = now_us()
        for index in range(self.outbox.capacity - 1, -1, -1):
            entry = self.entries[index]
            state = int(entry["state"])
            if state == FREE:
                self.free.append(index)
                continue
            correlation_id = entry["correlation_id"].tobytes()
            if correlation_id in self.seen:
                self._release(index)  # confirmed just before a crash
            elif state == QUEUED:
                self.seen.add(correlation_id)
                self.ready.append(index)
            else:  # SENT: its outcome is unknown; the sending moment is requested_at
                self.seen.add(correlation_id)
                self._schedule(self._lookup_due(entry, int(entry["requested_at"])), index)
        self.outbox.counters["in_use"] = self.outbox.capacity - len(self.free)
        self.stats["dispatcher_pid"] = os.getpid()
        self.stats["started_at"] = now
        log.info("recovered: %d payments in the outbox, %d in the ledger",
                 self.outbox.capacity - len(self.free), confirmed)

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        gevent.spawn(self.poller.run)
        while True:
            busy = self.step()
            gevent.sleep(0 if busy else IDLE_SLEEP_S)

    def step(self) -> bool:
        """One pass: purges, new payments, due retries, sends. True if it moved anything."""
        self._purge_if_asked()
        moved = self._drain_intake()
        now = now_us()
        while self.later and self.later[0][0] <= now:
            _, index, generation = heapq.heappop(self.later)
            if generation == self.generation[index]:
                self._resume(index)
        return self._send_ready(now) or moved

    def _drain_intake(self) -> bool:
        moved = False
        for slot, slab in enumerate(self.slabs):
            cursor = self.cursors[slot]
            drained = int(cursor["drained"])
            written = int(slab.counters["written"])  # load the publication counter first
            capacity = slab.capacity
            while drained < written and self.free:
                record = slab.records[drained % capacity]
                correlation_id = record["correlation_id"].tobytes()
                if correlation_id in self.seen:
                    self.stats["duplicates_dropped"] += 1
                    self.metrics.duplicate_dropped()
                else:
                    self.seen.add(correlation_id)
                    index = self.free.pop()
                    entry = self.entries[index]
                    entry["correlation_id"] = correlation_id
                    entry["amount_cents"] = record["amount_cents"]
                    entry["accepted_at"] = record["accepted_at"]
                    entry["requested_at"] = 0
                    entry["attempts"] = 0
                    entry["state"] = QUEUED
                    self.outbox.counters["in_use"] += 1
                    self.ready.append(index)
                drained += 1
                cursor["drained"] = drained
                moved = True
        return moved

    def _send_ready(self, now: int) -> bool:
        sent = False
        while self.ready:
            processor = routing.choose(self.health, tuple(self.in_flight), now, self.policy)
            if processor is None:
                break
            index = self.ready.popleft()
            entry = self.entries[index]
            entry["processor"] = processor
            entry["requested_at"] = now // 1000 * 1000  # whole milliseconds: what we send is what we keep
            entry["state"] = SENT
            self.in_flight[processor] += 1
            gevent.spawn(self._attempt, index)
            sent = True
        return sent

    # -- one attempt -------------------------------------------------------------

    def _attempt(self, index: int) -> None:
        entry = self.entries[index]
        processor = int(entry["processor"])
        correlation_id = entry["correlation_id"].tobytes()
        requested_at = int(entry["requested_at"])
        row = self.health[processor]
        self.stats["attempts"] += 1
        self.metrics.attempt(processor, int(entry["attempts"]))
        entry["attempts"] += 1
        started = now_us()
        try:
            outcome = self.clients[processor].pay(
                correlation_id, int(entry["amount_cents"]), requested_at, routing.timeout_s(row))
        finally:
            self.in_flight[processor] -= 1
        now = now_us()
        self.metrics.answered(processor, outcome, now - started)
        if outcome is Outcome.STORED:
            self.latencies[processor].append((now - started) // 1000)
            breaker.record_success(row)
            self._confirm(index, requested_at, int(entry["amount_cents"]), processor)
        elif outcome is Outcome.FAILED:
            self.stats["failed"] += 1
            breaker.record_failure(row, now)
            entry["state"] = QUEUED
            self._schedule(now + RETRY_BACKOFF_US, index)
        elif outcome is Outcome.DUPLICATE:
            breaker.record_success(row)  # it answered, and it has the payment
            self._schedule(now, index)   # a lookup tells what it stored
        elif outcome is Outcome.REJECTED:
            self.stats["rejected"] += 1
            log.error("%s rejected payment %s outright; dropping it",
                      PROCESSOR_NAMES[processor], correlation_id.hex())
            self._release(index)
        else:
            self.stats["unknown"] += 1
            breaker.record_failure(row, now)
            self._schedule(self._lookup_due(entry, started), index)

    def _resume(self, index: int) -> None:
        entry = self.entries[index]
        if int(entry["state"]) == QUEUED:
            self.ready.appendleft(index)  # retries go first: they are the oldest
        elif int(entry["state"]) == SENT:
            gevent.spawn(self._lookup, index, self.generation[index])

    def _lookup(self, index: int, generation: int) -> None:
        """Resolve an attempt whose outcome is unknown, on the processor it went to."""
        entry = self.entries[index]
        processor = int(entry["processor"])
        self.stats["lookups"] += 1
        found = self.clients[processor].lookup(entry["correlation_id"].tobytes())
        self.metrics.looked_up(processor, found)
        if generation != self.generation[index]:
            return
        if isinstance(found, Stored):
            self._confirm(index, found.requested_at, found.amount_cents, processor)
        elif found is None:
            entry["state"] = QUEUED  # surely not stored: free to go anywhere, with a new requestedAt
            self.ready.appendleft(index)
        else:
            self._schedule(now_us() + LOOKUP_MARGIN_US, index)

    def _lookup_due(self, entry, sent_at: int) -> int:
        row = self.health[int(entry["processor"])]
        return (sent_at + int(routing.timeout_s(row) * 1_000_000)
                + int(row["min_response_ms"]) * 1000 + LOOKUP_MARGIN_US)

    def _confirm(self, index: int, requested_at: int, amount_cents: int, processor: int) -> None:
        evicted = self.ledger.append(self.entries[index]["correlation_id"].tobytes(),
                                     requested_at, amount_cents, processor)
        if evicted is not None:
            # The dedup memory covers what the ledger still holds, so it stays
            # bounded by the ledger's capacity.
            self.seen.discard(evicted)
        self.stats["stored"] += 1
        self.metrics.confirmed(processor, amount_cents, now_us() - int(self.entries[index]["accepted_at"]))
        self._release(index)

    def _release(self, index: int) -> None:
        self.entries[index]["state"] = FREE
        self.generation[index] += 1
        self.free.append(index)
        self.outbox.counters["in_use"] -= 1

    def _schedule(self, due: int, index: int) -> None:
        heapq.heappush(self.later, (due, index, self.generation[index]))

    # -- purge -----------------------------------------------------------------

    def _purge_if_asked(self) -> None:
        asked = [slot for slot, slab in enumerate(self.slabs)
                 if int(slab.counters["purge_requests"]) > int(self.cursors[slot]["purges_done"])]
        if not asked:
            return
        tickets = {slot: int(self.slabs[slot].counters["purge_requests"]) for slot in asked}
        # Payments not yet sent are dropped; attempts already out stay: if a
        # processor stores one, the ledger must say so, purge or not.
        for slot, slab in enumerate(self.slabs):
            self.cursors[slot]["drained"] = int(slab.counters["written"])
        for index in list(self.ready):
            self._release(index)
        self.ready.clear()
        for _, index, generation in self.later:
            if generation == self.generation[index] and int(self.entries[index]["state"]) == QUEUED:
                self._release(index)
        self.ledger.purge()
        self.seen = {self.entries[i]["correlation_id"].tobytes()
                     for i in range(self.outbox.capacity) if int(self.entries[i]["state"]) != FREE}
        self.stats["purges"] += 1
        self.metrics.purged()
        for slot, ticket in tickets.items():
            self.cursors[slot]["purges_done"] = ticket
        log.info("purged (asked through intake slots %s)", asked)

    def update_latency(self) -> None:
        """Publish each processor's recent p90 latency to the health table."""
        for processor in (DEFAULT, FALLBACK):
            samples = sorted(self.latencies[processor])
            if samples:
                self.health[processor]["latency_p90_ms"] = samples[min(len(samples) - 1, len(samples) * 9 // 10)]


def _hold_lock(settings: Settings) -> int:
    """Become the one dispatcher of this shared directory, waiting for the current one to die."""
    path = os.path.join(settings.shm_dir, "dispatcher.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another dispatcher holds %s; standing by", path)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                gevent.sleep(0.2)
    return fd


def main() -> None:
    settings = settings_or_exit("bruto-dispatcher")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    create_all(settings)
    _hold_lock(settings)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dispatcher = Dispatcher(settings)
    dispatcher.recover()
    log.info("dispatching to default %s and fallback %s", settings.default_url, settings.fallback_url)
    gevent.spawn(_every, 0.5, dispatcher.update_latency)
    dispatcher.run()


def _every(seconds: float, action) -> None:
    while True:
        gevent.sleep(seconds)
        action()
