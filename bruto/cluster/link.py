"""The dispatcher's side of the cluster: claim before send, publish what was confirmed.

- :meth:`ClusterLink.claim`, run by the dispatcher's claimer greenlet after
  each drain that brought payments, claims what the outbox holds unclaimed in one statement per batch
  and tells the outbox which ids are this host's (bruto.dispatcher.outbox:
  ``to_claim``/``claimed``). While the database is unreachable nothing is
  claimed, so nothing new is sent; intake and the outbox keep accepting.
- :meth:`ClusterLink.run_publisher`, a greenlet, tails the ledger from this
  host's position in ``bruto_hosts`` and inserts what it finds into
  ``bruto_payments`` with the new position, in one transaction. A crash
  between a ledger append and its publication republishes from the position
  the database kept; the insert ignores an id already there, so nothing
  counts twice.
- :meth:`ClusterLink.hold_lease`, run by the dispatcher's lease greenlet
  every ``lease_s / 4``, renews this host's lease (``bruto_hosts``) and sets
  how long the outbox may send (``Outbox.send_until``): three quarters of the
  lease from when the renewal was asked, so a host that cannot renew stops
  sending well before its lease lapses in the database. The first renewal of
  a dispatcher, and the first after a takeover, reconciles: the payments the
  outbox holds that another host has taken over are dropped before anything
  is sent. Then, holding its lease, this host takes over a lost host's
  unconfirmed claims (:meth:`ClusterLink.take_over`).
"""

from __future__ import annotations

import logging

import gevent
import gevent.lock
import numpy as np

from bruto.cluster.counters import open_cluster
from bruto.cluster.database import Confirmations
from bruto.cluster.database import Database
from bruto.cluster.database import Fenced
from bruto.cluster.database import Unavailable
from bruto.cluster.host import host_id
from bruto.cluster.host import host_label
from bruto.config import Settings
from bruto.dispatcher.outbox import LOOKUP_MARGIN_US
from bruto.shm.region import Region
from bruto.timefmt import now_us

log = logging.getLogger("bruto.cluster")

# Ids per claim statement, and confirmations per publication: a drain at the
# official load brings tens; these bound one statement after an outage.
CLAIM_BATCH = 4096
PUBLISH_BATCH = 4096
# How often the publisher looks at the ledger: other hosts' summaries see a
# confirmation this much later, at most, plus the commit (this host's own
# summary adds what is not published yet: bruto.cluster.summary).
PUBLISH_INTERVAL_S = 0.05
# After a failed statement, the wait before the next try.
RETRY_S = 0.5
# Taken-over payments handed to the outbox per statement.
TAKEN_BATCH = 4096


