"""docker-compose.cluster.yml with real Docker: two bruto hosts on one PostgreSQL behind one balancer.

Payments through the balancer reach both hosts; ids posted to both hosts at once are sent once; afterwards
either host's summary is the processors' own, each id is stored by one processor and once in PostgreSQL.
A host's dispatcher killed under traffic comes back with nothing accepted lost or doubled. The judged image
(bruto:latest) carries no database client; the cluster's (bruto-cluster:latest) does.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import uuid

import pytest
import requests
from test_compose import pay
from test_compose import summary
from test_compose import wait_until

from bruto.testbed.faults.containers import state

SERVICES = {"balancer", "postgres",
            *(f"host-{host}-{role}" for host in ("a", "b") for role in ("balancer", "api1", "api2", "dispatcher"))}


def processors_summary(processors) -> dict:
    """The processors' admin summaries on the two fields bruto's summary has."""
    return {name: {"totalRequests": stored["totalRequests"], "totalAmount": round(stored["totalAmount"], 2)}
            for name, stored in (("default", processors.default.admin_summary()),
                                 ("fallback", processors.fallback.admin_summary()))}


def converged(cluster, processors, expected: int) -> dict | None:
    """The processors' summary once they hold ``expected`` payments and every host's (and the balancer's) is it."""
    theirs = processors_summary(processors)
    if theirs["default"]["totalRequests"] + theirs["fallback"]["totalRequests"] != expected:
        return None
    for url in (*cluster.hosts.values(), cluster.url):
        answer = requests.get(f"{url}/payments-summary", timeout=5)
        if answer.status_code != 200:
            return None
        ours = {name: {"totalRequests": part["totalRequests"], "totalAmount": round(part["totalAmount"], 2)}
                for name, part in answer.json().items()}
        if ours != theirs:
            return None
    return theirs


def where_stored(processors, ids) -> dict[str, list[str]]:
    """The processors holding each id."""
    def holders(correlation_id):
        return [name for name, processor in (("default", processors.default), ("fallback", processors.fallback))
                if processor.get_payment(correlation_id)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return dict(zip(ids, pool.map(holders, ids)))


def assert_stored_once(cluster, processors, ids: list[str]) -> None:
    """Each id held by exactly one processor, and one confirmation and one claim in PostgreSQL for each, no more."""
    assert {cid: where for cid, where in where_stored(processors, ids).items() if len(where) != 1} == {}
    assert sorted(cluster.sql("SELECT correlation_id FROM bruto_payments ORDER BY 1")) == sorted(ids)
    assert sorted(cluster.sql("SELECT correlation_id FROM bruto_claims ORDER BY 1")) == sorted(ids)


def test_two_hosts_behind_one_balancer_give_one_summary_and_send_each_id_once(compose_cluster, processors):
    cluster = compose_cluster()
    assert set(cluster.containers()) == SERVICES
    balanced = [pay(cluster.url) for _ in range(40)]
    assert [status for _, status in balanced] == [202] * 40
    # The same ids posted to both hosts at once: each host accepts each (a 202 is its promise), one sends it.
    shared = [str(uuid.uuid4()) for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda args: pay(args[0], correlation_id=args[1])[1],
                                 [(url, cid) for cid in shared for url in cluster.hosts.values()]))
    assert statuses == [202] * 40
    ids = [cid for cid, _ in balanced] + shared

    theirs = wait_until(lambda: converged(cluster, processors, len(ids)), timeout=90,
                        what="both hosts' summaries equal to the processors' with every payment")
    assert summary(cluster.hosts["a"]) == summary(cluster.hosts["b"])
    assert theirs["default"]["totalAmount"] + theirs["fallback"]["totalAmount"] == pytest.approx(len(ids) * 19.90)
    assert_stored_once(cluster, processors, ids)

    # Both hosts served the balancer's payments, and each shared id was dropped by the host whose claim lost.
    memory = {host: cluster.shared_memory(host) for host in cluster.hosts}
    accepted = {host: memory[host]["gateway"]["accepted"] for host in memory}
    assert sum(accepted.values()) == 40 + 2 * len(shared)
    assert min(accepted.values()) > len(shared), accepted
    assert sum(memory[host]["cluster"]["cross_host_duplicates"] for host in memory) == len(shared)


def test_a_hosts_dispatcher_killed_comes_back_and_nothing_accepted_is_lost(compose_cluster, processors):
    """host a's dispatcher SIGKILLed from the host while payments arrive: Docker restarts it, and it resumes."""
    cluster = compose_cluster()
    container = cluster.containers()["host-a-dispatcher"]
    accepted = [cid for cid, status in (pay(cluster.url) for _ in range(20)) if status == 202]
    running, restarts, pid = state(container)
    assert running
    os.kill(pid, signal.SIGKILL)
    # Accepted meanwhile by host a's API into its intake (or by host b): the balancer keeps answering.
    accepted += [cid for cid, status in (pay(cluster.url) for _ in range(20)) if status == 202]
    wait_until(lambda: state(container)[0] and state(container)[1] > restarts, what="host a's dispatcher restarted")
    accepted += [cid for cid, status in (pay(cluster.url) for _ in range(20)) if status == 202]
    assert len(accepted) == 60
    wait_until(lambda: converged(cluster, processors, len(accepted)), timeout=90,
               what="every accepted payment in both hosts' summaries")
    assert_stored_once(cluster, processors, accepted)


def docker_run(image: str, *command: str, env: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    flags = [arg for pair in env for arg in ("-e", pair)]
    return subprocess.run(["docker", "run", "--rm", *flags, image, *command], capture_output=True, text=True,
                          timeout=120)


def test_only_the_cluster_image_carries_the_database_client(compose_env):
    """The judged image stays without psycopg, and says so when given a URL; the cluster's loads it over libpq."""
    found = docker_run("bruto:latest", "python", "-c", "import importlib.util; print(importlib.util.find_spec('psycopg'))")
    assert found.stdout.strip() == "None", found.stderr
    started = docker_run("bruto:latest", "bruto-dispatcher",
                         env=("BRUTO_DATABASE_URL=postgresql://bruto@nowhere/bruto", "BRUTO_SHM_DIR=/tmp/bruto"))
    assert started.returncode != 0
    assert "BRUTO_DATABASE_URL is set, but the PostgreSQL client is missing" in started.stderr
    loaded = docker_run("bruto-cluster:latest", "python", "-c",
                        "import psycopg, psycopg_pool; print(psycopg.pq.__impl__, psycopg.pq.version())")
    impl, version = loaded.stdout.split()
    assert impl == "python" and int(version) >= 150000, loaded.stderr
