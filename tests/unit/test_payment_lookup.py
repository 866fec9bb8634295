"""Finding one payment in the regions (bruto.shm.lookup), state by state, against the outbox.

The outbox runs in process memory with a hand-driven clock, as in
test_outbox.py; the finder reads the same regions a web worker maps.
"""

from __future__ import annotations

import sys
import threading
import uuid

import numpy as np

from bruto.dispatcher import routing
from bruto.dispatcher.dedup import DedupIndex
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import INDEX
from bruto.shm.layout import DispatcherRegions
from bruto.shm.layout import index_slots
from bruto.shm.lookup import NotHeld
from bruto.shm.lookup import Payment
from bruto.shm.lookup import PaymentFinder
from bruto.shm.region import Region

S = 1_000_000
T0 = 1_700_000_000 * S


class World:
    """Regions, an outbox over them, intake writers, a finder, and a clock."""

    def __init__(self, slots=2, outbox_capacity=16, ledger_capacity=64):
        self.now = T0
        self.regions = DispatcherRegions.in_memory(slots, 16, outbox_capacity, ledger_capacity)
        self.writers = [IntakeWriter.over(slot, self.regions) for slot in range(slots)]
        self.pauses = 0
        r = self.regions
        self.finder = PaymentFinder(r.intake, r.dispatch, r.outbox, r.ledger, r.index, r.rejected,
                                    pause=self._pause)
        self.restart()

    def _pause(self, seconds):
        self.pauses += 1

    def restart(self):
        self.outbox = Outbox(self.regions, routing.Policy(patience_us=30 * S))
        self.outbox.recover(self.now)

    def accept(self, slot=0, cents=1990, correlation_id=None) -> bytes:
        correlation_id = correlation_id or uuid.uuid4().bytes
        self.writers[slot].append(correlation_id, cents, self.now)
        return correlation_id

    def step(self, seconds=0.0) -> list:
        self.now += int(seconds * S)
        for slot in self.outbox.pending_purges(self.now):
            self.outbox.purge(slot, self.now)
        self.outbox.drain(self.now)
        return [a for a in self.outbox.poll(self.now) if isinstance(a, Send)]

    def answer(self, send: Send, outcome: Outcome):
        self.outbox.attempt_done(send, outcome, self.now, 1000)

    def purge(self):
        self.writers[0].purges.request(deadline=self.now + 5 * S)
        self.step()

    def find(self, correlation_id):
        return self.finder.find(correlation_id)


def test_a_payment_is_waiting_in_intake_then_in_the_outbox_then_in_flight_then_confirmed():
    world = World()
    payment = world.accept(cents=1234)
    assert world.find(payment) == Payment(payment, "waiting", 1234)
    world.outbox.health_reported(0, Health(True, 0), world.now, world.now)  # default failing: held
    world.outbox.health_reported(1, Health(True, 0), world.now, world.now)
    world.outbox.drain(world.now)
    assert world.regions.dispatch.records[0]["drained"] == 1
    assert world.find(payment) == Payment(payment, "waiting", 1234)
    world.outbox.health_reported(0, Health(False, 0), world.now, world.now)
    world.outbox.health_reported(1, Health(False, 0), world.now, world.now)
    [send] = world.step(1)
    assert world.find(payment) == Payment(payment, "in_flight", 1234, "default", send.requested_at)
    world.answer(send, Outcome.STORED)
    assert world.find(payment) == Payment(payment, "confirmed", 1234, "default", send.requested_at)


def test_an_unknown_outcome_is_in_flight_unresolved_and_a_failure_waits_with_no_processor():
    world = World()
    lost, failed = world.accept(), world.accept()
    first, second = world.step()
    world.answer(first, Outcome.UNKNOWN)
    assert world.find(lost) == Payment(lost, "in_flight", 1990, "default", first.requested_at, unresolved=True)
    world.answer(second, Outcome.FAILED)
    assert world.find(failed) == Payment(failed, "waiting", 1990)


def test_a_payment_the_processor_refuses_for_good_is_rejected_with_what_was_sent():
    world = World()
    payment = world.accept(cents=500)
    [send] = world.step()
    world.answer(send, Outcome.REJECTED)
    assert world.find(payment) == Payment(payment, "rejected", 500, "default", send.requested_at)
    # Its id is forgotten (a processor refused it, not bruto): posted again, it is a new payment.
    world.accept(correlation_id=payment, cents=600)
    assert world.find(payment) == Payment(payment, "waiting", 600)


def test_a_duplicate_answers_with_the_copy_the_dispatcher_keeps():
    world = World()
    payment = world.accept(slot=0, cents=1000)
    [send] = world.step()
    world.answer(send, Outcome.STORED)
    world.accept(slot=1, correlation_id=payment, cents=2000)  # not drained yet: intake holds it too
    assert world.find(payment) == Payment(payment, "confirmed", 1000, "default", send.requested_at)
    world.step()
    assert world.find(payment) == Payment(payment, "confirmed", 1000, "default", send.requested_at)
    assert int(world.regions.dispatch.counters["duplicates_dropped"]) == 1


