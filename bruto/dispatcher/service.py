"""The dispatcher process: a thin gevent shell around the outbox state machine.

One dispatcher runs per shared directory (it holds ``dispatcher.lock``; a
second one waits and takes over when the first dies). It is the only writer of
the outbox, the ledger, the dispatch cursors and the health table.

Every decision is the outbox's (bruto.dispatcher.outbox): this module only
feeds it events and carries out its actions. The loop drains intake, carries
out purges and asks the outbox what is due; each :class:`Send` and
:class:`Lookup` runs in its own greenlet, which hands the answer back as an
event. The outbox's state is the shared regions, so a crash anywhere is
survived by starting again: :meth:`Outbox.recover` rebuilds the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import gevent
import gevent.event
import gevent.lock

from bruto.config import Settings
from bruto.config import settings_or_exit
from bruto.dispatcher import routing
from bruto.dispatcher.health import HealthPoller
from bruto.dispatcher.metrics import DispatcherMetrics
from bruto.dispatcher.outbox import Action
from bruto.dispatcher.outbox import Lookup
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.processor import ProcessorClient
from bruto.dispatcher.processor import make_session
from bruto.shm import locks
from bruto.shm import purge
from bruto.shm.layout import DispatcherRegions
from bruto.shm.layout import create_all
from bruto.timefmt import now_us

if TYPE_CHECKING:  # imported only with a database URL (it needs psycopg)
    from bruto.cluster.link import ClusterLink

log = logging.getLogger("bruto.dispatcher")

# Longest idle sleep of the main loop. Intake is polled, so this bounds how
# long a payment waits before it is picked up when the dispatcher has nothing
# to do. 20 ms rather than 1 or 5 ms: that pickup delay changes nothing a
# client sees (the 202 is already out; requestedAt is taken when the payment
# is sent), while each wake-up costs CPU on the cores the API bursts need, and
# fewer wake-ups carry more payments each: the dispatcher's CPU per test fell
# 10.5-12.2 s (1 ms) -> 8.7-9.6 s (5 ms) -> 6.5-8.8 s (20 ms) (docs/BENCHMARKS.md).
IDLE_SLEEP_S = 0.020


class Dispatcher:
    """The shell: regions, HTTP clients and greenlets around one :class:`Outbox`.

    Args:
        settings: where the regions are, the processors' URLs, the policy's knobs.
        regions: the regions to use instead of opening ``settings``' (tests).
        clients: (default, fallback) clients instead of HTTP ones (tests); each
            has ``pay``, ``lookup`` and ``health`` as in
            bruto.dispatcher.processor.ProcessorClient.
    """

    def __init__(self, settings: Settings, regions: DispatcherRegions | None = None,
                 clients: Sequence[ProcessorClient] | None = None):
        self.settings = settings
        self.regions = regions or DispatcherRegions.open(settings)
        policy = routing.Policy.from_terms(settings.default_fee, settings.fallback_fee,
                                           settings.settlement_bound_s, max_in_flight=settings.senders)
        self.cluster = None
        if settings.database_url:
            # Only with a URL: it imports psycopg (after gevent's patch, in __main__).
            from bruto.cluster.health import ClusterHealth
            from bruto.cluster.link import ClusterLink

            self.cluster = ClusterLink(settings, self.regions.ledger)
            self.cluster_health = ClusterHealth(settings.database_url, self.cluster.db, self.regions.health.records,
                                                self._health_reported, self.cluster.counters)
        self._claims_due = gevent.event.Event()
        self._cluster_purge_due = gevent.event.Event()
        self.outbox = Outbox(self.regions, policy, claiming=self.cluster is not None)
        if clients is None:
            session = make_session(settings.senders + 8)
            clients = (ProcessorClient(settings.default_url, session),
                       ProcessorClient(settings.fallback_url, session))
        self.clients = clients
        # Lookups come in bursts (a restart or a takeover finds thousands unresolved): as many at
        # once as the connection pool holds, the rest wait their turn instead of opening
        # connections the pool then throws away.
        self._lookup_slots = gevent.lock.BoundedSemaphore(settings.senders)
        # The poller counts its calls in metrics.bin itself: the outbox's counters are its own.
        self.poller = HealthPoller(clients, self.regions.health.records, self._polled,
                                   DispatcherMetrics(self.regions.metrics))
        self._purge_lock_path = purge.lock_path(settings)

    def recover(self) -> None:
        self.outbox.recover(now_us(), pid=os.getpid())

    def run(self) -> None:
        if self.cluster is None:
            gevent.spawn(self.poller.run)
        else:
            gevent.spawn(self.poller.run, self.cluster_health.may_poll)  # one poller per cluster
            gevent.spawn(self.cluster_health.run)
            gevent.spawn(self.cluster.run_publisher)
            gevent.spawn(self._hold_lease, self.cluster)
            gevent.spawn(self._claim, self.cluster)
            gevent.spawn(self._purge_cluster, self.cluster)
        while True:
            self.step()
            now = now_us()
            wake_at = self.outbox.wake_at(now)
            pause = IDLE_SLEEP_S if wake_at is None else min(IDLE_SLEEP_S, max(0, wake_at - now) / 1e6)
            gevent.sleep(pause)

    def step(self) -> None:
        """One pass: purges, new payments, whatever is due."""
        now = now_us()
        purge.commit_pending(self.outbox.purges, self._purge_lock_path, now_us, self.outbox.purge)
        if self.cluster is not None and self.outbox.cluster_purge_pending:
            self._cluster_purge_due.set()  # many hosts: the cluster's record too (self._purge_cluster)
        self.outbox.drain(now)
        if self.cluster is not None and self.outbox.to_claim(1):
            self._claims_due.set()  # only claimed payments go on to be sent (self._claim)
        self._carry_out(self.outbox.poll(now_us()))

    # -- actions and the events they end with ------------------------------------
    # Each outcome reaches the outbox in exactly one place: _send, _lookup,
    # _health_reported, all through _feed.

    def _carry_out(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                gevent.spawn(self._send, action)
            else:
                gevent.spawn(self._lookup, action)

    def _send(self, send: Send) -> None:
        started = now_us()
        if not self.outbox.may_send(started):
            # Many hosts: the lease lapsed between the decision and now; another host may take the
            # payment over once it has lapsed long enough, so it must not leave from here.
            self._feed(self.outbox.withheld, send, started)
            return
        try:
            outcome = self.clients[send.processor].pay(
                send.correlation_id, send.amount_cents, send.requested_at, send.timeout_s)
        except Exception:
            # A bug in the client must not strand the payment: its outcome is unknown.
            log.exception("sending %s failed", send.correlation_id.hex())
            outcome = Outcome.UNKNOWN
        now = now_us()
        self._feed(self.outbox.attempt_done, send, outcome, now, now - started)

    def _lookup(self, lookup: Lookup) -> None:
        try:
            with self._lookup_slots:  # waiting here only delays the ask: absence is proven later, not wrongly
                found = self.clients[lookup.processor].lookup(lookup.correlation_id)
        except Exception:
            log.exception("looking up %s failed", lookup.correlation_id.hex())
            found = Outcome.UNKNOWN
        self._feed(self.outbox.lookup_done, lookup, found, now_us())

    def _claim(self, cluster: ClusterLink) -> None:
        """The claimer's greenlet (many hosts): claims what was drained, off the loop, so a slow or
        unreachable database holds up no drain, purge or send of what is claimed already."""
        while True:
            self._claims_due.wait()
            self._claims_due.clear()
            self._feed(cluster.claim, self.outbox)
            if cluster.claims_failing:
                gevent.sleep(cluster.retry_s)  # the database did not answer: they wait, and so do we
                self._claims_due.set()
            elif self.outbox.to_claim(1):  # more than a batch, or more drained meanwhile
                self._claims_due.set()

    def _hold_lease(self, cluster: ClusterLink) -> None:
        """The lease's greenlet (many hosts): renewed every quarter of the lease, off the loop; a host
        that cannot renew stops sending when its window ends (bruto.cluster.link)."""
        while True:
            self._feed(cluster.hold_lease, self.outbox)
            gevent.sleep(cluster.renew_every_s)

    def _polled(self, processor: int, report: Health, asked_at: int, now: int) -> None:
        """A report of this host's own poll: folded in, and shared with the cluster's other hosts."""
        self._health_reported(processor, report, asked_at, now)
        if self.cluster is not None:
            self.cluster_health.report(processor, report, asked_at)

    def _purge_cluster(self, cluster: ClusterLink) -> None:
        """Many hosts: a purge carried out here is done once the cluster's record is purged too."""
        while True:
            self._cluster_purge_due.wait()
            self._cluster_purge_due.clear()
            self._feed(cluster.purge, self.outbox)
            if self.outbox.cluster_purge_pending:
                gevent.sleep(cluster.retry_s)  # the database did not answer: the purge waits for it
                self._cluster_purge_due.set()

    def _health_reported(self, processor: int, report: Health, asked_at: int, now: int) -> None:
        self._feed(self.outbox.health_reported, processor, report, asked_at, now)

    def _feed(self, event: Callable[..., object], *args: Any) -> None:
        """Hand an event to the outbox and carry out what it makes due."""
        try:
            event(*args)
            self._carry_out(self.outbox.poll(now_us()))
        except Exception:
            # A bug in the state machine: its in-memory part can no longer be
            # trusted, its shared part can. Exit, and let the restart recover.
            log.critical("the outbox failed on %s; exiting to recover from shared memory",
                         event.__name__, exc_info=True)
            os._exit(70)


def _hold_lock(settings: Settings) -> int:
    """Become the one dispatcher of this shared directory, waiting for the current one to die."""
    path = locks.lock_path(settings.shm_dir, locks.DISPATCHER_LOCK)
    return locks.wait_for(path, poll_s=0.2, sleep=gevent.sleep,
                          on_wait=lambda: log.info("another dispatcher holds %s; standing by", path))


def main() -> None:
    settings = settings_or_exit("bruto-dispatcher")
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    create_all(settings)
    _hold_lock(settings)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    dispatcher = Dispatcher(settings)
    dispatcher.recover()
    log.info("dispatching to default %s and fallback %s", settings.default_url, settings.fallback_url)
    dispatcher.run()
