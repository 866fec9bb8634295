"""The purge protocol's asking side end to end (bruto.shm.purge): what POST /purge-payments answers.

The dispatcher's side runs in the worker's waits: the ``sleep`` a waiting
worker calls is where the test lets the dispatcher take its step (or not), so
each answer comes from a fixed interleaving, never from timing.
"""

from __future__ import annotations

import uuid

from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outcomes import Outcome
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DispatcherRegions
from bruto.shm.ledger import LedgerWriter
from bruto.shm.purge import Answer
from bruto.timefmt import now_us

POLICY = routing.Policy(patience_us=30_000_000)
# Long enough that a worker whose dispatcher answers never reaches it; short enough
# that the ones whose dispatcher never answers give up at once.
GIVES_UP_S = 0.02
WAITS_S = 60.0


class World:
    def __init__(self, claiming=False):
        self.regions = DispatcherRegions.in_memory(2, 16, 16, 64)
        self.writer = IntakeWriter.over(0, self.regions)
        self.outbox = Outbox(self.regions, POLICY, claiming=claiming)
        self.outbox.recover(now_us())

    def confirmed_payment(self):
        self.writer.append(uuid.uuid4().bytes, 1990, now_us())
        self.outbox.drain(now_us())
        [send] = self.outbox.poll(now_us())
        self.outbox.attempt_done(send, Outcome.STORED, now_us(), 1000)

    def dispatcher_step(self, _pause=0.0, now=None):
        now = now_us() if now is None else now
        for slot in self.outbox.pending_purges(now):
            self.outbox.purge(slot, now)

    def ledger_size(self):
        return sum(part.stop - part.start for part in LedgerWriter(self.regions.ledger).retained())


def test_a_purge_the_dispatcher_carries_out_is_answered_200():
    world = World()
    world.confirmed_payment()
    assert world.writer.purges.ask(WAITS_S, sleep=world.dispatcher_step) is Answer.PURGED
    assert world.ledger_size() == 0


def test_a_purge_answered_503_is_never_carried_out_by_a_dispatcher_that_comes_later():
    world = World()
    world.confirmed_payment()
    assert world.writer.purges.ask(GIVES_UP_S, sleep=lambda _: None) is Answer.CANCELLED  # no dispatcher
    before_deadline = int(world.regions.intake[0].counters["purge_deadline"]) - 1
    world.dispatcher_step(now=before_deadline)  # it comes back, within the ticket's deadline
    world.outbox = Outbox(world.regions, POLICY)  # or restarts
    world.outbox.recover(before_deadline)
    world.dispatcher_step(now=before_deadline)
    assert world.ledger_size() == 1


def test_a_purge_committed_but_not_finished_in_time_is_answered_202_and_ends_when_it_can():
    # Many hosts: the purge is done once the cluster's record is purged too, which here never answers.
    world = World(claiming=True)
    asked = world.writer.purges.ask(GIVES_UP_S, sleep=world.dispatcher_step)
    assert asked is Answer.COMMITTED and not world.writer.purges.cancel(1)
    [(slot, ticket, _, _)] = world.outbox.cluster_purges()
    world.outbox.cluster_purged(slot, ticket)  # the database is back
    assert world.writer.purges.done(ticket)
