"""The gateway end to end: real gunicorn workers, a real dispatcher, emulated processors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from gateway import Gateway
from gateway import iso

pytestmark = pytest.mark.slow  # real processes


def pay_concurrently(gateway: Gateway, ids, threads: int = 64) -> list[str]:
    """POST every id at once from a thread pool; return the ids answered 2XX."""
    local = threading.local()

    def pay(correlation_id):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            response = session.post(gateway.url + "/payments", timeout=10,
                                    data='{"correlationId":"%s","amount":19.90}' % correlation_id)
        except requests.RequestException:
            return None
        return correlation_id if 200 <= response.status_code < 300 else None

    with ThreadPoolExecutor(threads) as pool:
        return [i for i in pool.map(pay, ids) if i is not None]


def assert_matches_processors(gateway: Gateway, processors, from_=None, to=None):
    ours = gateway.summary(from_, to)
    for name in ("default", "fallback"):
        theirs = getattr(processors, name).admin_summary(from_, to)
        assert ours[name]["totalRequests"] == theirs["totalRequests"], (name, from_, to)
        assert ours[name]["totalAmount"] == pytest.approx(theirs["totalAmount"], abs=0.001), (name, from_, to)


def test_two_thousand_concurrent_payments_match_the_processors(gateway, clean_processors):
    started = time.time()
    ids = [str(uuid.uuid4()) for _ in range(2000)]
    accepted = pay_concurrently(gateway, ids)
    assert len(accepted) == 2000
    ours = gateway.wait_settled(clean_processors, expected=2000)
    finished = time.time()

    assert ours["default"]["totalRequests"] == 2000
    assert ours["default"]["totalAmount"] == pytest.approx(2000 * 19.90)
    assert_matches_processors(gateway, clean_processors)
    third = (finished - started) / 3
    for k in range(3):
        assert_matches_processors(gateway, clean_processors,
                                  iso(started + k * third), iso(started + (k + 1) * third))


def test_a_repeated_correlation_id_is_stored_once(gateway, clean_processors):
    """Each repetition is answered 202; the first amount counts, even when a repetition's differs."""
    correlation_id = str(uuid.uuid4())
    statuses = [gateway.pay(correlation_id, amount).status_code for amount in ("10.00", "99.00", "10.00")]
    assert statuses == [202, 202, 202]
    gateway.pay(amount="5.00")
    ours = gateway.wait_settled(clean_processors, expected=2)
    time.sleep(0.5)  # room for a wrongly repeated send to land
    ours = gateway.summary()
    assert ours["default"] == {"totalRequests": 2, "totalAmount": 15.0}
    assert clean_processors.default.admin_summary()["totalRequests"] == 2


def test_summary_is_empty_after_purge(gateway, clean_processors):
    for _ in range(5):
        gateway.pay()
    gateway.wait_settled(clean_processors, expected=5)
    clean_processors.default.purge()  # as the official test's setup does: processors first
    response = gateway.http.post(gateway.url + "/purge-payments", timeout=10)
    assert response.status_code == 200
    assert gateway.summary()["default"] == {"totalRequests": 0, "totalAmount": 0}
    gateway.pay(amount="1.50")
    gateway.wait_settled(clean_processors, expected=1)
    assert gateway.summary()["default"] == {"totalRequests": 1, "totalAmount": 1.5}


def test_a_worker_killed_mid_load_loses_nothing_it_accepted(gateway, clean_processors):
    ids = [str(uuid.uuid4()) for _ in range(3000)]
    accepted: list[str] = []
    loader = threading.Thread(target=lambda: accepted.extend(pay_concurrently(gateway, ids, threads=32)))
    loader.start()
    time.sleep(0.5)
    victim = gateway.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    loader.join()

    assert len(accepted) > 1000  # the load really ran around the kill
    gateway.wait_settled(clean_processors, expected=len(accepted))
    missing = [i for i in accepted if clean_processors.default.get_payment(i) is None]
    assert missing == []
    assert_matches_processors(gateway, clean_processors)


def test_the_inspector_shows_what_shared_memory_holds(gateway, clean_processors):
    for _ in range(3):
        gateway.pay(amount="2.50")
    gateway.wait_settled(clean_processors, expected=3)
    shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--json", "--shm-dir", gateway.env["BRUTO_SHM_DIR"]],
                           capture_output=True, text=True, check=True)
    snap = json.loads(shown.stdout)
    assert snap["processors"]["default"]["ledger"] == {"totalRequests": 3, "totalCents": 750}
    assert snap["dispatcher"]["alive"] is True
    assert snap["processors"]["default"]["confirmed"] == 3
    assert sum(slab["written"] for slab in snap["intake"]) == 3
    assert sum(slab["backlog"] for slab in snap["intake"]) == 0
    table = subprocess.run([sys.executable, "-m", "bruto.inspector", "--shm-dir", gateway.env["BRUTO_SHM_DIR"]],
                           capture_output=True, text=True, check=True).stdout
    assert "default : 3 payments, 7.50; breaker closed" in table


def test_the_inspector_refuses_a_directory_without_regions(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--shm-dir", str(tmp_path)],
                           capture_output=True, text=True)
    assert shown.returncode == 1
    assert "does not exist" in shown.stderr


def test_purge_without_a_dispatcher_says_so(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=1, dispatcher=False)
    try:
        response = gw.http.post(gw.url + "/purge-payments", timeout=10)
        assert response.status_code == 503
        assert "dispatcher" in response.json()["error"]
        shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--json", "--shm-dir", gw.env["BRUTO_SHM_DIR"]],
                               capture_output=True, text=True, check=True)
        snap = json.loads(shown.stdout)
        assert snap["dispatcher"]["alive"] is False
        assert [slab["owner_alive"] for slab in snap["intake"]].count(True) == 1  # the one worker
    finally:
        gw.stop()
