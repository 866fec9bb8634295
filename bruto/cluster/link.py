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
"""

from __future__ import annotations

import logging

import gevent
import gevent.lock
import numpy as np

from bruto.cluster.counters import open_cluster
from bruto.cluster.database import Database
from bruto.cluster.database import Unavailable
from bruto.cluster.host import host_id
from bruto.cluster.host import host_label
from bruto.config import Settings
from bruto.shm.region import Region

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


class ClusterLink:
    """Claims and publication for one dispatcher.

    Args:
        settings: the URL and the shared directory (whose host id this host is).
        ledger: the dispatcher's ledger region.
        database: a :class:`Database` to use instead of one from ``settings`` (tests).
    """

    def __init__(self, settings: Settings, ledger: Region, database: Database | None = None):
        self.db = database or Database(settings.database_url, host_id(settings.shm_dir),
                                       host_label(settings.shm_dir), max_connections=2)
        self.counters = open_cluster(settings.shm_dir).counters
        self._ledger = ledger
        self._position: int | None = None
        self._said_down = False
        # Publication and a purge of the cluster's record take turns: rows a
        # publication read before a purge must not be inserted after it.
        self._record = gevent.lock.Semaphore()
        self.claims_failing = False  # the last claim found no database: the caller waits retry_s
        self.retry_s = RETRY_S

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
            try:
                new, before = self.db.claim([correlation_id for _, correlation_id in batch])
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
        slots = np.arange(first, last) % capacity
        columns = self._ledger.columns
        ids = [raw.tobytes() for raw in columns["correlation_id"][slots]]
        self.counters["published"] += self.db.publish(
            ids, columns["processor"][slots].tolist(), columns["amount_cents"][slots].tolist(),
            columns["requested_at"][slots].tolist(), upto=last)
        self._position = last
        self.counters["unpublished"] = count - last
        return last - first

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
            outbox.cluster_purged(slot, ticket)
            log.info("purged the cluster's record (intake slot %d, ticket %d)", slot, ticket)
        return True

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
