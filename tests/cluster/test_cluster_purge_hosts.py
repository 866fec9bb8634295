"""A purge asked on one host while the other is busy, or dead: two real hosts over HTTP on one PostgreSQL.

Each host is a Gateway of tests/gateway.py (gunicorn + a dispatcher) with its own shared directory;
docs/SCALING.md ("Purges") has the promises these tests hold the hosts to.
"""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
from gateway import Gateway
from gateway import iso
from test_cluster_hosts import EMPTY
from test_cluster_hosts import Load
from test_cluster_hosts import assert_each_stored_once
from test_cluster_hosts import post_all
from test_cluster_hosts import wait_converged
from test_cluster_hosts import wait_for
from test_cluster_takeover import kill_whole

from bruto.cluster.counters import read_cluster
from bruto.cluster.host import host_id
from bruto.shm.snapshot import SharedRegions
from bruto.shm.snapshot import read
from bruto.timefmt import parse_iso

pytestmark = pytest.mark.slow  # real processes


def windowed(processors, from_: str, to: str) -> dict:
    """The processors' admin summaries over [from_, to], as bruto answers a summary."""
    return {name: {"totalRequests": s["totalRequests"], "totalAmount": round(s["totalAmount"], 2)}
            for name, s in (("default", processors.default.admin_summary(from_, to)),
                            ("fallback", processors.fallback.admin_summary(from_, to)))}


def purge_committed_us(postgres, database_url) -> int:
    """When the cluster's latest purge committed (the database's clock), in epoch microseconds."""
    return int(postgres.psql("SELECT (extract(epoch FROM purged_at) * 1e6)::bigint FROM bruto_purge_epoch",
                             database_url.rsplit("/", 1)[1]))


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as the official test writes a date (exact: no float on the way)."""
    moment = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc).replace(microsecond=ms % 1000 * 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def settled(host: Gateway) -> bool:
    """Nothing in the host's outbox, and everything it confirmed published."""
    return (read(host.env["BRUTO_SHM_DIR"])["outbox"]["in_use"] == 0
            and (read_cluster(host.env["BRUTO_SHM_DIR"]) or {}).get("unpublished") == 0)


def unrecorded(processors, postgres, database_url, host: Gateway, ids, since_us: int) -> list[str]:
    """Of ``ids``, those the processors stored with a requestedAt from ``since_us`` on that the cluster's
    record lacks, each with where ``host``'s ledger has it: what a failing comparison needs to say."""
    recorded = set(postgres.psql("SELECT correlation_id FROM bruto_payments", database_url.rsplit("/", 1)[1]).split())
    ledger = SharedRegions(host.env["BRUTO_SHM_DIR"]).ledger
    count, start = int(ledger.counters["count"]), int(ledger.counters["start"])
    columns = ledger.columns
    where = {columns["correlation_id"][i % ledger.capacity].tobytes(): i for i in range(max(0, count - ledger.capacity), count)}
    lines = []
    for correlation_id in ids:
        for name, processor in (("default", processors.default), ("fallback", processors.fallback)):
            stored = processor.get_payment(str(correlation_id))
            if stored and parse_iso(stored["requestedAt"]) >= since_us and str(correlation_id) not in recorded:
                index = where.get(correlation_id.bytes)
                slot = None if index is None else index % ledger.capacity
                lines.append(f"{correlation_id} on {name} requested {stored['requestedAt']}: ledger index {index} "
                             f"(start {start}, count {count}), confirmed_at "
                             f"{None if slot is None else int(columns['confirmed_at'][slot])}")
    return lines


def test_a_purge_asked_on_one_host_keeps_what_a_busy_host_confirmed_after_its_commit(two_hosts, clean_processors,
                                                                                     postgres, database_url):
    """Host b confirms payments all along while host a is purged; b applies the purge at its next lease
    renewal, up to a quarter lease later. What b confirmed after the purge committed was stored by the
    processors after it: every host's summary of the seconds after the commit is theirs."""
    a, b = two_hosts
    with Load([b], 1500) as load:
        while load.sent() < 300:
            time.sleep(0.05)
        answer = a.http.post(a.url + "/purge-payments", timeout=15)
        assert answer.status_code == 200, answer.text
        after_the_200 = load.sent()  # the ids posted from here on came after the purge was done
    assert load.statuses == [202] * 1500
    wait_for(lambda: settled(a) and settled(b), 60, "both hosts settled")
    committed_us = purge_committed_us(postgres, database_url)
    window = {"from_": iso_ms(committed_us // 1000 + 1), "to": iso(time.time() + 1)}
    theirs = windowed(clean_processors, **window)
    assert theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] >= 1500 - after_the_200
    missing = unrecorded(clean_processors, postgres, database_url, b, load.ids, (committed_us // 1000 + 1) * 1000)
    assert a.summary(**window) == theirs, (f"purge committed at {committed_us}", missing)
    assert b.summary(**window) == theirs, (f"purge committed at {committed_us}", missing)
    # Nothing stored twice; everything posted after the 200 stored exactly once.
    assert_each_stored_once(clean_processors, load.ids[after_the_200:])
    twice = [i for i in load.ids[:after_the_200]
             if clean_processors.default.get_payment(str(i)) and clean_processors.fallback.get_payment(str(i))]
    assert twice == []


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
