"""The cluster's purge epoch in PostgreSQL (schema version 5): the statements a purge on any host rests on.

A purge of the cluster's record moves the epoch on; the purging host has applied it, every other host is
behind until its shared memory applies it; the purging host's purge is reached once every live host (lease
holding) has. docs/SCALING.md ("Purges") has the protocol these statements serve and what is not wired yet.
"""

from __future__ import annotations

import time
import uuid

import psycopg

from bruto.cluster.database import Confirmations
from bruto.cluster.database import Database
from bruto.cluster.host import host_id
from bruto.cluster.link import ClusterLink
from bruto.cluster.lookup import ClusterFinder
from bruto.cluster.lookup import ClusterRecord
from bruto.cluster.summary import ClusterSummary
from bruto.config import Settings
from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import DispatcherRegions
from bruto.shm.lookup import Payment
from bruto.shm.lookup import PaymentFinder
from bruto.shm.purge import Answer
from bruto.timefmt import now_us

LEASE_MS = 60_000


def a_host(tmp_path, name: str, url: str) -> Database:
    shm = tmp_path / name
    shm.mkdir()
    return Database(url, host_id(str(shm)), name)


def lapsed(url: str, host: "Host", timeout_s: float = 30.0) -> None:
    """Wait until the database's clock is past ``host``'s lease."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute("SELECT lease_until > clock_timestamp() FROM bruto_hosts WHERE host_id = %s",
                           (host.link.db.host,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the lease never lapsed"
            time.sleep(0.02)


def claims(url: str) -> set[bytes]:
    with psycopg.connect(url) as conn:
        return {row[0].bytes for row in conn.execute("SELECT correlation_id FROM bruto_claims")}


def test_a_purge_is_reached_only_once_every_live_host_has_applied_it(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)  # both leases hold
    assert a.purge_epoch()[:2] == (0, 0) and b.purge_epoch()[:2] == (0, 0)
    before = now_us()
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    epoch, applied, purged_at = b.purge_epoch()
    assert (epoch, applied) == (1, 0)  # b's shared memory is behind the cluster's record
    assert before - 1_000_000 <= purged_at <= now_us() + 1_000_000  # the moment, in b's clock
    assert a.purge_epoch()[:2] == (1, 1)  # a applied it first (the local part comes before the record's)
    assert a.purge_reached(slot=0, ticket=1) is False  # b is live: a's purge waits for it
    b.apply_purge(epoch, upto=0, held=[])
    assert b.purge_epoch()[:2] == (1, 1)
    assert a.purge_reached(slot=0, ticket=1) is True


def test_a_host_whose_lease_lapsed_is_not_waited_for_and_finds_itself_behind(tmp_path, database_url):
    a, dead = a_host(tmp_path, "a", database_url), a_host(tmp_path, "dead", database_url)
    assert dead.renew(0, 1) and a.renew(0, LEASE_MS)  # dead's lease lapses a millisecond later
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT pg_sleep(0.01)")  # past dead's 1-ms lease, on the database's clock
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert a.purge_reached(slot=0, ticket=1) is True  # not waited for ...
    assert dead.purge_epoch()[:2] == (1, 0)  # ... and once back it is behind: it applies before it answers
    dead.apply_purge(1, upto=0, held=[])
    assert dead.purge_epoch()[:2] == (1, 1)


def test_applying_a_purge_drops_this_hosts_claims_but_what_it_still_holds(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)
    queued, out = uuid.uuid4().bytes, uuid.uuid4().bytes
    b.claim([queued, out], [100, 200], epoch=0)
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert claims(database_url) == {queued, out}  # a leaves b's unconfirmed claims to b
    b.apply_purge(1, upto=5, held=[out])  # b's purge freed the queued one; the other is out
    assert claims(database_url) == {out}
    assert b.published() == 5
    assert b.claim([queued], [100], epoch=0) == ({queued}, set())  # its id is new again


def test_two_purges_in_turn_leave_a_host_behind_on_the_other_ones(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert b.purge(slot=0, ticket=1, kept_from=0, held=[]) is True  # before it applied a's
    assert b.purge_epoch()[:2] == (2, 0)  # its own does not make it current: it still applies a's
    assert a.purge_epoch()[:2] == (2, 1)
    assert not a.purge_reached(0, 1) and not b.purge_reached(0, 1)
    a.apply_purge(2, upto=0, held=[])
    b.apply_purge(2, upto=0, held=[])
    assert a.purge_reached(0, 1) and b.purge_reached(0, 1)


def payments(url: str) -> set[bytes]:
    with psycopg.connect(url) as conn:
        return {row[0].bytes for row in conn.execute("SELECT correlation_id FROM bruto_payments")}


def test_applying_a_purge_keeps_the_rows_and_claims_of_what_was_confirmed_after_it(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)
    before, published_after, unpublished_after = (uuid.uuid4().bytes for _ in range(3))
    b.claim([before], [100], epoch=0)
    b.publish([before], [0], [100], [1_000], upto=1)
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    # b, behind, confirms two more: it publishes one of them, and one it confirmed before the purge
    # that the purge's delete did not see (published after it).
    b.claim([published_after, unpublished_after], [200, 300], epoch=0)
    b.publish([before, published_after], [0, 1], [100, 200], [1_000, 2_000], upto=3)
    assert payments(database_url) == {before, published_after}
    # It applies the purge: its ledger keeps the two confirmed after it (indexes 2 and 3 of 4).
    kept = Confirmations([published_after, unpublished_after], [1, 0], [200, 300], [2_000, 3_000])
    b.apply_purge(1, upto=4, held=[published_after, unpublished_after], kept=kept)
    assert payments(database_url) == claims(database_url) == {published_after, unpublished_after}
    assert b.published() == 4 and b.purge_epoch()[:2] == (1, 1)
    assert b.summary(None, None)[1:] == (None, [1, 1], [300, 200])  # current: every kept one, once
    b.apply_purge(1, upto=4, held=[published_after, unpublished_after], kept=kept)  # again, after a crash
    assert b.summary(None, None)[1:] == (None, [1, 1], [300, 200])


def test_the_moment_of_a_purge_is_after_its_deletes(tmp_path, database_url):
    """What another host keeps is what it confirmed after this moment: the purge's deletes saw none of it."""
    a = a_host(tmp_path, "a", database_url)
    assert a.renew(0, LEASE_MS)
    asked = now_us()
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    with psycopg.connect(database_url) as conn:
        purged_at, started = conn.execute("SELECT (extract(epoch FROM e.purged_at) * 1e6)::bigint, "
                                          "(extract(epoch FROM p.purged_at) * 1e6)::bigint "
                                          "FROM bruto_purge_epoch e, bruto_purges p").fetchone()
    assert started < purged_at  # (bruto_purges.purged_at: the transaction's start, its first statement)
    assert asked - 1_000_000 < a.purge_epoch()[2] < now_us() + 1_000_000


