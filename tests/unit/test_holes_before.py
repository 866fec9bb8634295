"""Reproductions of the holes of issue 11 on the dispatcher as it was (they fail on purpose).

Each test drives the old ``Dispatcher`` in-process with stand-in processors and
a fake clock. They are replaced by tests of the new outbox in the next commits.
"""

from __future__ import annotations

import tracemalloc
import uuid

import falcon.testing
import gevent
import gevent.event
import pytest

import bruto.dispatcher.service as service
from bruto.config import Settings
from bruto.dispatcher import breaker
from bruto.dispatcher.processor import Outcome
from bruto.dispatcher.processor import Stored
from bruto.gateway import app as gateway_app
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_payment
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import create_all
from bruto.shm.layout import open_ledger
from bruto.shm.ledger import LedgerWriter
from bruto.shm.ledger import totals

S = 1_000_000


class Clock:
    def __init__(self):
        self.now = 1_000 * S

    def __call__(self):
        return self.now


class Processor:
    """A processor that stores what it is sent after its delay (when not failing)."""

    def __init__(self, clock, name):
        self.clock, self.name = clock, name
        self.delay_us = 0
        self.stored = {}
        self.pending = []  # (store at, id, requested_at, amount)
        self.answer = None  # force an outcome instead of storing
        self.raise_on_pay = False
        self.hang = set()  # ids whose requests never come back
        self.sent = 0

    def settle(self):
        for item in [p for p in self.pending if p[0] <= self.clock.now]:
            self.pending.remove(item)
            self.stored.setdefault(item[1], (item[2], item[3]))

    def pay(self, correlation_id, amount_cents, requested_at, timeout_s):
        self.sent += 1
        if self.raise_on_pay:
            raise RuntimeError("bug in the client")
        if self.answer is not None:
            return self.answer
        if correlation_id in self.hang:
            gevent.event.Event().wait()
        self.pending.append((self.clock.now + self.delay_us, correlation_id, requested_at, amount_cents))
        self.settle()
        if correlation_id in self.stored and not any(p[1] == correlation_id for p in self.pending):
            return Outcome.STORED
        return Outcome.UNKNOWN  # the connection dropped while the request waits inside

    def lookup(self, correlation_id, timeout_s=2.0):
        self.settle()
        found = self.stored.get(correlation_id)
        return None if found is None else Stored(*found)


@pytest.fixture
def world(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(service, "now_us", clock)
    settings = Settings(shm_dir=str(tmp_path), intake_slots=2, intake_capacity=64,
                        outbox_capacity=64, ledger_capacity=1 << 16)
    create_all(settings)
    return clock, settings


def start(settings, clock):
    d = service.Dispatcher(settings)
    d.clients = (Processor(clock, "default"), Processor(clock, "fallback"))
    d.recover()
    return d


def run(d, clock, seconds=0.0, step_us=100_000):
    end = clock.now + int(seconds * S)
    while True:
        for p in d.clients:
            p.settle()
        d.step()
        gevent.sleep(0)
        d.step()
        if clock.now >= end:
            return
        clock.now = min(end, clock.now + step_us)


def test_hole1_a_purge_answered_503_is_never_carried_out_later(world, monkeypatch):
    clock, settings = world
    monkeypatch.setattr(gateway_app, "PURGE_TIMEOUT_S", 0.05)
    client = falcon.testing.TestClient(gateway_app.create_app(settings))
    early = uuid.uuid4()
    assert client.simulate_post("/payments", json={"correlationId": str(early), "amount": 1}).status_code == 202
    assert client.simulate_post("/purge-payments").status_code == 503  # no dispatcher ran
    late = uuid.uuid4()
    assert client.simulate_post("/payments", json={"correlationId": str(late), "amount": 1}).status_code == 202
    d = start(settings, clock)
    run(d, clock, 1)
    assert set(d.clients[DEFAULT].stored) == {early.bytes, late.bytes}


def test_hole2_a_purge_keeps_what_was_accepted_after_it_was_asked(world):
    clock, settings = world
    d = start(settings, clock)
    asking, other = IntakeWriter(settings), IntakeWriter(settings)
    asking.request_purge()
    after = uuid.uuid4().bytes
    other.append(after, 100, clock.now)  # accepted after the purge was asked
    run(d, clock, 1)
    assert after in d.clients[DEFAULT].stored


def test_hole3_an_unresolved_payment_stays_with_its_processor_until_its_absence_is_proven(world):
    clock, settings = world
    d = start(settings, clock)
    default, fallback = d.clients
    row = d.health[DEFAULT]
    for _ in range(breaker.THRESHOLD):  # default has been down past the patience
        breaker.record_failure(row, clock.now - 40 * S)
    row["probe_at"] = 0
    default.delay_us = 10 * S  # its delay rose just before the probe; no poll has said so yet
    writer = IntakeWriter(settings)
    payment, other = uuid.uuid4().bytes, uuid.uuid4().bytes
    default.hang.add(other)
    writer.append(payment, 100, clock.now)
    run(d, clock, breaker.PROBE_INTERVAL_US / S)  # the probe: its connection drops, the request waits inside
    writer.append(other, 100, clock.now)  # the next probe stays out
    run(d, clock, 3)
    row["min_response_ms"] = 10_000  # the next poll announces the delay
    run(d, clock, 9)
    assert not (payment in default.stored and payment in fallback.stored)


def test_hole4_an_exception_in_an_attempt_leaves_the_payment_scheduled(world):
    clock, settings = world
    d = start(settings, clock)
    d.clients[DEFAULT].raise_on_pay = True
    IntakeWriter(settings).append(uuid.uuid4().bytes, 100, clock.now)
    run(d, clock, 0)
    gevent.sleep(0)
    index = next(i for i in range(d.outbox.capacity) if int(d.entries[i]["state"]) != 0)
    scheduled = index in d.ready or any(i == index and g == d.generation[i] for _, i, g in d.later)
    assert scheduled, "the entry waits with nothing scheduled"


def test_hole5_a_422_then_404_backs_off(world):
    clock, settings = world
    d = start(settings, clock)
    default = d.clients[DEFAULT]
    default.answer = Outcome.DUPLICATE  # 422 for another reason: nothing is stored
    IntakeWriter(settings).append(uuid.uuid4().bytes, 100, clock.now)
    for _ in range(20):  # twenty passes at the same instant
        d.step()
        gevent.sleep(0)
    assert default.sent <= 2


def test_hole6_the_dedup_memory_is_bounded_per_ledger_record(world):
    clock, settings = world
    ledger = LedgerWriter(open_ledger(settings))
    for i in range(settings.ledger_capacity):
        ledger.append(uuid.uuid4().bytes, clock.now, 100, DEFAULT)
    d = service.Dispatcher(settings)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        d.recover()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert totals(open_ledger(settings), None, None).requests[DEFAULT] == settings.ledger_capacity
    assert used / settings.ledger_capacity <= 16, f"{used / settings.ledger_capacity:.0f} bytes per ledger record"


def test_hole7_a_huge_amount_is_refused_not_a_500():
    with pytest.raises(InvalidPayment):
        parse_payment(b'{"correlationId":"%s","amount":1e308}' % str(uuid.uuid4()).encode())

