"""The outbox state machine, scenario by scenario: the holes of issue 11 among them.

Everything runs in process memory with a hand-driven clock; the processors are
whatever the test answers to each action.
"""

from __future__ import annotations

import os
import tracemalloc
import uuid

import numpy as np
import pytest

from bruto.dispatcher import breaker
from bruto.dispatcher import routing
from bruto.dispatcher.dedup import REBUILD_CHUNK
from bruto.dispatcher.outbox import LOOKUP_MARGIN_US
from bruto.dispatcher.outbox import Lookup
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import FREE
from bruto.shm.layout import OUTCOMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import DispatcherRegions
from bruto.shm.ledger import LedgerWriter
from bruto.shm.ledger import totals
from bruto.shm.lookup import PaymentFinder

S = 1_000_000
T0 = 1_700_000_000 * S
POLICY = routing.Policy(patience_us=30 * S)


class World:
    """Regions, an outbox over them, a writer per intake slot, and a clock."""

    def __init__(self, slots=2, outbox_capacity=16, ledger_capacity=64):
        self.now = T0
        self.regions = DispatcherRegions.in_memory(slots, 16, outbox_capacity, ledger_capacity)
        self.writers = [IntakeWriter.over(slot, self.regions)
                        for slot in range(slots)]
        self.outbox = Outbox(self.regions, POLICY)
        self.outbox.recover(self.now)

    def restart(self):
        """A new outbox over the same regions, as after a crash."""
        self.outbox = Outbox(self.regions, POLICY)
        self.outbox.recover(self.now)

    def down_since(self, processor, since, state=breaker.OPEN, probe_at=0):
        """The breaker as a dispatcher that saw the outage left it (then this one starts)."""
        breaker.write(self.regions.health.records[processor], breaker.Breaker(state, 5, since, probe_at))
        self.restart()

    def accept(self, slot=0) -> bytes:
        correlation_id = uuid.uuid4().bytes
        self.writers[slot].append(correlation_id, 1990, self.now)
        return correlation_id

    def step(self, seconds=0.0) -> list:
        self.now += int(seconds * S)
        for slot in self.outbox.pending_purges(self.now):
            self.outbox.purge(slot, self.now)
        self.outbox.drain(self.now)
        return self.outbox.poll(self.now)

    def announce(self, processor, delay_ms, failing=False):
        self.outbox.health_reported(processor, Health(failing, delay_ms), self.now, self.now)

    def ledger(self) -> dict[bytes, tuple[int, int]]:
        ledger = LedgerWriter(self.regions.ledger)
        columns = self.regions.ledger.columns
        return {columns["correlation_id"][slot].tobytes(): (int(columns["processor"][slot]),
                                                            int(columns["requested_at"][slot]))
                for part in ledger.retained() for slot in range(part.start, part.stop)}

    def state(self, correlation_id) -> int:
        entries = self.regions.outbox.records
        for entry in entries:
            if entry["correlation_id"].tobytes() == correlation_id and int(entry["state"]) != FREE:
                return int(entry["state"])
        return FREE


def sends(actions) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def lookups(actions) -> list[Lookup]:
    return [a for a in actions if isinstance(a, Lookup)]


def test_a_payment_goes_to_default_and_is_recorded_with_what_was_sent():
    world = World()
    payment = world.accept()
    [send] = world.step()
    assert (send.processor, send.correlation_id, send.amount_cents) == (DEFAULT, payment, 1990)
    assert send.requested_at % 1000 == 0 and send.requested_at <= world.now
    world.outbox.attempt_done(send, Outcome.STORED, world.now, 5000)
    assert world.ledger() == {payment: (DEFAULT, send.requested_at)}
    assert world.state(payment) == FREE


def test_a_payment_accepted_twice_is_sent_once():
    world = World()
    payment = world.accept(0)
    world.writers[1].append(payment, 1990, world.now)
    assert len(world.step()) == 1
    assert int(world.regions.dispatch.counters["duplicates_dropped"]) == 1


