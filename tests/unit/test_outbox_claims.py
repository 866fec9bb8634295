"""The outbox of one host among many (bruto.cluster): nothing is sent before it is claimed.

Two hosts, each its own regions and outbox, decide claims through one claim
table kept here as the database keeps it (correlationId -> host, first claim
wins, a host's own claim answered again as its own); the real database's
statement is tested in tests/cluster.
"""

from __future__ import annotations

import uuid

from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Lookup
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import FREE
from bruto.shm.layout import QUEUED
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import DispatcherRegions
from bruto.shm.ledger import totals
from bruto.shm.rejected import RejectedWriter

S = 1_000_000
T0 = 1_700_000_000 * S
POLICY = routing.Policy(patience_us=30 * S)


class Host:
    def __init__(self, name: str, claims: dict[bytes, str], claiming: bool = True):
        self.name, self.claims, self.claiming = name, claims, claiming
        self.now = T0
        self.regions = DispatcherRegions.in_memory(1, 16, 16, 64)
        self.writer = IntakeWriter.over(0, self.regions)
        self.restart()

    def restart(self):
        self.outbox = Outbox(self.regions, POLICY, claiming=self.claiming)
        self.outbox.recover(self.now)
        if self.claiming:
            self.outbox.send_until = self.now + 3600 * S  # this host's lease holds (bruto.cluster.link)
        self.outbox.health_reported(DEFAULT, Health(False, 0), self.now, self.now)

    def accept(self, correlation_id: bytes) -> None:
        self.writer.append(correlation_id, 1990, self.now)

    def claim(self) -> int:
        """One claim statement over what waits for one; returns how many another host had."""
        batch = self.outbox.to_claim(limit=1000)
        mine = {cid for _, cid in batch if self.claims.setdefault(cid, self.name) == self.name}
        return self.outbox.claimed(batch, mine)

    def step(self, claim=True) -> list[Send]:
        self.now += 1000
        self.outbox.drain(self.now)
        if claim:
            self.claim()
        return [action for action in self.outbox.poll(self.now) if isinstance(action, Send)]

    def state(self, correlation_id: bytes) -> int:
        for entry in self.regions.outbox.records:
            if entry["correlation_id"].tobytes() == correlation_id and int(entry["state"]) != FREE:
                return int(entry["state"])
        return FREE


def test_nothing_is_sent_until_claimed_and_then_only_what_this_host_claimed():
    claims: dict[bytes, str] = {}
    a, b = Host("a", claims), Host("b", claims)
    shared, only_b = uuid.uuid4().bytes, uuid.uuid4().bytes
    a.accept(shared)
    b.accept(shared)
    b.accept(only_b)
    assert a.step(claim=False) == [] and b.step(claim=False) == []  # the database is away: nothing goes
    assert a.state(shared) == QUEUED and a.outbox.waiting()  # still held, with something to wait for
    [sent_by_a] = a.step()
    assert sent_by_a.correlation_id == shared
    b.outbox.drain(b.now)
    assert b.claim() == 1  # a claimed it first: a duplicate here
    [sent_by_b] = b.step()
    assert sent_by_b.correlation_id == only_b
    assert b.state(shared) == FREE and b.regions.outbox.counters["in_use"] == 1
    b.accept(shared)  # posted to b again: claimed by a still, dropped again
    assert b.step() == []
    assert int(b.regions.dispatch.counters["duplicates_dropped"]) == 2


def test_after_a_crash_queued_payments_are_claimed_again_and_resumed_as_this_hosts_own():
    claims: dict[bytes, str] = {}
    a = Host("a", claims)
    first, second = uuid.uuid4().bytes, uuid.uuid4().bytes
    a.accept(first)
    [send] = a.step()  # first: claimed, sent, then its answer is a 500: queued again, claimed
    a.outbox.attempt_done(send, Outcome.FAILED, a.now, 1000)
    a.accept(second)
    a.outbox.drain(a.now)
    a.claim()  # second claimed, and the host crashes before sending it
    a.restart()
    assert sorted(cid for _, cid in a.outbox.to_claim(10)) == sorted([first, second])
    assert a.claim() == 0  # both answered as this host's own
    a.now += 1 * S
    resent = {send.correlation_id for send in a.step()}
    assert resent == {first, second}


def test_a_payment_out_when_the_host_crashes_is_resolved_not_claimed_again():
    a = Host("a", {})
    payment = uuid.uuid4().bytes
    a.accept(payment)
    [send] = a.step()
    a.restart()
    assert a.state(payment) == UNRESOLVED and a.outbox.to_claim(10) == []


def test_without_claiming_the_outbox_sends_at_once_and_keeps_nothing_to_claim():
    a = Host("a", {}, claiming=False)
    payment = uuid.uuid4().bytes
    a.accept(payment)
    [send] = a.step(claim=False)
    assert send.correlation_id == payment and a.outbox.to_claim(10) == []
    a.outbox.attempt_done(send, Outcome.STORED, a.now, 1000)
    assert totals(a.regions.ledger, None, None).requests == (1, 0)


