"""A purge asked on one host while the other is dead: two real hosts over HTTP on one PostgreSQL.

Each host is a Gateway of tests/gateway.py (gunicorn + a dispatcher) with its own shared directory;
docs/SCALING.md ("Purges") has the promises these tests hold the hosts to.
"""

from __future__ import annotations

import time
import uuid

import pytest
from gateway import Gateway
from test_cluster_hosts import EMPTY
from test_cluster_hosts import assert_each_stored_once
from test_cluster_hosts import post_all
from test_cluster_hosts import wait_converged
from test_cluster_hosts import wait_for
from test_cluster_takeover import kill_whole

from bruto.cluster.counters import read_cluster
from bruto.cluster.host import host_id
from bruto.shm.snapshot import read

pytestmark = pytest.mark.slow  # real processes


LEASE_S = 2  # short: the dead host's lease lapses within seconds


def start_host(path, processors, database_url, dispatcher: bool = True) -> Gateway:
    path.mkdir(exist_ok=True)
    return Gateway.start(path, processors, workers=1, database_url=database_url, host_lease_s=LEASE_S,
                         dispatcher=dispatcher)


def lease_lapsed(postgres, database_url, host: Gateway) -> bool:
    return postgres.psql(f"SELECT lease_until < clock_timestamp() FROM bruto_hosts "
                         f"WHERE host_id = '{host_id(host.env['BRUTO_SHM_DIR'])}'", database_url.rsplit("/", 1)[1]) == "t"


def test_a_purge_while_a_host_is_dead_is_200_at_once_and_the_host_back_answers_nothing_from_before_it(
        tmp_path, clean_processors, postgres, database_url):
    a = start_host(tmp_path / "a", clean_processors, database_url)
    b = start_host(tmp_path / "b", clean_processors, database_url)
    hosts = [a, b]
    try:
        before = [uuid.uuid4() for _ in range(40)]
        post_all(b, before)
        wait_converged(hosts, clean_processors, 40)
        assert read(b.env["BRUTO_SHM_DIR"])["ledger"]["retained"] == 40  # confirmed in b's shared memory

        kill_whole(b)  # every process of b, SIGKILL: a lost machine
        hosts = [a]
        renewals = read_cluster(b.env["BRUTO_SHM_DIR"])["renewals"]  # (its gauges stay as it left them)
        wait_for(lambda: lease_lapsed(postgres, database_url, b), 30, "b's lease lapsed")
        answer = a.http.post(a.url + "/purge-payments", timeout=15)
        assert answer.status_code == 200, answer.text  # a lapsed host is not waited for
        assert a.summary() == EMPTY
        clean_processors.default.purge()
        clean_processors.fallback.purge()

        # b back on its shared directory, its web worker first: nothing from before the purge.
        b = start_host(tmp_path / "b", clean_processors, database_url, dispatcher=False)
        hosts = [a, b]

        def answers_nothing_from_before() -> None:
            summary = b.http.get(b.url + "/payments-summary", timeout=10)
            assert summary.status_code == 200 and summary.json() == EMPTY, summary.text
            for correlation_id in before[:5]:
                found = b.http.get(f"{b.url}/payments/{correlation_id}", timeout=10)
                assert found.status_code in (503, 404), found.text
                if found.status_code == 503:
                    assert found.headers["Retry-After"] == "1"

        answers_nothing_from_before()
        assert b.http.get(f"{b.url}/payments/{before[0]}", timeout=10).status_code == 503  # held, not current
        b.start_dispatcher()  # its first renewal applies the purge; meanwhile, still nothing from before
        deadline = time.monotonic() + 30
        while read_cluster(b.env["BRUTO_SHM_DIR"])["renewals"] == renewals:
            assert time.monotonic() < deadline, b.log("dispatcher-0")
            answers_nothing_from_before()
        answers_nothing_from_before()
        assert [b.http.get(f"{b.url}/payments/{i}", timeout=10).json()["reason"] for i in before[:5]] == \
            ["purged"] * 5
        assert read(b.env["BRUTO_SHM_DIR"])["ledger"]["retained"] == 0

        after = [uuid.uuid4() for _ in range(30)] + before[:10]  # ids from before the purge are new again
        post_all(a, after[0::2])
        post_all(b, after[1::2])
        theirs = wait_converged(hosts, clean_processors, 40)
        assert theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] == 40
        assert_each_stored_once(clean_processors, after)
    finally:
        for host in hosts:
            host.stop()