def test_a_500_sends_again_after_a_backoff_with_a_fresh_requested_at():
    world = World()
    world.accept()
    [first] = world.step()
    world.outbox.attempt_done(first, Outcome.FAILED, world.now, 1000)
    assert world.step() == []
    [again] = world.step(0.1)
    assert again.requested_at > first.requested_at


def test_an_unresolved_payment_stays_with_its_processor_until_its_absence_is_proven():
    """Default is down past the patience. Its delay rose to 10 s a moment ago; no poll has
    said so yet. A probe goes out, its connection drops while the request waits inside
    default, and the next probe stays out: fallback is where a requeued payment would go."""
    world = World()
    world.down_since(DEFAULT, T0 - 40 * S)
    world.announce(DEFAULT, 0)
    payment = world.accept()
    [probe] = world.step(0.001)
    assert probe.processor == DEFAULT
    world.now += 100_000
    world.outbox.attempt_done(probe, Outcome.UNKNOWN, world.now, 100_000)  # dropped
    world.accept()
    [other] = world.step(breaker.PROBE_INTERVAL_US / S)  # the next probe: it never comes back
    assert other.processor == DEFAULT
    stored_at = probe.requested_at + 10 * S  # when default stores the first one
    while world.now < stored_at:
        if world.now >= T0 + 3 * S and world.regions.health.records[DEFAULT]["min_response_ms"] == 0:
            world.announce(DEFAULT, 10_000)  # the next poll tells the delay
        actions = world.step(0.2)
        assert not [s for s in sends(actions) if s.correlation_id == payment], "it left default unresolved"
        for lookup in lookups(actions):
            world.outbox.lookup_done(lookup, None, world.now)
    assert world.state(payment) == UNRESOLVED
    stored = Stored(probe.requested_at, 1990)
    for _ in range(20):
        for lookup in lookups(world.step(1)):
            world.outbox.lookup_done(lookup, stored, world.now)
    assert world.ledger() == {payment: (DEFAULT, probe.requested_at)}


def test_absence_is_proven_only_after_the_largest_delay_and_a_poll_since_the_attempt():
    world = World()
    world.announce(DEFAULT, 0)
    payment = world.accept()
    [send] = world.step(0.001)
    world.outbox.attempt_done(send, Outcome.UNKNOWN, world.now + 7 * S, 7 * S)  # timed out
    world.now += 7 * S
    world.announce(DEFAULT, 2000)  # shown 7 s (the timeout), announced 2 s: 7 s bound
    sent_at = send.requested_at  # within the millisecond it was sent
    proof = sent_at + 7 * S + LOOKUP_MARGIN_US
    for asked_at, proven in ((proof - 2000, False), (proof + 1000, True)):
        world.outbox.lookup_done(Lookup(send.entry, world.outbox.generation(send.entry), DEFAULT, payment,
                                        asked_at), None, world.now)
        assert world.state(payment) == (QUEUED if proven else UNRESOLVED)


def test_a_422_then_a_404_backs_off_instead_of_spinning():
    world = World()
    payment = world.accept()
    [send] = world.step()
    world.outbox.attempt_done(send, Outcome.DUPLICATE, world.now, 1000)  # 422 for another reason
    [lookup] = world.step()
    world.outbox.lookup_done(lookup, None, world.now)  # and it does not have it
    assert world.step() == []  # nothing more at this instant
    assert world.state(payment) == UNRESOLVED
    assert world.outbox.wake_at(world.now) > world.now
    assert world.outbox.waiting() == {lookup.entry}
    # No service-health answer comes (the poller is rate-limited): nothing can be proven,
    # and the lookups that find nothing back off.
    asked = 0
    for _ in range(2000):
        for lookup in lookups(world.step(0.005)):
            asked += 1
            world.outbox.lookup_done(lookup, None, world.now)
    assert world.state(payment) == UNRESOLVED
    assert asked <= 8, f"{asked} lookups in 10 s"


