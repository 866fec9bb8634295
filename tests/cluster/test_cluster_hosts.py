"""Two bruto hosts on one PostgreSQL, real processes: one summary, each payment stored once.

Each host is a Gateway of tests/gateway.py (gunicorn + a dispatcher) with its
own shared directory; both have the same BRUTO_DATABASE_URL and the same two
emulators.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
import uuid

import pytest
from gateway import iso

from bruto.cluster.counters import read_cluster
from bruto.inspector import table
from bruto.shm.snapshot import read

pytestmark = pytest.mark.slow  # real processes


def stored(processors) -> int:
    return (processors.default.admin_summary()["totalRequests"]
            + processors.fallback.admin_summary()["totalRequests"])


def processors_summary(processors) -> dict:
    return {name: {"totalRequests": s["totalRequests"], "totalAmount": round(s["totalAmount"], 2)}
            for name, s in (("default", processors.default.admin_summary()),
                            ("fallback", processors.fallback.admin_summary()))}


def wait_converged(hosts, processors, expected: int, timeout: float = 60.0) -> dict:
    """Until the processors hold ``expected`` and every host's summary is theirs."""
    deadline = time.monotonic() + timeout
    while True:
        theirs = processors_summary(processors)
        ours = []
        for host in hosts:
            response = host.http.get(host.url + "/payments-summary", timeout=10)
            ours.append(response.json() if response.status_code == 200 else response.status_code)
        held = theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"]
        if held >= expected and all(summary == theirs for summary in ours):
            return theirs
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged: processors {theirs}, hosts {ours}, expected {expected}\n"
                                 + "\n".join(host.log("dispatcher-0") for host in hosts))
        time.sleep(0.2)


def post_all(host, ids) -> None:
    for correlation_id in ids:
        assert host.pay(correlation_id).status_code == 202


def assert_each_stored_once(processors, ids) -> None:
    """Each id held by exactly one processor (a processor holds an id at most once: its key)."""
    def where(correlation_id):
        return [p for p in (processors.default, processors.fallback) if p.get_payment(str(correlation_id))]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        places = list(pool.map(where, ids))
    assert [len(found) for found in places] == [1] * len(ids)


def post_alternated_and_shared(hosts, processors, alternated: int, shared: int) -> None:
    """``alternated`` new ids posted to the two hosts in turn, then ``shared`` others to both at once; waits
    until every host's summary is the processors' and checks that each id was stored once."""
    ids = [uuid.uuid4() for _ in range(alternated)]
    both_ids = [uuid.uuid4() for _ in range(shared)]
    post_all(hosts[0], ids[0::2])
    post_all(hosts[1], ids[1::2])
    both = [threading.Thread(target=post_all, args=(host, both_ids)) for host in hosts]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    theirs = wait_converged(hosts, processors, alternated + shared)
    assert theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] == alternated + shared
    assert_each_stored_once(processors, ids + both_ids)


def test_alternated_and_shared_payments_give_one_summary_and_are_stored_once(two_hosts, clean_processors, postgres,
                                                                             database_url):
    a, b = two_hosts
    post_alternated_and_shared(two_hosts, clean_processors, alternated=300, shared=100)
    database = database_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*), count(DISTINCT host_id) FROM bruto_claims", database) == "400|2"
    assert postgres.psql("SELECT count(*) FROM bruto_payments", database) == "400"
    counted = [read_cluster(host.env["BRUTO_SHM_DIR"]) for host in two_hosts]
    # Each shared id reached both hosts: one claimed it, the other dropped it.
    assert sum(c["cross_host_duplicates"] for c in counted) == 100
    assert sum(c["claimed"] for c in counted) == 400 and all(c["unpublished"] == 0 for c in counted)
    scraped = [host.http.get(host.url + "/metrics", timeout=10).text for host in two_hosts]
    assert all('bruto_cluster_database_up 1.0' in text for text in scraped)
    dropped = [float(line.split()[-1]) for text in scraped for line in text.splitlines()
               if line.startswith('bruto_cluster_claimed_payments_total{result="other_host"}')]
    assert sum(dropped) == 100
    assert "cluster: database up" in table(read(a.env["BRUTO_SHM_DIR"]))  # bruto-shm
    window = {"from_": iso(time.time() - 60), "to": iso(time.time())}
    assert a.summary(**window) == b.summary(**window) == {
        name: {"totalRequests": s["totalRequests"], "totalAmount": round(s["totalAmount"], 2)}
        for name, s in (("default", clean_processors.default.admin_summary(window["from_"], window["to"])),
                        ("fallback", clean_processors.fallback.admin_summary(window["from_"], window["to"])))}