# -- two hosts' outboxes and links, in process, on the real database ---------------------------------------


class Host:
    """One host's regions, outbox, link (claims, publication, lease, purges) and summary, in process."""

    def __init__(self, tmp_path, name: str, url: str, lease_s: float = 60.0):
        shm = tmp_path / name
        shm.mkdir()
        self.settings = Settings(shm_dir=str(shm), database_url=url, host_lease_s=lease_s)
        self.regions = DispatcherRegions.in_memory(1, 16, 16, 64)
        r = self.regions
        self.writer = IntakeWriter.over(0, r)
        self.finder = PaymentFinder(r.intake, r.dispatch, r.outbox, r.ledger, r.index, r.rejected)
        self.outbox = Outbox(r, routing.Policy(patience_us=30_000_000), claiming=True)
        self.outbox.recover(now_us())
        for processor in (DEFAULT, FALLBACK):
            self.outbox.health_reported(processor, Health(False, 0), now_us(), now_us())
        self.link = ClusterLink(self.settings, r.ledger)
        self.summary = ClusterSummary(self.settings, r.ledger)
        self.cluster_finder = ClusterFinder(ClusterRecord(url), self.link.db.host, name)

    def confirm(self, publish: bool = True) -> bytes:
        """A payment accepted, claimed, sent, stored and (unless not ``publish``) published."""
        correlation_id = uuid.uuid4().bytes
        self.writer.append(correlation_id, 1990, now_us())
        self.outbox.drain(now_us())
        self.link.claim(self.outbox)
        [send] = [a for a in self.outbox.poll(now_us()) if isinstance(a, Send)]
        self.outbox.attempt_done(send, Outcome.STORED, now_us(), 1000)
        if publish:
            self.link.publish_once()
        return correlation_id

    def ask_purge(self) -> int:
        ticket = self.writer.purges.request(deadline=now_us() + 5_000_000)
        for slot in self.outbox.pending_purges(now_us()):
            self.outbox.purge(slot, now_us())
        return ticket

    def held(self, correlation_id: bytes) -> bool:
        return isinstance(self.finder.find(correlation_id), Payment)

    def totals(self) -> tuple[int, int]:
        return self.summary.totals(None, None).requests

    def lookup(self, correlation_id: bytes) -> int:
        """GET /payments/{id}'s status on this host, as the route decides it (bruto.gateway.app PaymentState)."""
        current = now_us() < int(self.link.counters["purges_current_until"])
        return self.cluster_finder.answer(correlation_id, self.finder.find(correlation_id), current).status