def test_a_purge_keeps_what_was_accepted_after_it_was_asked():
    world = World()
    before = world.accept(0)
    confirmed = world.accept(1)
    [first, second] = world.step()
    done = {s.correlation_id: s for s in (first, second)}
    world.outbox.attempt_done(done[confirmed], Outcome.STORED, world.now, 1000)
    ticket = world.writers[0].purges.request(deadline=world.now + 5 * S)
    after = world.accept(1)  # another worker accepts a payment after the purge was asked
    world.outbox.attempt_done(done[before], Outcome.STORED, world.now, 1000)  # confirmed after it was asked
    world.outbox.drain(world.now)  # the dispatcher drains before it gets the purge lock
    world.step()
    assert world.writers[0].purges.done(ticket)
    assert set(world.ledger()) == {before}  # what was confirmed before the purge is gone
    assert world.state(after) != FREE
    assert world.step() == []  # and it is held once only
    assert int(world.regions.dispatch.counters["duplicates_dropped"]) == 0


def test_a_purge_drops_what_waited_and_keeps_what_is_out():
    world = World()
    out = world.accept()
    [send] = world.step()
    world.announce(DEFAULT, 0, failing=True)  # the breaker opens: the next one waits
    waiting = world.accept()
    assert world.step() == []
    ticket = world.writers[1].purges.request(deadline=world.now + 5 * S)
    world.step()
    assert world.writers[1].purges.done(ticket)
    assert world.state(waiting) == FREE
    world.outbox.attempt_done(send, Outcome.STORED, world.now, 1000)  # stored after all: it counts
    assert set(world.ledger()) == {out}


def test_a_cancelled_or_expired_purge_is_never_carried_out():
    world = World()
    world.accept()
    world.outbox.attempt_done(world.step()[0], Outcome.STORED, world.now, 1000)
    cancelled = world.writers[0].purges.request(deadline=world.now + 5 * S)
    assert world.writers[0].purges.cancel(cancelled)  # the gateway answered 503
    world.step()
    expired = world.writers[1].purges.request(deadline=world.now + 5 * S)
    world.step(5.001)  # the gateway died; the dispatcher came back after the deadline
    assert not world.writers[0].purges.done(cancelled) and not world.writers[1].purges.done(expired)
    assert len(world.ledger()) == 1
    assert world.outbox.pending_purges(world.now) == []


def test_a_committed_purge_cannot_be_cancelled_and_survives_a_crash_midway():
    world = World()
    kept = world.accept()
    ticket = world.writers[0].purges.request(deadline=world.now + 5 * S)
    cursor = world.regions.dispatch.records[0]
    cursor["purge_claimed"] = ticket  # the dispatcher committed, then crashed before the rest
    for i, below in enumerate(world.regions.intake[0].counters["purge_below"][:2]):
        world.regions.dispatch.records[i]["purge_below"] = below
    assert not world.writers[0].purges.cancel(ticket)
    world.restart()
    assert world.writers[0].purges.done(ticket)
    assert world.step() == [] and world.state(kept) == FREE


def test_a_crash_with_a_request_out_resolves_it_on_the_same_processor():
    world = World()
    world.announce(DEFAULT, 0)
    payment = world.accept()
    [send] = world.step()
    world.restart()  # crash: the answer is lost
    assert world.state(payment) == UNRESOLVED
    assert world.step() == []
    world.now += LOOKUP_MARGIN_US
    world.announce(DEFAULT, 0)
    [lookup] = lookups(world.step(0.3))
    assert lookup.processor == DEFAULT
    world.outbox.lookup_done(lookup, None, world.now)  # proven absent: sent again
    [again] = world.step()
    assert again.correlation_id == payment and again.requested_at > send.requested_at