class ClusterLink:
    """Claims and publication for one dispatcher.

    Args:
        settings: the URL and the shared directory (whose host id this host is).
        ledger: the dispatcher's ledger region.
        database: a :class:`Database` to use instead of one from ``settings`` (tests).
    """

    def __init__(self, settings: Settings, ledger: Region, database: Database | None = None):
        self.db = database or Database(settings.database_url, host_id(settings.shm_dir),
                                       host_label(settings.shm_dir), max_connections=3)
        self.counters = open_cluster(settings.shm_dir).counters
        self._ledger = ledger
        self._position: int | None = None
        self._said_down = False
        # Publication and a purge of the cluster's record take turns: rows a
        # publication read before a purge must not be inserted after it.
        self._record = gevent.lock.Semaphore()
        self.claims_failing = False  # the last claim found no database: the caller waits retry_s
        self.retry_s = RETRY_S
        self.lease_us = int(settings.host_lease_s * 1_000_000)
        self.renew_every_s = settings.host_lease_s / 4
        # The lease's epoch this dispatcher holds; None until it has reconciled (at start, and after
        # a takeover): nothing is claimed meanwhile.
        self.epoch: int | None = None

    # -- claims ------------------------------------------------------------------

    def claim(self, outbox) -> None:
        """Claim what the outbox holds unclaimed (what another host has is dropped there).

        When the database cannot say, those payments wait, ``claims_failing``
        says so, and the caller tries again after ``retry_s``.
        """
        self.claims_failing = False
        while True:
            batch = outbox.to_claim(CLAIM_BATCH)
            if not batch:
                return
            if self.epoch is None:  # no lease yet, or taken over: the next renewal reconciles first
                self.claims_failing = True
                return
            try:
                new, before = self.db.claim([correlation_id for _, correlation_id in batch],
                                            outbox.amounts(batch), self.epoch)
            except Fenced:
                self.claims_failing = True
                return
            except Unavailable as error:
                self.counters["claim_errors"] += 1
                self._down("claim", error)
                self.claims_failing = True
                return
            self._up()
            self.counters["claims"] += 1
            self.counters["claimed"] += len(new)
            self.counters["resumed"] += len(before)
            dropped = outbox.claimed(batch, new | before)
            if dropped:
                self.counters["cross_host_duplicates"] += dropped
                log.info("%d payment(s) claimed by another host: dropped here", dropped)
            if len(batch) < CLAIM_BATCH:
                return

    # -- the lease, and takeovers ---------------------------------------------------

    def hold_lease(self, outbox) -> None:
        """Renew this host's lease (reconciling first when it must), then take over a lost host.

        While the database does not answer, the lease is not renewed, and the
        outbox stops sending when the last renewal's window ends.
        """
        try:
            asked_at = now_us()
            if self.epoch is not None and not self.db.renew(self.epoch, self.lease_us // 1000):
                log.warning("another host took this host's lease over: sending stops until it has reconciled")
                self.epoch = None
                outbox.send_until = 0
            if self.epoch is None:
                asked_at = now_us()
                checked = outbox.claimed_entries()
                epoch, others = self.db.reconcile([correlation_id for _, correlation_id in checked],
                                                  self.lease_us // 1000)
                dropped = outbox.fenced(checked, others)
                if dropped:
                    self.counters["fenced"] += dropped
                    log.warning("%d payment(s) were taken over by another host: dropped here", dropped)
                self.epoch = epoch
            self.keep_current(outbox)  # before anything is sent on this renewal: purges asked elsewhere
            outbox.send_until = asked_at + self.lease_us * 3 // 4
            # As long as the lease holds with a margin: a purge committed later waits for this host
            # until it has applied it, or until its lease lapsed, after this moment.
            self.counters["purges_current_until"] = outbox.send_until
            self.counters["lease_held"] = 1
            self.counters["renewals"] += 1
            self._up()
            self.take_over(outbox)
        except Unavailable as error:
            self.counters["lease_errors"] += 1
            self._down("lease", error)
        if not outbox.may_send(now_us()):
            self.counters["lease_held"] = 0

    def take_over(self, outbox) -> None:
        """Take over one lost host's unconfirmed claims, and hand what this host was given to its outbox.

        A host is lost once its lease lapsed more than the largest delay the
        processors have shown plus the lookup margin ago; its payments come
        into the outbox as lookups on both processors (it may have sent each
        to either) as of the moment its lease lapsed, so none is sent again
        before both have answered 404 with absence proven.
        """
        delay_ms = outbox.largest_delay_ms()
        lost = self.db.take_over(delay_ms + LOOKUP_MARGIN_US // 1000)
        if lost is not None and lost[1]:  # (a host that claimed nothing is fenced all the same)
            host, moved = lost
            self.counters["takeovers"] += 1
            log.warning("took over host %s (its lease lapsed): %d unconfirmed payment(s)", host, moved)
        while True:
            rows, db_now = self.db.taken(TAKEN_BATCH)
            if not rows:
                return
            local = now_us()  # after the answer: the database's moments map no earlier than they were
            adopted = outbox.adopt([(correlation_id, cents, local + lapsed - db_now)
                                    for correlation_id, cents, lapsed in rows], delay_ms)
            self.counters["taken_over"] += len(adopted)
            if not adopted:
                return  # the outbox is full: the rest wait for the next round
            self.db.adopted(adopted)
            if len(rows) < TAKEN_BATCH:
                return

    # -- publication -------------------------------------------------------------

    def publish_once(self) -> int:
        """Publish the next confirmations of the ledger (at most PUBLISH_BATCH); returns how many."""
        with self._record:
            return self._publish_once()

    def _publish_once(self) -> int:
        if self._position is None:
            self._position = self.db.published()
        counters = self._ledger.counters
        count = int(counters["count"])  # the publication counter first (bruto.shm.region)
        capacity = self._ledger.capacity
        # Records below the ledger's start were purged; below count - capacity, overwritten.
        first = max(self._position, int(counters["start"]), count - capacity)
        last = min(count, first + PUBLISH_BATCH)
        self.counters["unpublished"] = count - first
        if last <= first:
            if first > self._position:  # a purge moved the start past the position
                self.db.publish([], [], [], [], upto=first)
                self._position = first
            return 0
        self.counters["published"] += self.db.publish(*self._records(first, last), upto=last)
        self._position = last
        self.counters["unpublished"] = count - last
        return last - first

    def _records(self, first: int, last: int) -> Confirmations:
        """The ledger's records ``first`` to ``last - 1``, as the cluster's record takes them."""
        slots = np.arange(first, last) % self._ledger.capacity
        columns = self._ledger.columns
        return Confirmations([raw.tobytes() for raw in columns["correlation_id"][slots]],
                             columns["processor"][slots].tolist(), columns["amount_cents"][slots].tolist(),
                             columns["requested_at"][slots].tolist())

    # -- purges ------------------------------------------------------------------

    def purge(self, outbox) -> bool:
        """Carry out the cluster's part of the purges the outbox carried out here; False: the database
        could not be reached, and they wait (the purge is committed: it ends when it is back)."""
        for slot, ticket, kept_from, held in outbox.cluster_purges():
            try:
                with self._record:
                    self.db.purge(slot, ticket, kept_from, held)
                    self._position = kept_from  # what was confirmed after the request is published again
            except Unavailable as error:
                self._down("purge", error)
                return False
            self._up()
            if not self.db.purge_reached(slot, ticket):
                return False  # a live host has not applied it yet: the caller asks again
            outbox.cluster_purged(slot, ticket)
            log.info("purged the cluster's record and every live host (intake slot %d, ticket %d)", slot, ticket)
        return True

    def keep_current(self, outbox) -> None:
        """Apply to this host's shared memory the purges asked on other hosts since it last did.

        Run at every lease renewal, before the renewal lets the outbox send:
        a host back from the dead applies them before it sends anything. The
        purging host waits for every live host to have applied its purge
        before it answers 200 (:meth:`purge`). What this host confirmed after
        the purge's moment stays, in its ledger and in the cluster's record.
        Those records are few: a host sends only within the window of its
        last renewal, which checked the epoch first, so they are at most what
        one renewal interval confirms (one send window, if renewals failed).
        """
        epoch, applied, moment = self.db.purge_epoch()
        if applied >= epoch:
            return
        with self._record:  # no publication between the local part and the record's
            first, count, held = outbox.apply_cluster_purge(moment, now_us())
            self.db.apply_purge(epoch, count, held, self._records(first, count))
            self._position = count
        log.info("applied the cluster's purges up to epoch %d (asked on other hosts)", epoch)

    def run_publisher(self) -> None:
        """The publisher's greenlet: forever, every PUBLISH_INTERVAL_S (at once while there is more)."""
        while True:
            try:
                moved = self.publish_once()
            except Unavailable as error:
                self.counters["publish_errors"] += 1
                self._down("publish", error)
                gevent.sleep(RETRY_S)
                continue
            self._up()
            gevent.sleep(0 if moved == PUBLISH_BATCH else PUBLISH_INTERVAL_S)

    # -- the database's state, logged once per change ---------------------------------

    def _down(self, what: str, error: Exception) -> None:
        if not self._said_down:
            self._said_down = True
            log.warning("PostgreSQL unavailable (%s): %s; nothing new is sent until it is back", what, error)
        self.counters["db_up"] = 0

    def _up(self) -> None:
        if self._said_down:
            self._said_down = False
            log.info("PostgreSQL reachable again")
        self.counters["db_up"] = 1
