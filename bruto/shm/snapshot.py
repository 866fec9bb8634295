"""What the shared directory holds right now, as plain numbers.

One reader for the two ways bruto shows itself: the metrics endpoint
(bruto.gateway.metrics renders a snapshot in Prometheus' format) and
``bruto-shm`` (bruto.inspector prints it, as a table, as JSON, or as rates
between two snapshots). Regions are attached read-only and never created;
reading takes no lock and disturbs no writer.

A snapshot is a dict of plain values (JSON as it is)::

    shm_dir, taken_at (epoch seconds), latency_bounds_us
    intake      [per slot: written, drained, backlog, owner_alive, requests, rejections, ...]
    gateway     the slots' counts added up
    dispatcher  alive, pid, duplicates_dropped, purges, outbox_wait (histogram)
    outbox      capacity, in_use, queued, sent, unresolved
    ledger      capacity, count, start, retained, evicted_until, wrapped
    processors  {default, fallback: ledger totals, counters, send_latency, health, breaker}

A histogram is ``{"count", "sum_us", "buckets"}``: one count per bucket of
``latency_bounds_us`` (upper bounds, inclusive) and one beyond the last bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import numpy as np

from bruto.cluster.counters import read_cluster
from bruto.shm import ledger
from bruto.shm import locks
from bruto.shm.layout import BREAKER_STATES
from bruto.shm.layout import DISPATCH
from bruto.shm.layout import HEALTH
from bruto.shm.layout import HEALTH_POLL_RESULTS
from bruto.shm.layout import INDEX
from bruto.shm.layout import INTAKE
from bruto.shm.layout import LATENCY_BOUNDS_US
from bruto.shm.layout import LEDGER
from bruto.shm.layout import LOOKUP_RESULTS
from bruto.shm.layout import METRICS
from bruto.shm.layout import OUTBOX
from bruto.shm.layout import OUTCOMES
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import PROTOCOL_ERRORS
from bruto.shm.layout import QUEUED
from bruto.shm.layout import REJECTED
from bruto.shm.layout import REJECTIONS
from bruto.shm.layout import ROUTES
from bruto.shm.layout import SENT
from bruto.shm.layout import STATUSES
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import region_path
from bruto.shm.layout import slab_path
from bruto.shm.lookup import PaymentFinder
from bruto.shm.region import Layout
from bruto.shm.region import Region
from bruto.shm.region import RegionError
from bruto.shm.region import fields_of

# A snapshot, or a part of one: plain JSON-able values (see the module).
Snapshot = dict[str, Any]

STATUS_LABELS = tuple(str(status) for status in STATUSES) + ("other",)
PAYMENTS = ROUTES.index("payments")


class SharedRegions:
    """Every region of one shared directory, attached read-only.

    Args:
        shm_dir: the shared directory (``BRUTO_SHM_DIR``).

    Raises:
        RegionError: the directory or one of its regions is missing, foreign,
            truncated or of another layout version; the message names the
            file and says what is wrong with it, in one line.
    """

    def __init__(self, shm_dir: str):
        if not os.path.isdir(shm_dir):
            raise RegionError(f"{shm_dir}: no such directory: no bruto stack shares it "
                              "(give the stack's --shm-dir, or set BRUTO_SHM_DIR)")
        self.shm_dir = shm_dir
        self.dispatch = self._attach(DISPATCH)
        self.outbox = self._attach(OUTBOX)
        self.ledger = self._attach(LEDGER)
        self.health = self._attach(HEALTH)
        self.metrics = self._attach(METRICS)
        self.index = self._attach(INDEX)
        self.rejected = self._attach(REJECTED)
        self.slabs = [Region.attach(slab_path(shm_dir, slot), INTAKE, writable=False)
                      for slot in range(self.dispatch.capacity)]

    def finder(self, pause: Callable[[float], object] | None = None) -> PaymentFinder:
        """A bruto.shm.lookup.PaymentFinder over these regions (``pause`` between chunks of a scan)."""
        return PaymentFinder(self.slabs, self.dispatch, self.outbox, self.ledger, self.index, self.rejected, pause)

    def _attach(self, layout: Layout) -> Region:
        return Region.attach(region_path(self.shm_dir, layout), layout, writable=False)

    def read(self) -> Snapshot:
        """A snapshot (see the module) of every region."""
        intake = [self._slab(slot, slab) for slot, slab in enumerate(self.slabs)]
        metrics = self.metrics.counters
        # One copy, counted three times: counting the live array three times counts a payment moving from
        # queued to sent between two counts in both.
        states = self.outbox.records["state"].copy()
        found = ledger.totals(self.ledger, None, None)
        led = self.ledger.counters
        count, start = int(led["count"]), int(led["start"])
        return {
            "shm_dir": self.shm_dir,
            "taken_at": time.time(),
            "latency_bounds_us": list(LATENCY_BOUNDS_US),
            "intake": intake,
            "gateway": _gateway_totals(intake),
            "dispatcher": {
                "alive": locks.held_elsewhere(locks.lock_path(self.shm_dir, locks.DISPATCHER_LOCK)),
                "pid": int(self.dispatch.counters["dispatcher_pid"]),
                "started_at": int(self.dispatch.counters["started_at"]),
                "duplicates_dropped": int(metrics["duplicates_dropped"]),
                "purges": int(metrics["purges"]),
                "outbox_wait": _histogram(metrics["outbox_wait_buckets"], metrics["outbox_wait_sum_us"]),
            },
            "outbox": {
                "capacity": self.outbox.capacity,
                "in_use": int(self.outbox.counters["in_use"]),
                "queued": int(np.count_nonzero(states == QUEUED)),
                "sent": int(np.count_nonzero(states == SENT)),
                "unresolved": int(np.count_nonzero(states == UNRESOLVED)),
            },
            "ledger": {
                "capacity": self.ledger.capacity,
                "count": count,
                "start": start,
                "retained": min(count - start, self.ledger.capacity),
                "evicted_until": int(led["evicted_until"]),
                "wrapped": count - start > self.ledger.capacity,
            },
            "processors": {
                name: self._processor(index, found) for index, name in enumerate(PROCESSOR_NAMES)
            },
            # None on a host of its own; its counters when a dispatcher with BRUTO_DATABASE_URL wrote them.
            "cluster": read_cluster(self.shm_dir),
        }

    def _slab(self, slot: int, slab: Region) -> Snapshot:
        # The drain cursor first: it never passes `written`, so a backlog read
        # in this order is never negative.
        drained = int(self.dispatch.records[slot]["drained"])
        counters = slab.counters
        written = int(counters["written"])
        responses = counters["responses"]
        rejections = counters["rejections"]
        requests = {}
        for route, name in enumerate(ROUTES):
            by_status = {label: int(responses[route, column]) for column, label in enumerate(STATUS_LABELS)}
            if route == PAYMENTS:
                by_status["202"] += written
                for (reason, status), refused in zip(REJECTIONS, rejections):
                    by_status[str(status)] += int(refused)
            # A worker's 202s are listed from its start, so rates see the first ones.
            requests[name] = {label: n for label, n in by_status.items() if n or (route, label) == (PAYMENTS, "202")}
        return {
            "slot": slot,
            "capacity": slab.capacity,
            "written": written,
            "drained": drained,
            "backlog": written - drained,
            "purge_requests": int(counters["purge_ticket"]),
            "owner_pid": int(counters["owner_pid"]),
            "owner_alive": locks.held_elsewhere(slab.path),
            "requests": requests,
            "rejections": {reason: int(n) for (reason, _), n in zip(REJECTIONS, rejections)},
            "protocol_errors": {str(status): int(n) for status, n in zip(PROTOCOL_ERRORS, counters["protocol_errors"])},
        }

    def _processor(self, index: int, found: ledger.Totals) -> Snapshot:
        row = self.metrics.records[index]
        health = self.health.records[index]
        return {
            "ledger": {"totalRequests": found.requests[index], "totalCents": found.amount_cents[index]},
            "confirmed": int(row["confirmed"]),
            "confirmed_cents": int(row["confirmed_cents"]),
            "attempts": int(row["attempts"]),
            "retries": int(row["retries"]),
            "outcomes": dict(zip(OUTCOMES, map(int, row["outcomes"]))),
            "lookups": dict(zip(LOOKUP_RESULTS, map(int, row["lookups"]))),
            "health_polls": dict(zip(HEALTH_POLL_RESULTS, map(int, row["health_polls"]))),
            "send_latency": _histogram(row["send_buckets"], row["send_sum_us"]),
            "health": {field: int(health[field]) for field, (kind, *_) in fields_of(HEALTH.record).items()
                       if not kind.shape},
            "breaker_state": BREAKER_STATES[int(health["breaker"])],
            "breaker_transitions": dict(zip(BREAKER_STATES, map(int, health["transitions"]))),
        }


def _histogram(buckets: Iterable[int], sum_us: int) -> Snapshot:
    counts = [int(n) for n in buckets]
    return {"count": sum(counts), "sum_us": int(sum_us), "buckets": counts}


def _gateway_totals(intake: list[Snapshot]) -> Snapshot:
    """The slots' counts added up: what all web workers of all instances answered."""
    requests: dict[str, dict[str, int]] = {}
    rejections = dict.fromkeys((reason for reason, _ in REJECTIONS), 0)
    protocol_errors = dict.fromkeys((str(status) for status in PROTOCOL_ERRORS), 0)
    for slab in intake:
        for route, by_status in slab["requests"].items():
            for status, n in by_status.items():
                requests.setdefault(route, {}).setdefault(status, 0)
                requests[route][status] += n
        for reason, n in slab["rejections"].items():
            rejections[reason] += n
        for status, n in slab["protocol_errors"].items():
            protocol_errors[status] += n
    return {
        "accepted": sum(slab["written"] for slab in intake),
        "backlog": sum(slab["backlog"] for slab in intake),
        "workers_alive": sum(slab["owner_alive"] for slab in intake),
        "requests": requests,
        "rejections": rejections,
        "protocol_errors": protocol_errors,
    }


def read(shm_dir: str) -> Snapshot:
    """A snapshot of the shared directory ``shm_dir`` (attaches, reads, lets go)."""
    return SharedRegions(shm_dir).read()