def test_a_crash_between_ledger_and_outbox_counts_the_payment_once():
    world = World()
    payment = world.accept()
    [send] = world.step()
    LedgerWriter(world.regions.ledger).append(payment, send.requested_at, 1990, DEFAULT)  # then the crash
    world.restart()
    assert world.state(payment) == FREE
    assert world.step(10) == []
    assert totals(world.regions.ledger, None, None).requests == (1, 0)


def test_default_down_past_the_patience_sends_to_fallback():
    world = World()
    world.down_since(DEFAULT, T0 - 31 * S, probe_at=T0)
    world.accept()
    [send] = world.step()
    assert send.processor == FALLBACK


def test_the_dedup_memory_is_fixed_and_small_per_ledger_record():
    capacity = 1 << 17
    regions = DispatcherRegions.in_memory(1, 16, 1024, capacity)
    ids = regions.ledger.columns["correlation_id"]
    ids[:] = np.frombuffer(os.urandom(16 * capacity), dtype=ids.dtype)
    regions.ledger.counters["count"] = capacity  # a full ledger
    tracemalloc.start()
    try:
        outbox = Outbox(regions, POLICY)
        outbox.recover(T0)
        used, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert used / capacity <= 16, f"{used / capacity:.1f} bytes per ledger record"
    # Recovery works a chunk at a time: what it needs beyond the index does not grow with the ledger.
    assert peak - used <= 256 * REBUILD_CHUNK, f"recovery needs {(peak - used) / 2**20:.1f} MiB more"
    regions.intake[0].records[0]["correlation_id"] = ids[capacity - 7]
    regions.intake[0].counters["written"] = 1
    outbox.drain(T0)
    assert int(regions.dispatch.counters["duplicates_dropped"]) == 1  # the rebuilt index knows every id


@pytest.mark.parametrize("outcome", [Outcome.UNKNOWN, Outcome.DUPLICATE])
def test_an_unresolved_entry_is_looked_up_on_its_processor_only(outcome):
    world = World()
    world.announce(DEFAULT, 0)
    payment = world.accept()
    [send] = world.step()
    world.outbox.attempt_done(send, outcome, world.now, 1000)
    world.announce(DEFAULT, 0)
    for _ in range(5):
        actions = world.step(1)
        assert not sends(actions)
        for lookup in lookups(actions):
            assert lookup.processor == DEFAULT
            world.outbox.lookup_done(lookup, Stored(send.requested_at, 1990), world.now)
    assert world.ledger() == {payment: (DEFAULT, send.requested_at)}
    assert world.state(payment) == FREE


def test_a_writer_over_test_regions_refuses_only_when_its_slab_is_full():
    """IntakeWriter.over without shed_backlog: what waits in the outbox does not
    make it refuse early, so the model tests reach a full outbox with intake
    still taking payments."""
    world = World(slots=1, outbox_capacity=4)
    world.announce(DEFAULT, 0, failing=True)
    world.announce(FALLBACK, 0, failing=True)  # both down: everything waits in the outbox
    for _ in range(4):
        world.accept()
    world.step()
    assert int(world.regions.outbox.counters["in_use"]) == 4
    for _ in range(16):  # the slab's capacity
        world.accept()
    with pytest.raises(IntakeFull):
        world.accept()


def test_a_late_cancel_of_an_older_purge_does_not_revive_a_newer_cancelled_one():
    world = World()
    writer = world.writers[0]
    first = writer.purges.request(deadline=world.now + 5 * S)
    second = writer.purges.request(deadline=world.now + 6 * S)
    assert writer.purges.cancel(second)  # answered 503: it must never happen
    assert writer.purges.cancel(first)
    world.step(1)  # before the second's deadline
    assert not writer.purges.done(second)


