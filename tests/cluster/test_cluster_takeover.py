"""A host lost whole, its payments claimed and out: another host takes them over once its lease has
lapsed, resolves each on the processors, and finishes them; the lost host, back with its shared
directory, sends nothing that was taken over. Real processes (tests/gateway.py), real PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from gateway import Gateway
from test_cluster_hosts import assert_each_stored_once
from test_cluster_hosts import post_all
from test_cluster_hosts import stored
from test_cluster_hosts import wait_converged
from test_cluster_hosts import wait_for

from bruto.cluster.counters import read_cluster
from bruto.shm.snapshot import read

pytestmark = pytest.mark.slow  # real processes

LEASE_S = 2  # short, so the takeover comes within seconds
# Each request stays in the processor this long (under routing's 1.2-s limit, past which a
# processor counts as down and gets nothing): out when its host is killed.
DELAY_MS = 1000
SENDERS = 40  # at most this many out at once (routing sends fewer to a slow processor): the rest wait claimed


def start_host(path, processors, database_url) -> Gateway:
    path.mkdir(exist_ok=True)
    return Gateway.start(path, processors, workers=1, database_url=database_url, host_lease_s=LEASE_S,
                         senders=SENDERS)


def kill_whole(host: Gateway) -> None:
    """SIGKILL of every process of the host at once (gunicorn, its workers, the dispatcher): a lost machine."""
    for pid in [*host.worker_pids(), host.gunicorn.pid, *(d.pid for d in host.dispatchers if d.poll() is None)]:
        os.kill(pid, signal.SIGKILL)
    for process in [host.gunicorn, *host.dispatchers]:
        process.wait()


def attempts(host: Gateway) -> int:
    return sum(p["attempts"] for p in read(host.env["BRUTO_SHM_DIR"])["processors"].values())


def cluster(host: Gateway) -> dict:
    return read_cluster(host.env["BRUTO_SHM_DIR"]) or {}


def test_a_host_killed_whole_is_taken_over_after_its_lease_and_once_back_sends_nothing_taken(
        tmp_path, clean_processors, database_url):
    a = start_host(tmp_path / "a", clean_processors, database_url)
    b = start_host(tmp_path / "b", clean_processors, database_url)
    hosts = [a, b]
    try:
        clean_processors.default.set_delay(DELAY_MS)
        clean_processors.fallback.set_delay(DELAY_MS)
        ids = [uuid.uuid4() for _ in range(200)]
        post_all(a, ids)
        # At most SENDERS out at once, each for DELAY_MS: some are out and most wait once all are claimed.
        wait_for(lambda: cluster(a).get("claimed") == 200, 30, "all claimed by a", poll_s=0.02)
        out = read(a.env["BRUTO_SHM_DIR"])["outbox"]
        kill_whole(a)
        assert out["sent"] > 0 and out["queued"] > 0  # some out, others waiting, when a was lost
        hosts = [b]
        sent_by_a = attempts(a)
        clean_processors.default.set_delay(0)
        clean_processors.fallback.set_delay(0)
        wait_converged([b], clean_processors, 200, timeout=120)
        assert stored(clean_processors) == 200
        assert_each_stored_once(clean_processors, ids)
        taker = cluster(b)
        assert taker["takeovers"] == 1 and taker["taken_over"] > 0

        # a comes back with its shared directory: whatever it still held was taken over.
        a = start_host(tmp_path / "a", clean_processors, database_url)
        hosts = [a, b]
        wait_for(lambda: cluster(a).get("lease_held") == 1
                 and read(a.env["BRUTO_SHM_DIR"])["outbox"]["in_use"] == 0, 30,
                 "a holds its lease again, and nothing to send")
        returned = cluster(a)
        # What it held out was dropped at its reconciliation (or found stored by its own lookups
        # first); what waited unsent, at its claim: another host's now.
        assert returned["fenced"] + returned["cross_host_duplicates"] > 0
        assert attempts(a) == sent_by_a  # it sent nothing
        wait_converged([a, b], clean_processors, 200)
        assert stored(clean_processors) == 200
        assert_each_stored_once(clean_processors, ids)
    finally:
        clean_processors.default.set_delay(0)
        clean_processors.fallback.set_delay(0)
        for host in hosts:
            host.stop()
