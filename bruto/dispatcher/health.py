"""The health poller: service-health of each processor, within its rate limit.

The processors allow one service-health call per 5 s window each, shared by
every caller. Only the dispatcher polls, and only one dispatcher runs per
shared directory (it holds ``dispatcher.lock``), so the poller is elected by
that same lock; the time of the next allowed call is kept in the shared
health table, so a dispatcher that takes over after a crash respects the
window its predecessor opened. What a report says is folded in by the
outbox (``Outbox.health_reported``): the poller only makes the calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Sequence
from typing import Protocol

import gevent
import numpy as np

from bruto.dispatcher.metrics import DispatcherMetrics
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import RateLimited
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.timefmt import now_us

log = logging.getLogger("bruto.dispatcher.health")

# One call per 5 s window; the margin keeps two calls from ever landing in one
# window through clock jitter (a second call would queue for the next window).
POLL_INTERVAL_US = 5_100_000


class HealthClient(Protocol):
    def health(self) -> Health | RateLimited | None: ...


class HealthPoller:
    """Calls each processor's service-health when its window opens.

    Args:
        clients: a client per processor, with ``health()``.
        health_rows: the health table's records (``next_poll_at`` is the poller's).
        on_report: called as ``on_report(processor, Health, asked_at, now)`` with each report.
        metrics: a bruto.dispatcher.metrics.DispatcherMetrics, or None.
    """

    def __init__(self, clients: Sequence[HealthClient], health_rows: np.ndarray,
                 on_report: Callable[[int, Health, int, int], None], metrics: DispatcherMetrics | None = None,
                 interval_us: int = POLL_INTERVAL_US):
        self._clients = clients
        self._rows = health_rows
        self._on_report = on_report
        self._metrics = metrics
        self._interval_us = interval_us

    def run(self, may_poll: Callable[[], bool] | None = None) -> None:
        """Forever, each processor on a greenlet of its own: a call may wait up to
        bruto.dispatcher.processor.HEALTH_TIMEOUT_S for its answer, and one processor's wait must
        not hold back the other's reports. ``may_poll``: asked before each call; False skips it
        (another host polls: bruto.cluster.health)."""
        gevent.joinall([gevent.spawn(self._run_one, processor, may_poll) for processor in range(len(self._clients))])

    def _run_one(self, processor: int, may_poll: Callable[[], bool] | None) -> None:
        row = self._rows[processor]
        while True:
            if may_poll is not None and not may_poll():
                gevent.sleep(0.1)
                continue
            wait_us = int(row["next_poll_at"]) - now_us()
            if wait_us <= 0:
                self.poll(processor)
            else:
                gevent.sleep(max(0.05, wait_us / 1_000_000))

    def poll(self, processor: int) -> None:
        row = self._rows[processor]
        asked_at = now_us()
        # Claim the window before calling, so a crash mid-call cannot lead to a
        # second call in the same window.
        row["next_poll_at"] = asked_at + self._interval_us
        try:
            report = self._clients[processor].health()
        except Exception:
            log.exception("%s health call failed", PROCESSOR_NAMES[processor])
            report = None  # counted as a failed poll, like any other trouble
        now = now_us()
        if self._metrics is not None:
            self._metrics.health_polled(processor, report)
        if isinstance(report, Health):
            self._on_report(processor, report, asked_at, now)
        elif isinstance(report, RateLimited):
            row["next_poll_at"] = max(int(row["next_poll_at"]), now + int(report.retry_after_s * 1_000_000))
            log.warning("%s health rate-limited; next call in %.1f s", PROCESSOR_NAMES[processor], report.retry_after_s)