def test_a_payment_out_during_a_purge_is_not_sent_again_when_its_attempt_fails():
    world = World()
    world.accept()
    [send] = world.step()
    ticket = world.writers[0].purges.request(deadline=world.now + 5 * S)
    world.step()
    assert world.writers[0].purges.done(ticket)  # POST /purge-payments answered 200
    world.outbox.attempt_done(send, Outcome.FAILED, world.now, 1000)  # the processor stored nothing
    assert [a for a in world.step(0.1) if isinstance(a, Send)] == []
    assert int(world.regions.outbox.counters["in_use"]) == 0
    assert world.outbox.waiting() == set()


def test_a_payment_out_during_a_purge_is_kept_if_the_processor_stored_it():
    world = World()
    paid = world.accept()
    [send] = world.step()
    ticket = world.writers[0].purges.request(deadline=world.now + 5 * S)
    world.step()
    assert world.writers[0].purges.done(ticket)
    world.outbox.attempt_done(send, Outcome.STORED, world.now, 1000)
    assert world.ledger() == {paid: (DEFAULT, send.requested_at)}


def test_a_payment_unresolved_during_a_purge_goes_once_a_lookup_proves_it_absent():
    world = World()
    world.announce(DEFAULT, 0)
    world.accept()
    [send] = world.step()
    world.outbox.attempt_done(send, Outcome.UNKNOWN, world.now, 7 * S)  # timed out: unresolved
    ticket = world.writers[0].purges.request(deadline=world.now + 5 * S)
    world.step()
    assert world.writers[0].purges.done(ticket)
    world.step(6)
    world.announce(DEFAULT, 0)  # a poll after the attempt: the delay in force is known
    lookups = [a for a in world.step(LOOKUP_MARGIN_US / S + 1) if isinstance(a, Lookup)]
    assert lookups
    world.outbox.lookup_done(lookups[-1], None, world.now)  # 404, absence proven
    assert [a for a in world.step(1) if isinstance(a, Send)] == []
    assert int(world.regions.outbox.counters["in_use"]) == 0


def test_a_payment_accepted_while_the_purge_marks_are_read_survives_the_purge():
    """The gateway reads the marks, then publishes the ticket; a payment accepted in
    another slab and drained in between came after the request."""
    world = World()
    world.announce(DEFAULT, 0, failing=True)
    world.announce(FALLBACK, 0, failing=True)  # both down: payments stay QUEUED
    before = world.accept(1)
    world.step()
    asking = world.writers[0].slab.counters
    for slot, slab in enumerate(world.regions.intake):
        asking["purge_below"][slot] = int(slab.counters["written"])  # the marks
    asking["purge_ledger_below"] = int(world.regions.ledger.counters["count"])
    asking["purge_deadline"] = world.now + 5 * S
    late = world.accept(1)  # accepted after its slab's mark was read ...
    world.outbox.drain(world.now)  # ... and drained before the ticket appears
    asking["purge_ticket"] = 1  # the ticket is published
    world.step()
    assert world.writers[0].purges.done(1)
    assert world.state(before) == FREE
    assert world.state(late) == QUEUED


def test_a_crash_leaves_no_attempt_without_an_outcome():
    world = World()
    world.accept()
    world.accept()
    assert len(world.step()) == 2  # both out to default
    world.restart()  # the crash lost both answers
    metrics = world.regions.metrics
    assert int(metrics.records["attempts"].sum()) == 2
    assert int(metrics.records["outcomes"][DEFAULT, OUTCOMES.index("unknown")]) == 2


