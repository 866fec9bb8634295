"""One service-health poller per cluster, elected through PostgreSQL.

The processors allow one service-health call per 5 s window for all callers
together, so of N hosts one polls: the host whose dispatcher holds a
session-level advisory lock on a connection of its own. It writes each
report to ``bruto_health``; the others read that table every
FOLLOW_INTERVAL_S and fold each new report into their outbox as if they had
polled (``Outbox.health_reported``: the call's moment is what proves absence,
whoever made it). When the poller dies its connection closes and the lock
with it; another host takes it at its next try and first respects the window
the last report opened.

While this host cannot reach the database it polls for itself, as a host on
its own does: without reports, absence could never be proven and lookups
would wait; a second poller costs at most a 429, which the poller obeys.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent

from bruto.cluster.client import psycopg
from bruto.cluster.database import CONNECT_TIMEOUT_S
from bruto.cluster.database import Database
from bruto.cluster.database import Unavailable
from bruto.dispatcher.health import POLL_INTERVAL_US
from bruto.dispatcher.outcomes import Health
from bruto.timefmt import now_us

log = logging.getLogger("bruto.cluster")

# The same in every bruto: the key of the poller's lock.
POLLER_LOCK = 0x62727574_6f000002
# How often a host that does not poll reads the reports (and tries the lock).
FOLLOW_INTERVAL_S = 0.5
# The lock's connection notices a dead server (or is noticed dead) within about this.
_KEEPALIVE: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
              "tcp_user_timeout": 10_000}


class ClusterHealth:
    """The election and the following, for one dispatcher.

    Args:
        url: the database.
        db: the dispatcher's :class:`Database` (reports are read and written through it).
        rows: this host's health table records (``next_poll_at`` is moved on taking over).
        feed: ``feed(processor, Health, asked_at, now)``: a report another host's poll brought.
        counters: this host's ``cluster.bin`` counters (``poller``).
    """

    def __init__(self, url: str, db: Database, rows, feed, counters):
        self._url = url
        self._counters = counters
        self._db = db
        self._rows = rows
        self._feed = feed
        self._lock_conn: psycopg.Connection | None = None
        self.leading = False
        # Assumed until a try fails: no host polls before the election (a few
        # hundred ms), rather than every host at start.
        self.reachable = True
        self._seen = [0, 0]  # asked_at of the last report folded in, per processor

    def may_poll(self) -> bool:
        """Whether this host calls service-health now: it holds the lock, or cannot reach the database."""
        return self.leading or not self.reachable

    def report(self, processor: int, report: Health, asked_at: int) -> None:
        """A report of this host's own poll: kept for the others (best effort: the next one follows)."""
        try:
            self._db.report_health(processor, report.failing, report.min_response_ms, asked_at)
        except Unavailable as error:
            log.warning("could not share a service-health report: %s", error)

    def run(self) -> None:
        while True:
            try:
                self._step()
                self.reachable = True
            except (psycopg.Error, Unavailable) as error:
                if self.reachable or self.leading:
                    log.warning("service-health election: database unreachable (%s); polling for this host", error)
                self._drop_lock()
                self.reachable = False
            self._counters["poller"] = int(self.may_poll())
            gevent.sleep(FOLLOW_INTERVAL_S)

    def _step(self) -> None:
        if self._lock_conn is None or self._lock_conn.closed:
            self._lock_conn = psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                              **_KEEPALIVE)
            self.leading = False
        if self.leading:
            self._lock_conn.execute("SELECT 1")  # the lock lives as long as this connection does
            return
        reports = self._db.health_reports()
        row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (POLLER_LOCK,)).fetchone()
        if row is not None and row[0]:
            self.leading = True
            for processor, _, _, asked_at in reports:
                row = self._rows[processor]  # the window the last poller opened is respected
                row["next_poll_at"] = max(int(row["next_poll_at"]), asked_at + POLL_INTERVAL_US)
            log.info("this host polls service-health for the cluster")
            return
        now = now_us()
        for processor, failing, min_response_ms, asked_at in reports:
            if asked_at > self._seen[processor]:
                self._seen[processor] = asked_at
                self._rows[processor]["next_poll_at"] = asked_at + POLL_INTERVAL_US  # when the next report is due
                self._feed(processor, Health(bool(failing), int(min_response_ms)), asked_at, now)

    def _drop_lock(self) -> None:
        self.leading = False
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()
            except psycopg.Error:
                pass
            self._lock_conn = None