def test_a_purge_on_one_host_is_done_once_the_other_live_host_has_emptied_its_shared_memory(tmp_path, database_url):
    a, b = Host(tmp_path, "a", database_url), Host(tmp_path, "b", database_url)
    a.link.hold_lease(a.outbox)
    b.link.hold_lease(b.outbox)
    on_a, on_b = a.confirm(), b.confirm()
    assert a.totals() == b.totals() == (2, 0) and b.held(on_b)

    ticket = a.ask_purge()
    assert a.link.purge(a.outbox) is False  # b is live and has not applied it: no 200 yet
    assert not a.writer.purges.done(ticket)
    assert b.lookup(on_b) == 200  # concurrent with a purge not answered yet: either is true
    b.link.hold_lease(b.outbox)  # b's next renewal applies it before it lets anything be sent
    assert not b.held(on_b) and b.totals() == (0, 0) and b.lookup(on_b) == 404
    assert a.link.purge(a.outbox) is True and a.writer.purges.done(ticket)  # the 200
    assert a.totals() == (0, 0) and not a.held(on_a)
    again = b.confirm()  # an id after the purge is new again, and counts
    assert a.totals() == b.totals() == (1, 0) and b.held(again)


def test_a_purge_while_a_host_is_dead_is_done_at_once_and_applied_by_it_before_it_sends_or_counts(tmp_path,
                                                                                                   database_url):
    a = Host(tmp_path, "a", database_url)
    b = Host(tmp_path, "b", database_url, lease_s=0.2)
    a.link.hold_lease(a.outbox)
    b.link.hold_lease(b.outbox)
    on_b = b.confirm()
    unpublished = uuid.uuid4().bytes  # confirmed by b, not published before it died
    b.writer.append(unpublished, 500, now_us())
    b.outbox.drain(now_us())
    b.link.claim(b.outbox)
    [send] = [x for x in b.outbox.poll(now_us()) if isinstance(x, Send)]
    b.outbox.attempt_done(send, Outcome.STORED, now_us(), 1000)
    lapsed(database_url, b)  # b is dead: its lease lapses
    assert b.totals() == (2, 0)

    ticket = a.ask_purge()
    assert a.link.purge(a.outbox) is True and a.writer.purges.done(ticket)  # a lapsed host is not waited for
    assert a.totals() == (0, 0)
    # b back, before its dispatcher's first renewal: its summary counts nothing of its ledger, and
    # its lookups answer nothing from its shared memory.
    assert b.totals() == (0, 0)
    assert b.held(on_b) and b.lookup(on_b) == 503 and b.lookup(unpublished) == 503
    b.link.hold_lease(b.outbox)  # its first renewal applies the purge before anything is sent
    assert not b.held(on_b) and not b.held(unpublished)
    assert b.lookup(on_b) == 404 and b.lookup(unpublished) == 404
    b.link.publish_once()
    assert a.totals() == b.totals() == (0, 0)
    assert b.outbox.may_send(now_us())


def test_a_purge_answered_503_moves_no_epoch_and_empties_no_host(tmp_path, database_url):
    a, b = Host(tmp_path, "a", database_url), Host(tmp_path, "b", database_url)
    a.link.hold_lease(a.outbox)
    b.link.hold_lease(b.outbox)
    on_b = b.confirm()
    assert a.writer.purges.ask(0.01, sleep=lambda _: None) is Answer.CANCELLED  # no dispatcher step: 503
    for slot in a.outbox.pending_purges(now_us()):  # the dispatcher, back within the ticket's deadline
        a.outbox.purge(slot, now_us())
    assert a.link.purge(a.outbox) is True  # nothing to carry out
    b.link.hold_lease(b.outbox)
    assert b.held(on_b) and a.totals() == b.totals() == (1, 0)
    assert b.link.db.purge_epoch()[:2] == (0, 0)


def test_a_host_applying_a_purge_keeps_and_counts_what_it_confirmed_after_the_commit(tmp_path, database_url):
    a, b = Host(tmp_path, "a", database_url), Host(tmp_path, "b", database_url)
    a.link.hold_lease(a.outbox)
    b.link.hold_lease(b.outbox)
    before = b.confirm()
    ticket = a.ask_purge()
    assert a.link.purge(a.outbox) is False  # committed; b is live and has not applied it
    published_after = b.confirm()  # b goes on between a's commit and its next renewal
    unpublished_after = b.confirm(publish=False)
    # b is behind: its summary counts what it confirmed after the commit, published or not, and
    # nothing from before; a counts what b has published.
    assert b.totals() == (2, 0) and a.totals() == (1, 0)
    b.link.hold_lease(b.outbox)  # it applies the purge
    assert not b.held(before) and b.lookup(before) == 404
    assert b.held(published_after) and b.held(unpublished_after)
    assert b.lookup(published_after) == b.lookup(unpublished_after) == 200
    assert a.totals() == b.totals() == (2, 0)  # both in the cluster's record now
    assert claims(database_url) == {published_after, unpublished_after}  # neither can be claimed again
    assert a.link.purge(a.outbox) is True and a.writer.purges.done(ticket)
    assert b.link.publish_once() == 0  # nothing is published twice
    assert a.totals() == b.totals() == (2, 0)
