"""What the judge starts, started: docker-compose.yml with real Docker, beside the processors' compose file.

A payment through `docker compose up` and its summary; a container that crashes comes back with nothing
accepted lost; the `metrics` profile's Prometheus holds bruto's counters, and every panel of the Grafana
dashboard (conf/grafana/bruto.json) finds a series in it.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import requests

from bruto.testbed.faults.containers import state

DASHBOARD = Path(__file__).resolve().parents[2] / "conf" / "grafana" / "bruto.json"
BRUTO = {"balancer", "api1", "api2", "dispatcher"}


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def pay(url: str, amount: str = "19.90", correlation_id: str | None = None) -> tuple[str, int]:
    correlation_id = correlation_id or str(uuid.uuid4())
    answer = requests.post(f"{url}/payments", data=f'{{"correlationId":"{correlation_id}","amount":{amount}}}',
                           headers={"Content-Type": "application/json"}, timeout=5)
    return correlation_id, answer.status_code


def summary(url: str) -> dict:
    return requests.get(f"{url}/payments-summary", timeout=5).json()


def settled(url: str, processors, expected: int) -> dict | None:
    """bruto's summary once it counts ``expected`` payments and equals both processors' own; else None."""
    ours = summary(url)
    # The admin summary also carries totalFee and feePerTransaction, which bruto's does not.
    theirs = {name: {key: stored[key] for key in ("totalRequests", "totalAmount")}
              for name, stored in (("default", processors.default.admin_summary()),
                                   ("fallback", processors.fallback.admin_summary()))}
    counted = ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"]
    return ours if counted == expected and ours == theirs else None


def test_a_payment_through_docker_compose_up_is_in_its_summary(compose_stack, processors):
    stack = compose_stack()
    assert set(stack.containers()) == BRUTO  # the profile's Prometheus stays out
    correlation_id, status = pay(stack.url)
    assert status == 202
    ours = wait_until(lambda: settled(stack.url, processors, 1), what="the payment in both summaries")
    assert sum(ours[name]["totalAmount"] for name in ours) == pytest.approx(19.90)
    stored = processors.default.get_payment(correlation_id) or processors.fallback.get_payment(correlation_id)
    assert stored is not None
    # The shared regions seen from inside a container, as docs/CONTAINERS.md shows.
    snap = json.loads(stack.run("exec", "-T", "dispatcher", "bruto-shm", "--json", capture=True))
    assert snap["gateway"]["accepted"] == 1 and snap["dispatcher"]["alive"] is True


@pytest.mark.parametrize("service", ["dispatcher", "api1"])
def test_a_crashed_container_comes_back_and_nothing_accepted_is_lost(compose_stack, processors, service):
    """The container's main process killed from the host (a crash, an out-of-memory kill): Docker restarts it."""
    stack = compose_stack()
    container = stack.containers()[service]
    accepted = [cid for cid, status in (pay(stack.url) for _ in range(20)) if status == 202]
    assert len(accepted) == 20
    running, restarts, pid = state(container)
    assert running
    os.kill(pid, signal.SIGKILL)
    # Sent while the container is down or coming back: accepted into intake (or, with api1 down, by api2).
    for _ in range(20):
        try:
            correlation_id, status = pay(stack.url)
        except requests.ConnectionError:  # a connection the killed API held: never answered, never promised
            continue
        if status == 202:
            accepted.append(correlation_id)
    wait_until(lambda: state(container)[0] and state(container)[1] > restarts, what=f"{service} restarted by Docker")
    accepted += [cid for cid, status in (pay(stack.url) for _ in range(20)) if status == 202]
    assert len(accepted) >= 50
    wait_until(lambda: settled(stack.url, processors, len(accepted)), what="every accepted payment in both summaries")
    stored = {cid: [name for name, p in (("default", processors.default), ("fallback", processors.fallback))
                    if p.get_payment(cid)] for cid in accepted}
    assert {cid: where for cid, where in stored.items() if len(where) != 1} == {}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel, PromQL) of every target of the Grafana dashboard, Grafana's rate window made concrete."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$__rate_interval", "1m"))
            for panel in dashboard["panels"] for target in panel["targets"]]


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        found = json.loads(answer.read())
    assert found["status"] == "success", (expr, found)
    return found["data"]["result"]


def value(prometheus: str, expr: str) -> float | None:
    found = query(prometheus, expr)
    return float(found[0]["value"][1]) if found else None


def test_the_metrics_profile_holds_brutos_counters_and_every_panel_finds_a_series(compose_stack, compose_env,
                                                                                  processors):
    stack = compose_stack("metrics")
    assert set(stack.containers()) == BRUTO | {"prometheus"}
    prometheus = f"http://127.0.0.1:{compose_env['BRUTO_PROMETHEUS_PORT']}"
    for _ in range(10):
        assert pay(stack.url)[1] == 202
    assert pay(stack.url, amount="-1")[1] == 422
    wait_until(lambda: settled(stack.url, processors, 10), what="the payments confirmed")
    # conf/prometheus.yml scrapes every 5 s: a bounded wait for the scrape after the last confirmation.
    wait_until(lambda: value(prometheus, "sum(bruto_payments_confirmed_total)") == 10, what="Prometheus sees 10")
    assert value(prometheus, 'sum(bruto_http_requests_total{route="payments",status="202"})') == 10
    assert value(prometheus, "sum(bruto_payments_rejected_total)") == 1
    assert value(prometheus, "sum(bruto_ledger_amount_cents)") == 10 * 1990
    assert value(prometheus, "bruto_dispatcher_up") == 1
    assert value(prometheus, "sum(bruto_worker_up)") == 2
    assert [s["metric"]["instance"] for s in query(prometheus, 'up{job="bruto"}')] == ["balancer:9999"]

    # Every panel: a series once two scrapes are in its rate window (a panel over a renamed metric stays empty).
    def empty() -> list[tuple[str, str]]:
        return [(panel, expr) for panel, expr in dashboard_expressions() if not query(prometheus, expr)]
    last = []

    def all_found() -> bool:
        last[:] = empty()
        return not last
    try:
        wait_until(all_found, timeout=60, what="a series for every panel")
    except AssertionError:
        raise AssertionError(f"panels without a series: {last}") from None
