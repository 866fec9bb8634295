"""The outbox against a model of two processors, with purges and crashes (issue 11).

A hypothesis state machine plays the world around the dispatcher's core: the
gateways (payments accepted into intake, purges asked and given up on), two
processors that store, fail (500), rate-limit (429), hold each request for
the delay in force when it arrived, answer 422 for a payment they already
have (and, on demand, for no reason), time out or drop the connection having
stored or not, and change their delays and failures; the health poller; and
crashes of the dispatcher between any two steps (a new Outbox recovers from
the same regions), or pauses of it (a stopped process, or one starved of CPU).

Time is simulated: an event loop delivers each answer at the moment it
happens. After every step:

- no payment is stored by both processors;
- every payment accepted since the last purge is in intake, the outbox or the ledger;
- the ledger holds exactly what the processors stored, with the same
  requestedAt and amount, except what an attempt still out may have stored;
- every entry of the outbox has something scheduled (a timer, the ready
  queue, or a request out).

At the end of every example the processors recover and time runs on: then
every payment accepted since the last purge is stored by exactly one
processor, and the ledger equals the processors, row for row.

The model follows the processors' contract (CONTRACT.md §2), plus one
assumption, the one the dispatcher's rule for unknown outcomes rests on
(docs/DISPATCHER.md): a processor's delay is not changed again before a
service-health call has seen it (the official timeline changes it every 10 s;
the dispatcher polls every 5.1 s).
"""

from __future__ import annotations

import dataclasses
import os
import uuid

import numpy as np
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Lookup
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import FREE
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import DispatcherRegions
from bruto.shm.lookup import Payment
from bruto.shm.lookup import PaymentFinder

S = 1_000_000
MS = 1_000
SLOTS = 2
POLICY = routing.Policy(patience_us=10 * S, max_in_flight=8)
PURGE_TIMEOUT_US = 5 * S
DELAYS_MS = [0, 0, 20, 100, 1000, 2000, 5000, 9000, 20000]
# Events at one instant beyond which the dispatcher is spinning (hole 5).
MAX_EVENTS_PER_INSTANT = 2_000


@dataclasses.dataclass
class Request:
    """A payment request inside a processor."""

    send: Send
    incarnation: int   # of the dispatcher that sent it
    sent_at: int
    done_at: int       # when the processor finishes it
    answer: Outcome | None = None   # decided at arrival (429, spurious 422) or when done
    client_waits: bool = True       # the dispatcher still waits for this answer
    deadline: int = 0               # when the dispatcher's read timeout fires


class Processor:
    def __init__(self):
        self.delay_ms = 0
        self.failing = False
        self.announced = True  # the current delay has been seen by a service-health call
        self.stored: dict[bytes, tuple[int, int]] = {}  # id -> (requested_at, amount_cents)
        self.spurious_422 = 0
        self.rate_limited = 0
        self.lookups_fail = False

    def finish(self, request: Request) -> Outcome:
        """What the processor does once the request's delay has passed."""
        if request.answer is not None:
            return request.answer
        send = request.send
        if self.failing:
            return Outcome.FAILED
        if send.correlation_id in self.stored:
            return Outcome.DUPLICATE
        self.stored[send.correlation_id] = (send.requested_at, send.amount_cents)
        return Outcome.STORED


