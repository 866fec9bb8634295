"""Slow clients (bruto.testbed.slowloris) on a few hundred connections while normal payments flow.

Asserts answers, never timings: every normal payment is answered 202 and
stored exactly once, the workers are the ones that started, and the slow
connections are still held open (bruto neither served them nor had to drop
them to serve the others). The latency normal traffic sees meanwhile is a
benchmark figure (docs/RELIABILITY.md, ``bruto-overload --slow-clients-s``).
"""

from __future__ import annotations

import threading
import uuid

import pytest
import requests
from gateway import Gateway

from bruto.testbed.slowloris import SlowClients

pytestmark = pytest.mark.slow  # real processes

NORMAL_CLIENTS = 4
PAYMENTS_EACH = 60


def test_normal_payments_are_answered_while_hundreds_of_slow_clients_hang_on(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    try:
        workers = gw.worker_pids()
        answers: list[int] = []
        accepted: list[str] = []
        lock = threading.Lock()

        def pay_some():
            session = requests.Session()
            for _ in range(PAYMENTS_EACH):
                correlation_id = str(uuid.uuid4())
                status = session.post(gw.url + "/payments", timeout=30,
                                      data='{"correlationId":"%s","amount":19.90}' % correlation_id).status_code
                with lock:
                    answers.append(status)
                    if status == 202:
                        accepted.append(correlation_id)

        with SlowClients("127.0.0.1", gw.port, heads=200, bodies=100, readers=20, interval_s=0.5) as slow:
            clients = [threading.Thread(target=pay_some) for _ in range(NORMAL_CLIENTS)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            still_open = slow.open
            # A new client, on a new connection, is still served.
            assert gw.pay().status_code == 202
            accepted.append("one more")

        assert answers == [202] * (NORMAL_CLIENTS * PAYMENTS_EACH)
        assert still_open == 320, "bruto dropped slow clients to serve the others"
        assert gw.worker_pids() == workers
        gw.wait_settled(clean_processors, expected=len(accepted), timeout=60)
        for correlation_id in accepted[:-1:10]:
            assert clean_processors.default.get_payment(correlation_id) is not None
    finally:
        gw.stop()