class Load:
    """Payments posted to the hosts in turn from a thread, every answer kept."""

    def __init__(self, hosts, count: int, pause_s: float = 0.004):
        self.hosts, self.pause_s = hosts, pause_s
        self.ids = [uuid.uuid4() for _ in range(count)]
        self.statuses: list[int] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self):
        for n, correlation_id in enumerate(self.ids):
            self.statuses.append(self.hosts[n % len(self.hosts)].pay(correlation_id).status_code)
            time.sleep(self.pause_s)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join()

    def sent(self) -> int:
        return len(self.statuses)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_for_5_s_under_load_nothing_is_lost_or_doubled(two_hosts, clean_processors, postgres, mode):
    """Stopped cleanly, or with -m immediate (a crash: recovery replays its WAL at the start)."""
    a, b = two_hosts
    with Load(two_hosts, 1500) as load:
        while load.sent() < 300:
            time.sleep(0.05)
        postgres.stop(mode)
        time.sleep(1.0)  # what was claimed before the stop is sent by now
        before = stored(clean_processors)
        answer = a.http.get(a.url + "/payments-summary", timeout=10)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        time.sleep(3.5)
        assert stored(clean_processors) == before  # nothing unclaimed was sent
        postgres.start_again()
    assert load.statuses == [202] * 1500  # POST never needed the database
    wait_converged(two_hosts, clean_processors, 1500, timeout=90)
    assert stored(clean_processors) == 1500
    assert_each_stored_once(clean_processors, load.ids)


def test_a_dispatcher_killed_under_load_is_replaced_and_nothing_is_lost_or_doubled(two_hosts, clean_processors):
    a, b = two_hosts
    with Load(two_hosts, 1500) as load:
        while load.sent() < 600:
            time.sleep(0.05)
        os.kill(a.dispatchers[0].pid, signal.SIGKILL)
        a.dispatchers[0].wait()
        while load.sent() < 900:
            time.sleep(0.05)
        a.start_dispatcher()
    assert load.statuses == [202] * 1500
    wait_converged(two_hosts, clean_processors, 1500, timeout=90)
    assert stored(clean_processors) == 1500
    assert_each_stored_once(clean_processors, load.ids)


def health_polls(host) -> dict:
    snap = read(host.env["BRUTO_SHM_DIR"])
    return {result: sum(p["health_polls"][result] for p in snap["processors"].values())
            for result in ("ok", "rate_limited")}


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(poll_s)


def test_one_host_polls_service_health_for_both_and_another_takes_over_when_it_dies(two_hosts):
    def pollers():
        return [host for host in two_hosts if (read_cluster(host.env["BRUTO_SHM_DIR"]) or {}).get("poller")]

    wait_for(lambda: len(pollers()) == 1, 10, "one poller elected")
    [leader] = pollers()
    [follower] = [host for host in two_hosts if host is not leader]
    # Two reports per processor: the first call may queue behind a window an earlier poller booked.
    wait_for(lambda: health_polls(leader)["ok"] >= 4, 30, "the leader's reports")
    assert health_polls(follower) == {"ok": 0, "rate_limited": 0}
    assert health_polls(leader)["rate_limited"] == 0
    # The follower knows what the leader's polls said, as if it had polled.
    followed = read(follower.env["BRUTO_SHM_DIR"])["processors"]["default"]["health"]["polled_at"]
    assert followed > 0
    os.kill(leader.dispatchers[0].pid, signal.SIGKILL)
    leader.dispatchers[0].wait()
    # (the dead dispatcher's counters stay as it left them: its host's bruto_dispatcher_up says 0)
    wait_for(lambda: follower in pollers() and health_polls(follower)["ok"] >= 2, 20, "the follower took over")
    assert health_polls(follower)["rate_limited"] == 0  # it waited out the window the dead poller opened


EMPTY = {"default": {"totalRequests": 0, "totalAmount": 0}, "fallback": {"totalRequests": 0, "totalAmount": 0}}


def test_a_purge_on_one_host_empties_the_clusters_record_and_ids_are_new_again_after_it(two_hosts, clean_processors,
                                                                                        postgres, database_url):
    a, b = two_hosts
    before = [uuid.uuid4() for _ in range(60)]
    post_all(a, before[:30])
    post_all(b, before[30:])
    wait_converged(two_hosts, clean_processors, 60)
    answer = a.http.post(a.url + "/purge-payments", timeout=15)
    assert answer.status_code == 200, answer.text
    assert a.summary() == b.summary() == EMPTY  # on either host, at once
    database = database_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*) FROM bruto_payments", database) == "0"
    assert postgres.psql("SELECT count(*) FROM bruto_claims", database) == "0"
    clean_processors.default.purge()
    clean_processors.fallback.purge()
    after = [uuid.uuid4() for _ in range(40)] + before[:10]  # ids from before the purge are new again
    post_all(b, after[:25])
    post_all(a, after[25:])
    wait_converged(two_hosts, clean_processors, 50)
    assert stored(clean_processors) == 50
    assert_each_stored_once(clean_processors, after)


def test_a_purge_while_the_database_is_down_is_committed_and_completes_when_it_is_back(two_hosts, clean_processors,
                                                                                       postgres):
    a, b = two_hosts
    post_all(a, [uuid.uuid4() for _ in range(20)])
    wait_converged(two_hosts, clean_processors, 20)
    postgres.stop("fast")
    answer = a.http.post(a.url + "/purge-payments", timeout=30)
    # Committed on this host (never to be cancelled), the cluster's part waiting for the database.
    assert answer.status_code == 202, answer.text
    postgres.start_again()
    def both_empty():
        answers = [host.http.get(host.url + "/payments-summary", timeout=10) for host in two_hosts]
        # (503 until each worker's pool has a connection again)
        return all(answer.status_code == 200 and answer.json() == EMPTY for answer in answers)

    wait_for(both_empty, 30, "the purge completed in the cluster's record")
