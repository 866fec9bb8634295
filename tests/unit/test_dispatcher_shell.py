"""The dispatcher's gevent shell in process, with stand-in processors, and the purge
protocol between the gateway (falcon.testing) and the dispatcher over real files."""

from __future__ import annotations

import threading
import time
import uuid

import falcon.testing
import gevent

from bruto.config import Settings
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.dispatcher.service import Dispatcher
from bruto.gateway.app import create_app
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import DispatcherRegions
from bruto.shm.layout import create_all
from bruto.shm.layout import open_ledger
from bruto.shm.ledger import totals


class Processor:
    """Stores what it is sent; or raises, as a client with a bug would."""

    def __init__(self, raises=False):
        self.raises = raises
        self.stored = {}

    def pay(self, correlation_id, amount_cents, requested_at, timeout_s):
        if self.raises:
            raise RuntimeError("a bug in the client")
        if correlation_id in self.stored:
            return Outcome.DUPLICATE
        self.stored[correlation_id] = (requested_at, amount_cents)
        return Outcome.STORED

    def lookup(self, correlation_id, timeout_s=2.0):
        if self.raises:
            raise RuntimeError("a bug in the client")
        found = self.stored.get(correlation_id)
        return Stored(*found) if found else None

    def health(self):
        return None


def run(dispatcher, passes=5):
    for _ in range(passes):
        dispatcher.step()
        gevent.sleep(0)  # the greenlets carrying out the actions


def test_an_exception_in_a_client_leaves_the_payment_scheduled(tmp_path):
    regions = DispatcherRegions.in_memory(1, 16, 16, 64)
    dispatcher = Dispatcher(Settings(shm_dir=str(tmp_path)), regions=regions,
                            clients=(Processor(raises=True), Processor(raises=True)))
    dispatcher.recover()
    IntakeWriter.over(0, regions).append(uuid.uuid4().bytes, 100, 0)
    run(dispatcher)
    [entry] = [i for i, e in enumerate(regions.outbox.records) if int(e["state"]) == UNRESOLVED]
    assert entry in dispatcher.outbox.waiting()  # its lookup is scheduled
    assert dispatcher.outbox.wake_at(0) is not None


def test_a_purge_answered_503_is_never_carried_out_later(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=2, purge_timeout_s=0.05)
    create_all(settings)
    client = falcon.testing.TestClient(create_app(settings))
    processors = (Processor(), Processor())
    before = uuid.uuid4()
    assert client.simulate_post("/payments", json={"correlationId": str(before), "amount": 1}).status_code == 202
    dispatcher = Dispatcher(settings, clients=processors)
    dispatcher.recover()
    run(dispatcher)
    assert totals(open_ledger(settings), None, None).requests == (1, 0)

    answer = client.simulate_post("/purge-payments")  # the dispatcher does not run meanwhile
    assert answer.status_code == 503 and "nothing was purged" in answer.json["error"]
    after = uuid.uuid4()
    assert client.simulate_post("/payments", json={"correlationId": str(after), "amount": 1}).status_code == 202
    run(dispatcher)
    assert set(processors[DEFAULT].stored) == {before.bytes, after.bytes}
    assert totals(open_ledger(settings), None, None).requests == (2, 0)


def test_a_purge_the_dispatcher_carries_out_in_time_answers_200(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=2, purge_timeout_s=5)
    create_all(settings)
    client = falcon.testing.TestClient(create_app(settings))
    assert client.simulate_post("/payments", json={"correlationId": str(uuid.uuid4()), "amount": 1}).status_code == 202
    dispatcher = Dispatcher(settings, clients=(Processor(), Processor()))
    dispatcher.recover()
    run(dispatcher)
    stop = threading.Event()

    def dispatch():  # no payments move: the steps only carry out purges, which need no greenlet
        while not stop.is_set():
            dispatcher.step()
            time.sleep(0.001)

    worker = threading.Thread(target=dispatch)
    worker.start()
    try:
        answer = client.simulate_post("/purge-payments")
    finally:
        stop.set()
        worker.join()
    assert answer.status_code == 200
    assert totals(open_ledger(settings), None, None).requests == (0, 0)


class Holding(Processor):
    """Says every payment is a duplicate, so each is looked up at once; its lookups take a while."""

    def __init__(self):
        super().__init__()
        self.looking_up = self.most_at_once = 0

    def pay(self, correlation_id, amount_cents, requested_at, timeout_s):
        self.stored[correlation_id] = (requested_at, amount_cents)
        return Outcome.DUPLICATE

    def lookup(self, correlation_id, timeout_s=2.0):
        self.looking_up += 1
        self.most_at_once = max(self.most_at_once, self.looking_up)
        gevent.sleep(0.001)
        self.looking_up -= 1
        return super().lookup(correlation_id)


def test_a_burst_of_lookups_is_carried_out_no_more_at_once_than_the_pool_holds(tmp_path):
    regions = DispatcherRegions.in_memory(1, 64, 64, 64)
    default = Holding()
    dispatcher = Dispatcher(Settings(shm_dir=str(tmp_path), senders=8), regions=regions,
                            clients=(default, Processor()))
    dispatcher.recover()
    writer = IntakeWriter.over(0, regions)
    for _ in range(40):
        writer.append(uuid.uuid4().bytes, 100, 0)
    deadline = time.monotonic() + 20
    while dispatcher.outbox.stored < 40:
        assert time.monotonic() < deadline, "the lookups did not finish"
        run(dispatcher, passes=1)
        gevent.sleep(0.001)
    assert default.most_at_once == 8
    assert totals(regions.ledger, None, None).requests == (40, 0)
