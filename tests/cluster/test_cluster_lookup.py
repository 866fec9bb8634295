"""GET /payments/{correlationId} on two bruto hosts on one PostgreSQL: any host answers for the cluster.

Two real hosts (tests/gateway.py: gunicorn with one gevent worker and a
dispatcher each, their own shared directory) on the session's throwaway
PostgreSQL and the two emulators. What a host answers of a payment the other
accepted is held against the other host's own answer and the processor's
own GET /payments/{id}; the database stopped, and one lookup's backend
frozen, give the answers docs/SCALING.md promises.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest
from gateway import Gateway
from gateway import assert_stored_as_bruto_says
from gateway import lookup
from gateway import state_of
from gateway import wait_state
from prometheus_client.parser import text_string_to_metric_families

from bruto.cluster.host import host_label
from bruto.cluster.lookup import APPLICATION_NAME

pytestmark = pytest.mark.slow  # real processes


def label(host: Gateway) -> str:
    return host_label(host.env["BRUTO_SHM_DIR"])


def counted(host: Gateway, status: int) -> float:
    """The host's own count of its GET /payments/{id} answers with ``status`` (GET /metrics)."""
    text = host.http.get(host.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "bruto_http_requests_total" and sample.labels.get("route") == "payments_by_id"
               and sample.labels.get("status") == str(status))


def test_a_payment_posted_to_one_host_is_followed_on_the_other_from_no_record_to_confirmed(two_hosts,
                                                                                          clean_processors):
    a, b = two_hosts
    os.kill(a.dispatchers[0].pid, signal.SIGKILL)  # A accepts, and claims nothing until a dispatcher is back
    a.dispatchers[0].wait()
    payment = uuid.uuid4()
    assert a.pay(payment, "12.34").status_code == 202
    assert wait_state(a, payment, "waiting") == {"correlationId": str(payment), "state": "waiting", "amount": 12.34,
                                                 "host": label(a)}
    # Accepted by A, claimed by no host: B cannot know it, and says so.
    status, body = state_of(b, payment)
    assert status == 404 and body["reason"] == "unknown" and body["cluster"] == "no_record", body
    assert "another host may have accepted it and not claimed it yet" in body["error"]
    assert "this host never accepted" in body["error"]

    # Both processors paused (SIGSTOP): the attempt goes out and waits there, wherever it goes. (A delay
    # would not do: once a health report says both are slow, bruto holds the payment instead.)
    paused = [clean_processors.default.pid, clean_processors.fallback.pid]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        a.start_dispatcher()
        in_flight = wait_state(a, payment, "in_flight", unresolved=False)
        # B knows who holds it, not whether it has been sent yet: "claimed", never a guess.
        claimed = wait_state(b, payment, "claimed")
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)  # resumed, the processor stores what it was sent
    assert claimed == {"correlationId": str(payment), "state": "claimed", "host": label(a),
                       "claimedAt": claimed["claimedAt"]}

    on_b = wait_state(b, payment, "confirmed")
    assert on_b == {"correlationId": str(payment), "state": "confirmed", "amount": 12.34,
                    "processor": in_flight["processor"], "requestedAt": in_flight["requestedAt"], "host": label(a)}
    assert state_of(a, payment) == (200, on_b)
    assert_stored_as_bruto_says(clean_processors, on_b)

    never = uuid.uuid4()
    status, body = state_of(b, never)
    assert status == 404 and (body["reason"], body["cluster"]) == ("unknown", "no_record")
    assert str(never) in body["error"]
    assert counted(b, 404) == 2 and counted(b, 200) >= 2  # each answer counted, as every route's


def test_an_id_posted_to_both_hosts_is_answered_alike_by_both_with_what_was_stored(two_hosts, clean_processors):
    a, b = two_hosts
    ids = [uuid.uuid4() for _ in range(30)]
    amounts = {label(a): 10.0, label(b): 20.0}

    def post(host, amount):
        for correlation_id in ids:
            assert host.pay(correlation_id, amount).status_code == 202

    both = [threading.Thread(target=post, args=(a, "10.00")), threading.Thread(target=post, args=(b, "20.00"))]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join()
    holders = set()
    for correlation_id in ids:
        answer = wait_state(a, correlation_id, "confirmed")
        # The host that lost the claim dropped its copy: it answers from the cluster's record.
        assert wait_state(b, correlation_id, "confirmed") == answer
        assert answer["amount"] == amounts[answer["host"]]  # the amount of the copy that was sent
        assert_stored_as_bruto_says(clean_processors, answer)
        holders.add(answer["host"])
    stored = (clean_processors.default.admin_summary()["totalRequests"]
              + clean_processors.fallback.admin_summary()["totalRequests"])
    assert stored == len(ids)
    assert holders <= {label(a), label(b)}