def test_a_purge_while_a_claim_is_out_leaves_the_payment_accepted_after_it_waiting_for_its_own_claim():
    a = Host("a", {})
    purged = uuid.uuid4().bytes
    a.accept(purged)
    a.outbox.drain(a.now)
    batch = a.outbox.to_claim(10)  # the claim statement goes out ...
    ticket = a.writer.purges.request(deadline=a.now + 5 * S)
    for slot in a.outbox.pending_purges(a.now):
        a.outbox.purge(slot, a.now)  # ... a purge frees the entry meanwhile ...
    [(slot, claimed_ticket, _, _)] = a.outbox.cluster_purges()
    a.outbox.cluster_purged(slot, claimed_ticket)
    assert a.writer.purges.done(ticket)
    later = uuid.uuid4().bytes
    a.accept(later)
    a.outbox.drain(a.now)  # ... and a new payment takes it
    assert [cid for _, cid in a.outbox.to_claim(10)] == [later]
    assert a.outbox.claimed(batch, {purged}) == 0  # the answer for the purged one decides nothing now
    assert [cid for _, cid in a.outbox.to_claim(10)] == [later]
    assert [send.correlation_id for send in a.step()] == [later]


def test_a_purge_is_done_only_once_the_clusters_record_is_purged_too_even_across_a_crash():
    a = Host("a", {})
    out, kept = uuid.uuid4().bytes, uuid.uuid4().bytes
    a.accept(out)
    [send] = a.step()  # out to a processor when the purge comes: its claim must stay
    ticket = a.writer.purges.request(deadline=a.now + 5 * S)
    a.outbox.purge(0, a.now)
    assert not a.writer.purges.done(ticket) and a.outbox.cluster_purge_pending
    a.restart()  # a crash before the cluster's part: recovery finds it still to do
    a.accept(kept)
    a.step()
    [(slot, claimed, kept_from, held)] = a.outbox.cluster_purges()
    assert (slot, claimed, kept_from) == (0, ticket, 0) and set(held) == {out, kept}
    a.outbox.cluster_purged(slot, claimed - 1)  # an older ticket's answer settles nothing
    assert not a.writer.purges.done(ticket)
    a.outbox.cluster_purged(slot, claimed)
    assert a.writer.purges.done(ticket) and not a.outbox.cluster_purge_pending
    assert int(a.regions.dispatch.counters["purges"]) == 1


# -- leases and takeovers (bruto.cluster.link) --------------------------------------


def taken_over(host: Host, correlation_id: bytes) -> None:
    """A payment another host's lease held, handed over 2 s after that lease lapsed; both processors
    have answered a service-health call since."""
    host.outbox.health_reported(FALLBACK, Health(False, 0), host.now, host.now)
    assert host.outbox.adopt([(correlation_id, 1990, host.now - 2 * S)], delay_ms=0) == [correlation_id]
    assert host.state(correlation_id) == UNRESOLVED and host.outbox.to_claim(10) == []


def test_a_payment_taken_over_is_looked_up_on_both_processors_before_it_may_go_anywhere():
    b = Host("b", {})
    taken = uuid.uuid4().bytes
    taken_over(b, taken)
    [lookup] = b.outbox.poll(b.now)
    assert isinstance(lookup, Lookup) and lookup.processor == DEFAULT
    b.outbox.lookup_done(lookup, None, b.now)  # 404 with absence proven: but fallback may have it
    [lookup] = b.outbox.poll(b.now)
    assert isinstance(lookup, Lookup) and lookup.processor == FALLBACK
    b.outbox.lookup_done(lookup, None, b.now)  # absent there too: now it may go anywhere
    [send] = b.outbox.poll(b.now)
    assert isinstance(send, Send) and (send.correlation_id, send.amount_cents) == (taken, 1990)


def test_a_payment_taken_over_and_found_stored_is_confirmed_as_stored_and_never_sent():
    b = Host("b", {})
    taken = uuid.uuid4().bytes
    taken_over(b, taken)
    [lookup] = b.outbox.poll(b.now)
    b.outbox.lookup_done(lookup, None, b.now)
    [lookup] = b.outbox.poll(b.now)
    b.outbox.lookup_done(lookup, Stored(b.now - 3 * S, 1990), b.now)  # the lost host's request, stored
    assert totals(b.regions.ledger, None, None).requests == (0, 1)
    assert b.state(taken) == FREE and b.step() == []


def test_a_payment_taken_over_that_this_host_had_accepted_too_is_looked_up_not_claimed():
    b = Host("b", {})
    shared = uuid.uuid4().bytes
    b.accept(shared)
    b.outbox.drain(b.now)  # waiting for its claim ...
    taken_over(b, shared)  # ... when the takeover gives it to this host
    assert b.regions.outbox.counters["in_use"] == 1
    [lookup] = b.outbox.poll(b.now)
    assert isinstance(lookup, Lookup) and lookup.correlation_id == shared