def test_an_id_never_accepted_is_not_held_and_bruto_says_it_can_tell():
    world = World()
    found = world.find(uuid.uuid4().bytes)
    assert isinstance(found, NotHeld) and found.reason == "never_accepted"


def test_purged_payments_are_told_apart_wherever_they_were():
    world = World()
    confirmed, queued, refused = world.accept(), world.accept(), world.accept()
    first, second, third = world.step()
    world.answer(first, Outcome.STORED)
    world.answer(third, Outcome.REJECTED)
    world.answer(second, Outcome.FAILED)  # queued again when the purge comes
    world.purge()
    for payment in (confirmed, queued, refused):
        found = world.find(payment)
        assert isinstance(found, NotHeld) and found.reason == "purged", (payment, found)
    other = world.find(uuid.uuid4().bytes)
    assert other.reason == "unknown" and "1 purges" in other.detail


def test_a_payment_a_purge_dropped_from_intake_before_it_was_drained_is_purged():
    world = World()
    payment = world.accept(slot=1)
    assert world.find(payment) == Payment(payment, "waiting", 1990)
    world.purge()  # carried out before the next drain: the slab's record is skipped, never drained
    assert int(world.regions.dispatch.records[1]["drained"]) == 1
    assert int(world.regions.outbox.counters["in_use"]) == 0
    found = world.find(payment)
    assert isinstance(found, NotHeld) and found.reason == "purged", found


def test_a_payment_the_ledger_ring_overwrote_is_unknown_and_the_detail_says_why():
    world = World(ledger_capacity=8)
    ids = []
    for _ in range(3):
        batch = [world.accept() for _ in range(6)]
        ids += batch
        for send in world.step():
            world.answer(send, Outcome.STORED)
    assert isinstance(world.find(ids[-1]), Payment)
    found = world.find(ids[0])
    assert isinstance(found, NotHeld) and found.reason in ("unknown", "aged_out")
    if found.reason == "unknown":
        assert "last 8 confirmations" in found.detail


def test_while_the_index_is_rebuilt_the_lookup_scans_and_answers_the_same():
    world = World()
    confirmed, out = world.accept(), world.accept()
    first, second = world.step()
    world.answer(first, Outcome.STORED)
    expected = {confirmed: world.find(confirmed), out: world.find(out)}
    # A new dispatcher (a takeover): its index is empty until recover() rebuilds it.
    Outbox(world.regions, routing.Policy(patience_us=30 * S))
    assert int(world.regions.index.counters["changes"]) % 2 == 1
    assert {p: world.find(p) for p in expected} == expected
    world.restart()
    assert world.find(out) == Payment(out, "in_flight", 1990, "default", second.requested_at, unresolved=True)
    assert world.find(confirmed) == expected[confirmed]


def test_a_long_scan_pauses_between_chunks(monkeypatch):
    from bruto.shm import lookup
    monkeypatch.setattr(lookup, "SCAN_CHUNK", 4)
    world = World(ledger_capacity=32)
    for _ in range(2):
        [world.accept() for _ in range(10)]
        for send in world.step():
            world.answer(send, Outcome.STORED)
    Outbox(world.regions, routing.Policy(patience_us=30 * S))  # index being rebuilt: the ledger is scanned
    world.pauses = 0
    world.find(uuid.uuid4().bytes)
    assert world.pauses >= 20 // 4 - 1


def test_a_reader_never_misses_a_key_while_others_are_removed_and_inserted():
    """The seqlock of the shared index: backward shifts move keys past a probe that runs
    at the same time (another thread, switching every microsecond); the probe must
    retry or scan, never answer 'not held' for a key that stays in the table."""
    ledger_ids = np.zeros(64, dtype="V16")
    regions = DispatcherRegions.in_memory(1, 16, 64, 64)
    slots = index_slots(64, 64)
    table = Region.in_memory(INDEX, slots)
    index = DedupIndex(regions.ledger.columns["correlation_id"], regions.outbox.records["correlation_id"], table)
    index.rebuild([], np.zeros(0, dtype=np.int64))
    ids = regions.ledger.columns["correlation_id"]
    stay = []
    for slot in range(32):  # half the ledger stays indexed for good
        key = uuid.uuid4().bytes
        ids[slot] = key
        index.insert(key, slot)
        stay.append(key)
    del ledger_ids
    stop = threading.Event()

    def churn():
        slot = 32
        while not stop.is_set():
            key = uuid.uuid4().bytes
            ids[slot] = key
            index.insert(key, slot)
            index.remove(key, slot)
            slot = 32 + (slot - 31) % 32

    finder = PaymentFinder(regions.intake, regions.dispatch, regions.outbox, regions.ledger, table,
                           regions.rejected, pause=lambda s: None)
    regions.ledger.counters["count"] = 64  # every slot counted
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=churn)
    thread.start()
    try:
        misses = [key for _ in range(200) for key in stay if not isinstance(finder.find(key), Payment)]
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(before)
    assert misses == []
