"""The HTTP API in-process (falcon.testing) over real shared-memory regions."""

from __future__ import annotations

import os
import uuid

import falcon.testing
import pytest

from bruto.config import Settings
from bruto.gateway.app import create_app
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import create_all
from bruto.shm.layout import open_intake
from bruto.shm.layout import open_ledger
from bruto.shm.ledger import LedgerWriter
from bruto.timefmt import parse_iso


@pytest.fixture
def settings(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=2, ledger_capacity=4)
    create_all(settings)
    return settings


@pytest.fixture
def client(settings):
    return falcon.testing.TestClient(create_app(settings))


def test_a_payment_is_in_intake_when_202_is_answered(client, settings):
    correlation_id = uuid.uuid4()
    result = client.simulate_post("/payments", json={"correlationId": str(correlation_id), "amount": 19.90})
    assert result.status_code == 202
    slab = open_intake(settings, 0)
    assert int(slab.counters["written"]) == 1
    assert slab.records[0]["correlation_id"].tobytes() == correlation_id.bytes
    assert int(slab.records[0]["amount_cents"]) == 1990


def test_a_bad_payment_gets_a_json_error_and_changes_nothing(client, settings):
    result = client.simulate_post("/payments", body='{"correlationId": "nope", "amount": 1}')
    assert result.status_code == 422
    assert result.json == {"error": "correlationId must be a UUID"}
    assert int(open_intake(settings, 0).counters["written"]) == 0


def test_a_full_intake_answers_503_and_accepts_nothing_more(client, settings):
    for _ in range(2):
        assert client.simulate_post("/payments", json={"correlationId": str(uuid.uuid4()), "amount": 1}).status_code == 202
    result = client.simulate_post("/payments", json={"correlationId": str(uuid.uuid4()), "amount": 1})
    assert result.status_code == 503
    assert result.headers["Retry-After"] == "1"
    assert int(open_intake(settings, 0).counters["written"]) == 2


def test_summary_renders_exact_totals_within_inclusive_bounds(client, settings):
    writer = LedgerWriter(open_ledger(settings))
    at = parse_iso("2025-07-15T12:00:00.000Z")
    writer.append(b"\x01" * 16, at, 1990, DEFAULT)
    writer.append(b"\x02" * 16, at + 1000, 10, FALLBACK)
    writer.append(b"\x03" * 16, at + 2000, 5, DEFAULT)
    result = client.simulate_get("/payments-summary", query_string="from=2025-07-15T12:00:00.000Z&to=2025-07-15T12:00:00.001Z")
    assert result.status_code == 200
    assert result.text == ('{"default":{"totalRequests":1,"totalAmount":19.90},'
                           '"fallback":{"totalRequests":1,"totalAmount":0.10}}')
    assert client.simulate_get("/payments-summary").json["default"] == {"totalRequests": 2, "totalAmount": 19.95}
    assert "X-Bruto-Summary-Truncated" not in client.simulate_get("/payments-summary").headers


@pytest.mark.parametrize("query", ["from=yesterday", "to=2025-13-01T00:00:00Z", "from=", "to=12345"])
def test_a_bad_date_gets_400_naming_the_parameter(client, query):
    result = client.simulate_get("/payments-summary", query_string=query)
    assert result.status_code == 400
    assert result.json["error"].startswith(query.split("=")[0] + " must be an ISO-8601 date-time")


def test_summary_says_when_its_window_reaches_overwritten_records(client, settings):
    writer = LedgerWriter(open_ledger(settings))
    for i in range(6):  # ring of 4
        writer.append(bytes([i]) * 16, 1_000_000 * (i + 1), 100, DEFAULT)
    result = client.simulate_get("/payments-summary")
    assert result.headers["X-Bruto-Summary-Truncated"] == "true"
    assert result.json["default"]["totalRequests"] == 4
    recent = client.simulate_get("/payments-summary", query_string="from=1970-01-01T00:00:03.000Z")
    assert "X-Bruto-Summary-Truncated" not in recent.headers


@pytest.mark.parametrize("method, path, status, error", [
    ("GET", "/nowhere", 404, "no such endpoint: /nowhere"),
    ("GET", "/payments", 405, "GET is not allowed on /payments; allowed: POST, OPTIONS"),
    ("POST", "/payments-summary", 405, "POST is not allowed on /payments-summary; allowed: GET, OPTIONS"),
])
def test_unknown_routes_and_methods_answer_bruto_errors(client, method, path, status, error):
    result = client.simulate_request(method, path)
    assert result.status_code == status
    assert result.headers["content-type"] == "application/json"
    assert result.json == {"error": error}


def test_an_oversized_body_gets_the_one_413_message(client):
    result = client.simulate_post("/payments", body=b" " * 70_000)
    assert (result.status_code, result.json) == (413, {"error": "body is larger than 4096 bytes"})


def test_a_window_whose_from_is_after_its_to_sums_nothing(client, settings):
    LedgerWriter(open_ledger(settings)).append(b"\x01" * 16, parse_iso("2025-07-15T12:00:00.000Z"), 1990, DEFAULT)
    result = client.simulate_get("/payments-summary",
                                 query_string="from=2025-07-16T00:00:00.000Z&to=2025-07-14T00:00:00.000Z")
    assert result.status_code == 200
    assert result.json == {"default": {"totalRequests": 0, "totalAmount": 0}, "fallback": {"totalRequests": 0, "totalAmount": 0}}


def test_metrics_answer_503_naming_a_missing_region(client, settings):
    os.unlink(os.path.join(settings.shm_dir, "metrics.bin"))
    result = client.simulate_get("/metrics")
    assert result.status_code == 503
    assert "metrics.bin" in result.json["error"]