class OutboxWorld(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now = 1_700_000_000 * S
        self.regions = DispatcherRegions.in_memory(intake_slots=SLOTS, intake_capacity=16,
                                                   outbox_capacity=16, ledger_capacity=64)
        self.writers = [IntakeWriter.over(slot, self.regions)
                        for slot in range(SLOTS)]
        self.processors = (Processor(), Processor())
        self.requests: list[Request] = []
        self.lookups: list[Lookup] = []
        self.accepted: set[bytes] = set()  # since the last purge
        self.ledger_log: list[bytes] = []  # every id the ledger ever recorded, in order
        self.incarnation = 0
        self.stopped_answers: list[Request] = []
        self.purge_lock_busy = False
        self.outbox = self._start()
        r = self.regions  # GET /payments/{id}, as a web worker reads it
        self.finder = PaymentFinder(r.intake, r.dispatch, r.outbox, r.ledger, r.index, r.rejected)

    def _start(self) -> Outbox:
        self.incarnation += 1
        self.lookups = []
        for request in self.requests:
            request.client_waits = False  # the process that waited is gone
        outbox = Outbox(self.regions, POLICY)
        outbox.recover(self.now)
        return outbox

    # -- the event loop ----------------------------------------------------------

    def run_until(self, end: int) -> None:
        """Run the world until ``end``, delivering every event at its moment."""
        instant, events = self.now, 0
        while True:
            self._dispatcher_step()
            moments = [r.done_at for r in self.requests] + [r.deadline for r in self.requests if r.client_waits]
            wake = self.outbox.wake_at(self.now)
            if wake is not None:
                moments.append(wake)
            if self.lookups:
                moments.append(self.now)
            upcoming = min(moments, default=None)
            if upcoming is None or upcoming > end:
                break
            self.now = max(self.now, upcoming)
            if self.now == instant:
                events += 1
                assert events < MAX_EVENTS_PER_INSTANT, "the dispatcher spins at one instant"
            else:
                instant, events = self.now, 0
            self._deliver()
        self.now = max(self.now, end)
        self._deliver()
        self._dispatcher_step()

    def _dispatcher_step(self) -> None:
        for slot in self.outbox.pending_purges(self.now):
            if not self.purge_lock_busy:
                self.outbox.purge(slot, self.now)
        self.outbox.drain(self.now)
        self._carry_out(self.outbox.poll(self.now))

    def _carry_out(self, actions) -> None:
        for action in actions:
            if isinstance(action, Lookup):
                self.lookups.append(action)
                continue
            processor = self.processors[action.processor]
            request = Request(action, self.incarnation, self.now, self.now + processor.delay_ms * MS,
                              deadline=self.now + int(action.timeout_s * S))
            if processor.rate_limited:
                processor.rate_limited -= 1
                request.answer, request.done_at = Outcome.FAILED, self.now  # 429 before any delay
            elif processor.spurious_422:
                processor.spurious_422 -= 1
                request.answer = Outcome.DUPLICATE
            self.requests.append(request)

    def _deliver(self) -> None:
        """Everything due by now: processors finish requests, answers and timeouts reach the dispatcher."""
        for request in sorted((r for r in self.requests if r.done_at <= self.now), key=lambda r: r.done_at):
            self.requests.remove(request)
            outcome = self.processors[request.send.processor].finish(request)
            if request.client_waits:
                self._answer(request, outcome if request.done_at <= request.deadline else Outcome.UNKNOWN)
        for request in self.requests:
            if request.client_waits and request.deadline <= self.now:
                self._answer(request, Outcome.UNKNOWN)  # the read timed out; the request goes on inside
        while self.lookups:
            lookup = self.lookups.pop(0)
            processor = self.processors[lookup.processor]
            if processor.lookups_fail:
                found = Outcome.UNKNOWN
            else:
                stored = processor.stored.get(lookup.correlation_id)
                found = Stored(*stored) if stored else None
            self.outbox.lookup_done(lookup, found, self.now)
            self._follow_ledger()
            self._carry_out(self.outbox.poll(self.now))

    def _answer(self, request: Request, outcome: Outcome) -> None:
        request.client_waits = False
        self.outbox.attempt_done(request.send, outcome, self.now, self.now - request.sent_at)
        self._follow_ledger()
        self._carry_out(self.outbox.poll(self.now))

    def _follow_ledger(self) -> None:
        """Note each record the ledger appends, to know which ones its ring overwrites later."""
        ledger = self.regions.ledger
        count = int(ledger.counters["count"])
        assert count - len(self.ledger_log) <= 1  # one confirmation per event
        for index in range(len(self.ledger_log), count):
            self.ledger_log.append(ledger.columns["correlation_id"][index % ledger.capacity].tobytes())

    @property
    def evicted(self) -> set[bytes]:
        """Ids the ledger's ring has overwritten: out of the dedup window, by design."""
        return set(self.ledger_log[:max(0, len(self.ledger_log) - self.regions.ledger.capacity)])

    # -- the gateways --------------------------------------------------------------

    @rule(slot=st.integers(0, SLOTS - 1), count=st.integers(1, 6), amount=st.integers(1, 10**9))
    def accept_payments(self, slot, count, amount):
        for _ in range(count):
            correlation_id = uuid.uuid4().bytes
            try:
                self.writers[slot].append(correlation_id, amount, self.now)
            except IntakeFull:
                return
            self.accepted.add(correlation_id)

    @rule(slot=st.integers(0, SLOTS - 1), pick=st.integers(0, 100))
    def accept_a_payment_again(self, slot, pick):
        candidates = sorted(self.accepted - self.evicted)
        if not candidates:
            return
        correlation_id = candidates[pick % len(candidates)]
        try:
            self.writers[slot].append(correlation_id, 4242, self.now)
        except IntakeFull:
            pass

    @rule(slot=st.integers(0, SLOTS - 1), lock_busy_ms=st.sampled_from([0, 0, 30, 2000]),
          accepted_meanwhile=st.integers(0, 3))
    def purge(self, slot, lock_busy_ms, accepted_meanwhile):
        """The official setup: the processors are purged, then bruto. The dispatcher may go on
        (answers, draining) for a while before it gets the purge lock."""
        for processor in self.processors:
            processor.stored.clear()
        writer = self.writers[slot]
        ticket = writer.purges.request(deadline=self.now + PURGE_TIMEOUT_US)
        self.accepted = set()  # what the gateways accepted before is purged
        self.purge_lock_busy = True
        self.accept_payments(1 - slot, accepted_meanwhile, 700)
        self.run_until(self.now + lock_busy_ms * MS)
        self.purge_lock_busy = False
        self._dispatcher_step()
        assert writer.purges.done(ticket)

    @rule(slot=st.integers(0, SLOTS - 1), stopped_ms=st.sampled_from([0, 2000, 5001]),
          gateway_died=st.booleans(), late_s=st.integers(0, 3))
    def purge_answered_503(self, slot, stopped_ms, gateway_died, late_s):
        """The gateway gives up on a purge (its clock may run ahead of the ticket's deadline), or
        dies while the dispatcher is stopped past the deadline: the purge must never happen."""
        writer = self.writers[slot]
        ticket = writer.purges.request(deadline=self.now + PURGE_TIMEOUT_US)
        if gateway_died:
            stopped_ms = PURGE_TIMEOUT_US // MS + 1
        self._stop(stopped_ms)
        if not gateway_died:
            assert writer.purges.cancel(ticket)  # the 503
        self._wake()
        self.run_until(self.now + late_s * S)
        assert not writer.purges.done(ticket)

    # -- the processors ------------------------------------------------------------

    @rule(processor=st.integers(0, 1), delay=st.sampled_from(DELAYS_MS))
    def set_delay(self, processor, delay):
        target = self.processors[processor]
        if target.announced:  # the assumption: each delay is seen by a poll before it changes again
            target.delay_ms, target.announced = delay, delay == target.delay_ms

    @rule(processor=st.integers(0, 1), failing=st.booleans())
    def set_failing(self, processor, failing):
        self.processors[processor].failing = failing

    @rule(processor=st.integers(0, 1))
    def poll_health(self, processor):
        target = self.processors[processor]
        self.regions.health.records[processor]["next_poll_at"] = self.now + 5_100_000
        self.outbox.health_reported(processor, Health(target.failing, target.delay_ms), self.now, self.now)
        target.announced = True

    @rule(processor=st.integers(0, 1), rate_limited=st.booleans())
    def answer_the_next_one_422_or_429(self, processor, rate_limited):
        target = self.processors[processor]
        if rate_limited:
            target.rate_limited += 1
        else:
            target.spurious_422 += 1

    @rule(processor=st.integers(0, 1), failing=st.booleans())
    def lookups_fail(self, processor, failing):
        self.processors[processor].lookups_fail = failing

    @rule(pick=st.integers(0, 100), stored=st.booleans())
    def drop_a_connection(self, pick, stored):
        """The connection drops: before the processor finished (it goes on), or after it stored."""
        waiting = [r for r in self.requests if r.client_waits]
        if not waiting:
            return
        request = waiting[pick % len(waiting)]
        if stored:
            self.requests.remove(request)
            self.processors[request.send.processor].finish(request)
        self._answer(request, Outcome.UNKNOWN)

    # -- time and the dispatcher ---------------------------------------------------

    @rule(ms=st.sampled_from([0, 1, 30, 250, 1200, 5000, 12_000, 40_000]))
    def time_passes(self, ms):
        self.run_until(self.now + ms * MS)

    @rule()
    def crash(self):
        self.outbox = self._start()

    @rule(ms=st.sampled_from([300, 3000, 9000]))
    def pause_dispatcher(self, ms):
        """SIGSTOP, or a process starved of CPU: nothing it waits for reaches it until it runs again."""
        self._stop(ms)
        self._wake()
        self.run_until(self.now)

    def _stop(self, ms: int) -> None:
        """The dispatcher stops for ``ms``; the processors go on."""
        end = self.now + ms * MS
        for request in sorted((r for r in self.requests if r.done_at <= end), key=lambda r: r.done_at):
            self.now = max(self.now, request.done_at)
            self.requests.remove(request)
            request.answer = self.processors[request.send.processor].finish(request)
            if request.client_waits:
                self.stopped_answers.append(request)
        self.now = end

    def _wake(self) -> None:
        """Each read finds the answer already there, or its timeout fired meanwhile."""
        for request in self.stopped_answers:
            self._answer(request, request.answer if request.done_at <= request.deadline else Outcome.UNKNOWN)
        self.stopped_answers = []
        for request in self.requests:
            if request.client_waits and request.deadline <= self.now:
                self._answer(request, Outcome.UNKNOWN)

    # -- what must always hold -------------------------------------------------------

    def _ledger_rows(self) -> dict[bytes, tuple[int, int, int]]:
        ledger = self.regions.ledger.columns
        rows = {}
        for slot in _retained_slots(self.regions.ledger):
            correlation_id = ledger["correlation_id"][slot].tobytes()
            assert correlation_id not in rows, "a payment is counted twice"
            rows[correlation_id] = (int(ledger["processor"][slot]), int(ledger["requested_at"][slot]),
                                    int(ledger["amount_cents"][slot]))
        return rows

    def _outbox_entries(self):
        entries = self.regions.outbox.records
        return [(int(i), entries[i]) for i in np.flatnonzero(entries["state"] != FREE)]

    def _undrained(self) -> set[bytes]:
        found = set()
        for slot, slab in enumerate(self.regions.intake):
            drained = int(self.regions.dispatch.records[slot]["drained"])
            for index in range(drained, int(slab.counters["written"])):
                found.add(slab.records[index % slab.capacity]["correlation_id"].tobytes())
        return found

    @invariant()
    def every_promise_holds(self):
        self.no_payment_is_stored_by_both_processors()
        self.no_accepted_payment_is_lost()
        self.the_ledger_is_what_the_processors_stored()
        self.every_entry_has_something_scheduled()
        self.every_accepted_payment_is_found_where_it_is()

    def no_payment_is_stored_by_both_processors(self):
        assert not self.processors[0].stored.keys() & self.processors[1].stored.keys()

    def no_accepted_payment_is_lost(self):
        held = set(self._ledger_rows())
        held |= {entry["correlation_id"].tobytes() for _, entry in self._outbox_entries()}
        held |= self._undrained()
        assert self.accepted <= held | self.evicted

    def the_ledger_is_what_the_processors_stored(self):
        rows = self._ledger_rows()
        for correlation_id, (processor, requested_at, amount) in rows.items():
            assert self.processors[processor].stored.get(correlation_id) == (requested_at, amount)
        pinned = {entry["correlation_id"].tobytes(): entry for _, entry in self._outbox_entries()
                  if int(entry["state"]) in (SENT, UNRESOLVED)}
        for processor, target in enumerate(self.processors):
            for correlation_id, stored in target.stored.items():
                if correlation_id in rows or correlation_id in self.evicted:
                    continue
                entry = pinned.get(correlation_id)  # stored, and the dispatcher does not know yet
                assert entry is not None and int(entry["processor"]) == processor, "stored but not counted"
                assert (int(entry["requested_at"]), int(entry["amount_cents"])) == stored

    def every_accepted_payment_is_found_where_it_is(self):
        rows = self._ledger_rows()
        entries = {entry["correlation_id"].tobytes(): entry for _, entry in self._outbox_entries()}
        for correlation_id in self.accepted - self.evicted:
            found = self.finder.find(correlation_id)
            if correlation_id in rows:
                processor, requested_at, amount = rows[correlation_id]
                expected = Payment(correlation_id, "confirmed", amount, PROCESSOR_NAMES[processor], requested_at)
            elif correlation_id in entries:
                entry = entries[correlation_id]
                state = int(entry["state"])
                if state == QUEUED:
                    expected = Payment(correlation_id, "waiting", int(entry["amount_cents"]))
                else:
                    expected = Payment(correlation_id, "in_flight", int(entry["amount_cents"]),
                                       PROCESSOR_NAMES[int(entry["processor"])], int(entry["requested_at"]),
                                       unresolved=state == UNRESOLVED)
            else:
                assert isinstance(found, Payment) and found.state == "waiting", found  # in intake
                continue
            assert found == expected

    def every_entry_has_something_scheduled(self):
        out = {r.send.entry for r in self.requests
               if r.client_waits and r.incarnation == self.incarnation
               and r.send.generation == self.outbox.generation(r.send.entry)}
        out |= {lookup.entry for lookup in self.lookups}
        waiting = self.outbox.waiting() | out
        for index, entry in self._outbox_entries():
            assert index in waiting, f"entry {index} ({int(entry['state'])}) waits with nothing scheduled"
        assert int(self.regions.outbox.counters["in_use"]) == len(self._outbox_entries())

    def teardown(self):
        """The processors recover; in time every payment accepted since the last purge is stored once."""
        for processor, target in enumerate(self.processors):
            self.poll_health(processor)  # the delay in force is announced before it changes
            target.failing = target.lookups_fail = False
            target.spurious_422 = target.rate_limited = 0
            target.delay_ms = 0
            self.poll_health(processor)
        for _ in range(60):  # service-health every 5 s, as the poller calls it
            if not self.requests and not self._outbox_entries() and not self._undrained():
                break
            self.run_until(self.now + 5 * S)
            for processor in (0, 1):
                self.poll_health(processor)
        assert self._outbox_entries() == []
        self.no_payment_is_stored_by_both_processors()
        rows = self._ledger_rows()
        evicted = self.evicted
        stored = {correlation_id: (processor, *row) for processor, target in enumerate(self.processors)
                  for correlation_id, row in target.stored.items() if correlation_id not in evicted}
        assert rows == stored
        assert self.accepted <= rows.keys() | evicted


def _retained_slots(region):
    counters = region.counters
    count, start = int(counters["count"]), int(counters["start"])
    first = max(start, count - region.capacity)
    return [index % region.capacity for index in range(first, count)]


# Examples per run: BRUTO_MODEL_EXAMPLES=20000 for a long run (docs/DISPATCHER.md).
OutboxWorld.TestCase.settings = settings(max_examples=int(os.environ.get("BRUTO_MODEL_EXAMPLES", "1000")),
                                         stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
test_the_outbox_keeps_every_promise = OutboxWorld.TestCase