def test_a_purged_payment_is_404_on_both_hosts_and_its_id_is_new_again(two_hosts, clean_processors):
    a, b = two_hosts
    payment = uuid.uuid4()
    assert a.pay(payment, "5.00").status_code == 202
    wait_state(b, payment, "confirmed")
    assert a.http.post(a.url + "/purge-payments", timeout=15).status_code == 200
    status, on_a = state_of(a, payment)
    assert status == 404 and on_a["reason"] == "purged" and on_a["cluster"] == "no_record", on_a
    status, on_b = state_of(b, payment)
    assert status == 404 and on_b["reason"] == "unknown" and on_b["cluster"] == "no_record", on_b
    clean_processors.default.purge()
    clean_processors.fallback.purge()
    assert b.pay(payment, "7.00").status_code == 202  # new again, on any host
    again = wait_state(a, payment, "confirmed", amount=7.0)
    assert again["host"] == label(b) and state_of(b, payment) == (200, again)
    assert_stored_as_bruto_says(clean_processors, again)


def test_with_postgres_stopped_a_host_answers_what_it_knows_and_503_where_only_the_database_could(
        two_hosts, clean_processors, postgres):
    a, b = two_hosts
    confirmed = uuid.uuid4()
    assert a.pay(confirmed, "3.21").status_code == 202
    answer = wait_state(b, confirmed, "confirmed")
    postgres.stop("fast")
    try:
        assert state_of(a, confirmed) == (200, answer)  # A's own: its shared memory, no database needed
        response = lookup(b, confirmed)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        body = response.json()
        assert body["reason"] == "never_accepted" and "the cluster's database cannot be reached" in body["error"]
        assert lookup(b, uuid.uuid4()).status_code == 503
        accepted = uuid.uuid4()
        assert a.pay(accepted, "4.56").status_code == 202
        # Waiting for a claim no host can make now: what A knows of its own copy, and that it is all.
        assert wait_state(a, accepted, "waiting") == {"correlationId": str(accepted), "state": "waiting",
                                                      "amount": 4.56, "host": label(a), "cluster": "unreachable"}
        assert lookup(b, accepted).status_code == 503
        assert counted(b, 503) == 3
    finally:
        postgres.start_again()
    assert state_of(b, confirmed) == (200, answer)  # B connects again
    later = wait_state(b, accepted, "confirmed", timeout=90, amount=4.56)  # once A claims again: as the hosts test
    assert state_of(a, accepted) == (200, later)
    assert_stored_as_bruto_says(clean_processors, later)
    # A restart between two lookups breaks B's connection: the next lookup finds out, and asks on a new one.
    postgres.stop("fast")
    postgres.start_again()
    assert state_of(b, confirmed) == (200, answer)
    assert counted(b, 503) == 3


def test_a_lookup_whose_database_backend_hangs_answers_503_in_time_and_the_worker_serves_others(
        two_hosts, clean_processors, postgres, database_url):
    a, b = two_hosts
    elsewhere, here = uuid.uuid4(), uuid.uuid4()
    assert a.pay(elsewhere).status_code == 202
    assert b.pay(here).status_code == 202
    known = wait_state(b, elsewhere, "confirmed")  # B's worker has its lookup connection now
    mine = wait_state(b, here, "confirmed")
    database = database_url.rsplit("/", 1)[1]
    backends = [int(pid) for pid in postgres.psql(
        f"SELECT pid FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}' "
        "AND datname = current_database()", database).split()]
    assert len(backends) == 1  # B's one worker, one connection (A's lookups needed no database)
    hung: dict = {}

    def ask():
        response = lookup(b, elsewhere)
        hung.update(status=response.status_code, retry=response.headers.get("Retry-After"), body=response.json(),
                    at=time.monotonic())

    for pid in backends:
        os.kill(pid, signal.SIGSTOP)  # the server takes the statement and never answers it
    try:
        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(0.2)  # the lookup is waiting on the database
        # The same worker, meanwhile: a payment accepted, a payment it holds answered.
        assert b.pay().status_code == 202
        assert state_of(b, here) == (200, mine)
        served = time.monotonic()
        asking.join(timeout=30)
        assert not asking.is_alive()
        assert served < hung["at"], hung  # answered while the lookup still waited
        assert (hung["status"], hung["retry"]) == (503, "1"), hung
        assert "did not answer within" in hung["body"]["error"]
    finally:
        for pid in backends:
            os.kill(pid, signal.SIGCONT)
    assert state_of(b, elsewhere) == (200, known)  # on a new connection