def test_a_host_whose_payments_were_taken_over_drops_them_and_sends_none():
    a = Host("a", {})
    out, waiting = uuid.uuid4().bytes, uuid.uuid4().bytes
    a.accept(out)
    [send] = a.step()
    a.outbox.send_until = a.now  # its lease lapsed: nothing more goes out
    a.accept(waiting)
    assert a.step() == []  # claimed, not sent
    checked = a.outbox.claimed_entries()
    assert sorted(cid for _, cid in checked) == sorted([out, waiting])
    assert a.outbox.fenced(checked, {out, waiting}) == 2  # another host has them now
    a.outbox.send_until = a.now + 3600 * S  # reconciled: its lease holds again
    a.outbox.attempt_done(send, Outcome.UNKNOWN, a.now, 1000)  # the answer of the one out changes nothing
    a.now += 10 * S
    assert a.step() == [] and a.outbox.poll(a.now) == [] and a.regions.outbox.counters["in_use"] == 0


def test_an_unresolved_payment_taken_over_by_another_host_is_never_looked_up_here_again():
    a = Host("a", {})
    payment = uuid.uuid4().bytes
    a.accept(payment)
    [send] = a.step()
    a.outbox.attempt_done(send, Outcome.UNKNOWN, a.now, 1000)
    assert a.state(payment) == UNRESOLVED
    a.outbox.send_until = a.now  # its lease lapsed, and another host took the payment over
    assert a.outbox.fenced(a.outbox.claimed_entries(), {payment}) == 1
    a.outbox.send_until = a.now + 3600 * S
    a.now += 60 * S
    assert a.outbox.poll(a.now) == [] and a.state(payment) == FREE


def test_a_send_caught_by_its_lease_lapsing_is_queued_again():
    a = Host("a", {})
    payment = uuid.uuid4().bytes
    a.accept(payment)
    [send] = a.step()
    a.outbox.withheld(send, a.now)  # the shell found the lease lapsed just before writing it
    assert a.state(payment) == QUEUED and a.outbox.in_flight == (0, 0)
    [again] = a.step()
    assert again.correlation_id == payment


# -- a purge asked on another host (bruto.shm.purge drop_before) -----------------------


def test_a_purge_asked_elsewhere_drops_what_was_confirmed_by_its_moment_and_keeps_what_came_after():
    a = Host("a", {})
    early, late, out_stored, out_failed, undrained, newer = (uuid.uuid4().bytes for _ in range(6))
    a.accept(early)
    [send_early] = a.step()
    a.outbox.attempt_done(send_early, Outcome.STORED, a.now, 1000)  # confirmed before the purge
    a.accept(late)
    [send_late] = a.step()  # out when the purge commits, stored after it
    a.accept(out_stored)
    a.accept(out_failed)
    a.step(claim=False)  # queued when the purge commits, sent after it
    a.accept(undrained)  # in intake when the purge commits, and still when it is applied
    moment = a.now
    a.now += 1000
    a.outbox.attempt_done(send_late, Outcome.STORED, a.now, 1000)
    a.claim()
    sends = {send.correlation_id: send for send in a.outbox.poll(a.now)}
    assert set(sends) == {out_stored, out_failed}
    a.accept(newer)  # after the purge

    first, count, held = a.outbox.apply_cluster_purge(moment, a.now)
    assert (first, count) == (1, 2)  # the ledger keeps `late`, confirmed after the moment
    assert set(held) == {late, out_stored, out_failed}  # what it holds: their claims stay
    a.now += 1000
    a.outbox.attempt_done(sends[out_stored], Outcome.STORED, a.now, 1000)  # out at the purge: kept, stored
    a.outbox.attempt_done(sends[out_failed], Outcome.FAILED, a.now, 1000)  # out at the purge: gone, not sent again
    assert [send.correlation_id for send in a.step()] == [newer]  # not `undrained`, nor `out_failed` again
    ledger = a.regions.ledger
    kept = {ledger.columns["correlation_id"][slot].tobytes() for slot in range(2, 3)}
    assert totals(ledger, None, None).requests == (2, 0) and kept == {out_stored}
    assert a.state(out_failed) == FREE


def test_a_purge_asked_elsewhere_keeps_the_rejections_made_after_its_moment():
    regions = DispatcherRegions.in_memory(1, 16, 16, 64)
    rejected = RejectedWriter(regions.rejected)
    for n, at in enumerate((T0, T0 + 10, T0 + 20)):
        rejected.append(bytes([n]) * 16, 100, at, DEFAULT, rejected_at=at)
    rejected.purge(up_to=T0 + 10)
    assert int(regions.rejected.counters["start"]) == 2
    rejected.purge(up_to=T0)  # never backwards
    assert int(regions.rejected.counters["start"]) == 2
    rejected.purge()
    assert int(regions.rejected.counters["start"]) == 3
