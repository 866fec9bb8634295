"""GET /metrics and bruto-shm after known traffic: real gunicorn workers, a real dispatcher, emulated processors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
from gateway import Gateway
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow  # real processes

# One body per refusal the app makes (bruto.gateway.validation's table; the
# oversized body is refused by the worker before the app, see below).
INVALID = {
    "invalid_json": (b"{not json", 400),
    "not_an_object": (b"[1, 2]", 400),
    "correlation_id_missing": (b'{"amount": 1}', 422),
    "correlation_id_invalid": (b'{"correlationId": "nope", "amount": 1}', 422),
    "amount_missing": (b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"}', 422),
    "amount_not_a_number": (b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": "1"}', 422),
    "amount_not_positive": (b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 0}', 422),
    "amount_too_precise": (b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 1.001}', 422),
    "amount_too_large": (b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 1e12}', 422),
}


class Answers:
    """Counts the answers a requests.Session gets, by (path, status): what the gateway must have counted."""

    def __init__(self, session):
        self.seen: dict[tuple[str, int], int] = {}
        session.hooks["response"].append(self._count)

    def _count(self, response, *args, **kwargs):
        path = response.request.path_url.partition("?")[0]
        key = (path, response.status_code)
        self.seen[key] = self.seen.get(key, 0) + 1

    def __getitem__(self, key) -> int:
        return self.seen.get(key, 0)


def scrape(gateway: Gateway) -> dict:
    response = gateway.http.get(gateway.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (e.g. over every slot)."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and labels.items() <= dict(sample_labels).items())


def read_snapshot(gateway: Gateway) -> dict:
    """``bruto-shm --json`` on the gateway's shared directory, found through BRUTO_SHM_DIR (no flag)."""
    shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--json"], env=gateway.env,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def oversized_post(port: int) -> int:
    """POST /payments with a body over the limit: the worker answers 413 before the app sees it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /payments HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        return int(sock.recv(4096).split(b" ", 2)[1])


def test_metrics_and_the_inspector_match_the_traffic_sent(gateway, clean_processors):
    answers = Answers(gateway.http)
    # Gateway.start's readiness probes: one answered, maybe more that the probe
    # gave up on (1 s) on a loaded machine, which the workers answered and counted.
    probes = sum(slab["requests"].get("payments_summary", {}).get("200", 0)
                 for slab in read_snapshot(gateway)["intake"])
    answers.seen[("/payments-summary", 200)] = probes
    before = [(uuid.uuid4(), f"{n + 1}.{n:02d}") for n in range(20)]
    for correlation_id, amount in before:
        assert gateway.pay(correlation_id, amount).status_code == 202
    for reason, (body, status) in INVALID.items():
        assert gateway.http.post(gateway.url + "/payments", data=body, timeout=5).status_code == status, reason
    assert oversized_post(gateway.port) == 413
    assert gateway.http.get(gateway.url + "/payments-summary", params={"from": "yesterday"}).status_code == 400
    assert gateway.http.get(gateway.url + "/nowhere").status_code == 404
    assert gateway.http.get(gateway.url + "/payments").status_code == 405
    gateway.wait_settled(clean_processors, expected=20)
    assert gateway.http.get(f"{gateway.url}/payments/{before[0][0]}").status_code == 200
    assert gateway.http.get(f"{gateway.url}/payments/{uuid.uuid4()}").status_code == 404
    assert gateway.http.get(gateway.url + "/payments/not-a-uuid").status_code == 422
    assert gateway.http.post(f"{gateway.url}/payments/{uuid.uuid4()}").status_code == 405
    for correlation_id, amount in before[:3]:  # repeated: answered 202, dropped by the dispatcher
        assert gateway.pay(correlation_id, amount).status_code == 202
    # A purge skips what the dispatcher has not drained yet: let it see the repeats first.
    deadline = time.monotonic() + 10
    while read_snapshot(gateway)["dispatcher"]["duplicates_dropped"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    clean_processors.default.purge()
    assert gateway.http.post(gateway.url + "/purge-payments", timeout=10).status_code == 200
    after = [(uuid.uuid4(), "19.90") for _ in range(5)]
    for correlation_id, amount in after:
        assert gateway.pay(correlation_id, amount).status_code == 202
    gateway.wait_settled(clean_processors, expected=5)
    answered = sum(answers.seen.values())

    samples = scrape(gateway)
    cents = sum(round(float(amount) * 100) for _, amount in before + after)
    # What the gateway answered, added up over its two workers' slots.
    assert total(samples, "bruto_http_requests_total", route="payments", status="202") == 28
    assert total(samples, "bruto_http_requests_total", route="payments", status="400") == 2
    assert total(samples, "bruto_http_requests_total", route="payments", status="422") == 7
    assert total(samples, "bruto_http_requests_total", route="payments", status="405") == 1
    assert total(samples, "bruto_http_requests_total", route="other", status="404") == 1
    assert total(samples, "bruto_http_requests_total", route="purge_payments", status="200") == 1
    assert total(samples, "bruto_http_requests_total", route="payments_summary", status="400") == 1
    assert (total(samples, "bruto_http_requests_total", route="payments_summary", status="200")
            == answers[("/payments-summary", 200)])
    assert total(samples, "bruto_http_requests_total", route="metrics", status="200") == 0  # counted once answered
    for status in ("200", "404", "422", "405"):  # GET /payments/{id}, and a POST to it
        assert total(samples, "bruto_http_requests_total", route="payments_by_id", status=status) == 1, status
    for reason in INVALID:
        assert total(samples, "bruto_payments_rejected_total", reason=reason) == 1, reason
    assert total(samples, "bruto_payments_rejected_total", reason="intake_full") == 0
    assert total(samples, "bruto_http_protocol_errors_total", status="413") == 1
    assert total(samples, "bruto_http_requests_total") == answered  # every answer the app gave, once
    assert total(samples, "bruto_intake_backlog") == 0
    assert total(samples, "bruto_worker_up") == 2
    # What the dispatcher did with it.
    default = {"processor": "default"}
    assert total(samples, "bruto_payment_attempts_total", **default) == 25
    assert total(samples, "bruto_payment_outcomes_total", outcome="stored", **default) == 25
    assert total(samples, "bruto_payment_retries_total") == 0
    assert total(samples, "bruto_payments_confirmed_total", **default) == 25
    assert total(samples, "bruto_payments_confirmed_cents_total", **default) == cents
    assert total(samples, "bruto_payment_send_duration_seconds_count", **default) == 25
    assert total(samples, "bruto_outbox_wait_seconds_count") == 25
    assert total(samples, "bruto_payment_duplicates_dropped_total") == 3
    assert total(samples, "bruto_purges_total") == 1
    assert total(samples, "bruto_payment_attempts_total", processor="fallback") == 0
    # The state now: the ledger counts what came after the purge, nothing waits.
    assert total(samples, "bruto_ledger_payments", **default) == 5
    assert total(samples, "bruto_ledger_amount_cents", **default) == 5 * 1990
    assert total(samples, "bruto_ledger_records") == 5
    assert total(samples, "bruto_ledger_appended_total") == 25
    assert total(samples, "bruto_outbox_payments") == 0
    assert total(samples, "bruto_breaker_state", **default) == 0
    assert total(samples, "bruto_dispatcher_up") == 1
    # Any worker answers for all: the next scrapes (through either worker) agree, but for the scrapes themselves.
    for scrapes_before in (1, 2, 3):
        again = scrape(gateway)
        assert total(again, "bruto_http_requests_total", route="metrics") == scrapes_before
        assert total(again, "bruto_payments_confirmed_total") == 25

    snap = read_snapshot(gateway)
    assert snap["gateway"]["accepted"] == 28
    assert snap["gateway"]["rejections"] == dict.fromkeys(INVALID, 1) | {"body_too_large": 0, "intake_full": 0,
                                                                              "overloaded": 0}
    assert snap["processors"]["default"]["confirmed"] == 25
    assert snap["processors"]["default"]["ledger"] == {"totalRequests": 5, "totalCents": 5 * 1990}
    assert snap["dispatcher"]["duplicates_dropped"] == 3
    assert snap["dispatcher"]["purges"] == 1
    assert snap["dispatcher"]["alive"] is True


def test_metrics_name_no_payment_and_no_url(gateway, clean_processors):
    """Nothing secret: no correlationId, no processor URL, no path a client made up."""
    correlation_id = uuid.uuid4()
    gateway.pay(correlation_id)
    gateway.http.get(gateway.url + "/secret-looking-path-123")
    gateway.wait_settled(clean_processors, expected=1)
    text = gateway.http.get(gateway.url + "/metrics", timeout=5).text
    for secret in (str(correlation_id), correlation_id.hex, "secret-looking", clean_processors.default.url,
                   gateway.env["BRUTO_SHM_DIR"]):
        assert secret not in text


def test_a_purge_token_is_checked_and_shown_nowhere(tmp_path, clean_processors):
    """BRUTO_PURGE_TOKEN: a purge without it is refused and changes nothing; the token is in no answer,
    no metric and no log."""
    token = "purge-token-" + uuid.uuid4().hex
    gw = Gateway.start(tmp_path, clean_processors, workers=2, purge_token=token)
    try:
        for _ in range(3):
            assert gw.pay().status_code == 202
        gw.wait_settled(clean_processors, expected=3)
        for headers in ({}, {"X-Bruto-Token": "guess"}, {"X-Bruto-Token": token[:-1]}):
            refused = gw.http.post(gw.url + "/purge-payments", headers=headers, timeout=10)
            assert refused.status_code == 401 and token not in refused.text
        assert gw.summary()["default"]["totalRequests"] == 3
        assert gw.http.post(gw.url + "/purge-payments", headers={"X-Bruto-Token": token}, timeout=10).status_code == 200
        assert gw.summary()["default"]["totalRequests"] == 0
        samples = scrape(gw)
        assert total(samples, "bruto_http_requests_total", route="purge_payments", status="401") == 3
        assert total(samples, "bruto_http_requests_total", route="purge_payments", status="200") == 1
        text = gw.http.get(gw.url + "/metrics", timeout=5).text
        assert token not in text
        shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--json"], env=gw.env,
                               capture_output=True, text=True, timeout=30)
        assert token not in shown.stdout + shown.stderr
    finally:
        gw.stop()
    assert token not in gw.log("gunicorn") + gw.log("dispatcher-0")