def test_a_default_that_stops_answering_is_slow_before_any_answer_says_so():
    """Default's delay jumps with no announcement: the age of its oldest payment out tells."""
    world = World()
    world.outbox.policy = routing.Policy(patience_us=3 * S, latency_limit_ms=1_200)
    world.accept()
    [first] = world.step()
    assert first.processor == DEFAULT
    world.accept()
    [second] = world.step(0.04)  # the first is 40 ms out: as expected
    assert second.processor == DEFAULT
    world.accept()
    # 1 s out: late (no answer has taken that long), so nothing new goes to default, but
    # within the latency limit it is not down: fallback gets nothing, no patience runs.
    assert world.step(0.96) == []
    assert world.outbox.is_late(DEFAULT, world.now)
    assert world.outbox.latency_ms(DEFAULT, world.now) == 1_000
    assert world.outbox.wake_at(world.now) == T0 + 1_201_000  # when it becomes slow
    assert world.step(0.3) == []  # 1.3 s out: default is slow; the payment waits out the patience
    assert world.outbox.wake_at(world.now) == world.now + 3 * S
    [third] = world.step(3.0)
    assert third.processor == FALLBACK
    world.outbox.attempt_done(first, Outcome.STORED, world.now, int(4.3 * S))
    world.outbox.attempt_done(second, Outcome.STORED, world.now, int(4.26 * S))
    assert world.outbox.latency_ms(DEFAULT, world.now) >= 4_260  # its answers say so too
    world.step(5.1)
    assert world.outbox.latency_ms(DEFAULT, world.now) == 0  # answers that old say nothing: try default again


def test_a_straggler_among_answers_does_not_make_default_late():
    world = World()
    world.accept()
    [stuck] = world.step()
    for _ in range(30):  # default keeps answering the others in 10 ms
        world.accept()
        [quick] = world.step(0.01)
        assert quick.processor == DEFAULT
        world.step(0.01)
        world.outbox.attempt_done(quick, Outcome.STORED, world.now, 10_000)
    assert world.now - T0 == int(0.6 * S)  # the first payment has been out for 0.6 s
    assert world.outbox.latency_ms(DEFAULT, world.now) < 50
    assert not world.outbox.is_late(DEFAULT, world.now)
    world.outbox.attempt_done(stuck, Outcome.STORED, world.now, world.now - T0)


def test_after_an_outage_what_was_learnt_during_it_stops_counting():
    """Default recovers with its last probe, which took the outage's 2 s: neither that answer nor
    the delay announced during the outage makes it look slow, and fallback is probed at once."""
    world = World()
    world.outbox.policy = routing.Policy(patience_us=S // 2)
    world.announce(DEFAULT, 2_000, failing=True)
    world.announce(FALLBACK, 1_000, failing=True)
    world.accept()
    world.accept()
    probe, fallback_probe = world.step(1.0)  # both down, past the patience: each probed
    assert (probe.processor, fallback_probe.processor) == (DEFAULT, FALLBACK)
    world.step(2.0)
    world.outbox.attempt_done(probe, Outcome.STORED, world.now, 2 * S)  # stored: the outage is over
    assert world.outbox._breakers[DEFAULT].state == breaker.CLOSED
    assert world.outbox.latency_ms(DEFAULT, world.now) == 0  # not the probe's 2 s, not the announced 2 s
    # Fallback's probe has been out for 2 s: a new one may go at once, rather than when it answers.
    assert world.outbox._breakers[FALLBACK].state == breaker.OPEN
    assert breaker.may_probe(world.outbox._breakers[FALLBACK], world.now)
    world.accept()
    [payment] = world.step(0.001)
    assert payment.processor == DEFAULT
    # A health call asked after the recovery counts again.
    world.announce(DEFAULT, 1_500)
    assert world.outbox.latency_ms(DEFAULT, world.now) == 1_500


def test_a_payment_rejected_outright_is_dropped_and_found_as_rejected():
    world = World()
    payment = world.accept()
    [send] = world.step()
    world.outbox.attempt_done(send, Outcome.REJECTED, world.now, 1000)
    assert world.state(payment) == FREE and world.ledger() == {}
    assert world.step(60) == []  # never sent again, never looked up
    r = world.regions
    found = PaymentFinder(r.intake, r.dispatch, r.outbox, r.ledger, r.index, r.rejected).find(payment)
    assert found is not None and found.state == "rejected"
