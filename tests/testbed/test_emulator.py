"""The processor emulator over real HTTP, against real processes.

Each test pins one behaviour of docs/CHALLENGE.md §2 (docs/EMULATOR.md maps
them). Durations are asserted only where they are the behaviour: a request
waits out its delay, a queued health call is served in a later window.
"""

from __future__ import annotations

import concurrent.futures
import decimal
import json
import time
import uuid

import pytest
import requests

pytestmark = pytest.mark.slow  # real processes

TOKEN = {"X-Rinha-Token": "123"}
AT = "2025-07-15T12:34:56.000Z"


def post_payment(url: str, correlation_id: str | None = None, amount: object = 19.90,
                 requested_at: str = AT, timeout: float = 10) -> requests.Response:
    body = {"correlationId": correlation_id or str(uuid.uuid4()), "amount": amount,
            "requestedAt": requested_at}
    return requests.post(f"{url}/payments", json=body, timeout=timeout)


def exact(text: str) -> dict:
    """JSON with its numbers as Decimals, to compare money exactly."""
    return json.loads(text, parse_float=decimal.Decimal)


def timed(call, *args, **kwargs):
    """Runs call(*args, **kwargs); returns (result, start, end) on the monotonic clock."""
    start = time.monotonic()
    result = call(*args, **kwargs)
    return result, start, time.monotonic()


@pytest.fixture(scope="module")
def pool():
    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as executor:
        yield executor


# ------------------------------------------------------------ fixture itself

def test_fixture_starts_a_default_and_a_fallback_processor(clean_processors):
    default, fallback = clean_processors.default, clean_processors.fallback
    assert default.url != fallback.url
    assert default.url.startswith("http://127.0.0.1:")
    assert default.admin_summary()["feePerTransaction"] == 0.05
    assert fallback.admin_summary()["feePerTransaction"] == 0.15


def test_clean_processors_resets_delay_failure_token_and_payments(clean_processors):
    default = clean_processors.default
    assert post_payment(default.url).status_code == 200
    default.set_delay(50)
    default.set_failure(True)
    default.set_token("changed")
    clean_processors.reset()
    assert default.token == "123"
    assert default.set_delay(0)["was"] == 0
    assert default.set_failure(False)["was"] is False
    assert default.admin_summary()["totalRequests"] == 0


# ------------------------------------------------------------ POST /payments, GET by id

def test_payment_is_stored_and_read_back_by_id(clean_processors):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    response = post_payment(processor.url, correlation_id, 19.90, "2025-07-15T12:34:56.123Z")
    assert response.status_code == 200
    assert response.json() == {"message": "payment processed successfully"}
    stored = requests.get(f"{processor.url}/payments/{correlation_id}", timeout=10)
    assert stored.status_code == 200
    assert exact(stored.text) == {"correlationId": correlation_id,
                                  "amount": decimal.Decimal("19.90"),
                                  "requestedAt": "2025-07-15T12:34:56.123Z"}
    assert processor.get_payment(str(uuid.uuid4())) is None  # 404
    # Stored on the processor it was sent to only.
    assert clean_processors.fallback.get_payment(correlation_id) is None


def test_get_payment_with_an_id_that_is_not_a_guid_is_400(clean_processors):
    response = requests.get(f"{clean_processors.default.url}/payments/not-a-guid", timeout=10)
    assert response.status_code == 400


def test_duplicate_correlation_id_is_422_with_a_message_and_changes_nothing(clean_processors):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    assert post_payment(processor.url, correlation_id, 10.00).status_code == 200
    duplicate = post_payment(processor.url, correlation_id, 20.00)
    assert duplicate.status_code == 422
    assert duplicate.json()["message"]
    assert processor.get_payment(correlation_id)["amount"] == 10.0
    assert processor.admin_summary()["totalRequests"] == 1


@pytest.mark.parametrize("sent, stored", [
    (19.9, "19.90"), (19.905, "19.91"), (19.904, "19.90"), (0.005, "0.01"),
    (1.999, "2.00"), (7, "7.00"), (-0.005, "-0.01"), (123456789.125, "123456789.13"),
])
def test_amount_is_stored_rounded_to_two_decimals_half_away_from_zero(
        clean_processors, sent, stored):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    assert post_payment(processor.url, correlation_id, sent).status_code == 200
    row = requests.get(f"{processor.url}/payments/{correlation_id}", timeout=10).text
    assert f'"amount":{stored},' in row
    assert exact(processor.admin_summary_text())["totalAmount"] == decimal.Decimal(stored)


@pytest.mark.parametrize("sent, shown", [
    ("2025-07-15T12:34:56.123456Z", "2025-07-15T12:34:56.123456Z"),
    ("2025-07-15T12:34:56.000Z", "2025-07-15T12:34:56Z"),
    ("2025-07-15T12:34:56.5Z", "2025-07-15T12:34:56.5Z"),
    ("2025-07-15T12:34:56.000001+00:00", "2025-07-15T12:34:56.000001Z"),
    ("2025-07-15T09:34:56.000-03:00", "2025-07-15T12:34:56Z"),
])
def test_requested_at_is_stored_at_microsecond_precision(clean_processors, sent, shown):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    assert post_payment(processor.url, correlation_id, requested_at=sent).status_code == 200
    assert processor.get_payment(correlation_id)["requestedAt"] == shown


def test_summary_bounds_are_exact_to_the_microsecond(clean_processors):
    processor = clean_processors.default
    post_payment(processor.url, requested_at="2025-07-15T12:34:56.123456Z")
    assert processor.admin_summary("2025-07-15T12:34:56.123456Z",
                                   "2025-07-15T12:34:56.123456Z")["totalRequests"] == 1
    assert processor.admin_summary("2025-07-15T12:34:56.123457Z",
                                   "2025-07-15T12:35:00.000Z")["totalRequests"] == 0
    assert processor.admin_summary("2025-07-15T12:34:00.000Z",
                                   "2025-07-15T12:34:56.123455Z")["totalRequests"] == 0


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    b"null",
    b'{"amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "nope", "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": 12, "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": "19.9", "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": true, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "yesterday"}',
])
def test_malformed_payment_is_400_and_stores_nothing(clean_processors, body):
    processor = clean_processors.default
    response = requests.post(f"{processor.url}/payments", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert processor.admin_summary()["totalRequests"] == 0


def test_payment_without_a_json_content_type_is_415(clean_processors):
    processor = clean_processors.default
    body = json.dumps({"correlationId": str(uuid.uuid4()), "amount": 1, "requestedAt": AT})
    response = requests.post(f"{processor.url}/payments", data=body,
                             headers={"Content-Type": "text/plain"}, timeout=10)
    assert response.status_code == 415
    assert processor.admin_summary()["totalRequests"] == 0


# ------------------------------------------------------------ delay and failure

def test_delay_makes_a_payment_wait_at_least_that_long(clean_processors):
    processor = clean_processors.default
    processor.set_delay(300)
    response, start, end = timed(post_payment, processor.url)
    assert response.status_code == 200
    assert end - start >= 0.3


def test_failure_answers_500_and_stores_nothing(clean_processors):
    processor = clean_processors.default
    processor.set_failure(True)
    correlation_id = str(uuid.uuid4())
    assert post_payment(processor.url, correlation_id).status_code == 500
    assert processor.get_payment(correlation_id) is None
    assert processor.admin_summary()["totalRequests"] == 0
    processor.set_failure(False)
    assert post_payment(processor.url, correlation_id).status_code == 200


def test_failure_is_decided_after_the_delay(clean_processors, pool):
    processor = clean_processors.default
    processor.set_delay(800)
    correlation_id = str(uuid.uuid4())
    pending = pool.submit(post_payment, processor.url, correlation_id)
    time.sleep(0.3)  # the payment is now waiting out its delay
    processor.set_failure(True)
    assert pending.result().status_code == 500
    assert processor.get_payment(correlation_id) is None


def test_payment_is_stored_only_after_the_delay(clean_processors, pool):
    processor = clean_processors.default
    processor.set_delay(800)
    correlation_id = str(uuid.uuid4())
    pending = pool.submit(post_payment, processor.url, correlation_id)
    time.sleep(0.3)
    assert processor.get_payment(correlation_id) is None
    assert pending.result().status_code == 200
    assert processor.get_payment(correlation_id) is not None


def test_duplicate_is_detected_after_the_failure_check(clean_processors):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    assert post_payment(processor.url, correlation_id).status_code == 200
    processor.set_failure(True)
    assert post_payment(processor.url, correlation_id).status_code == 500


def test_a_new_delay_applies_only_to_payments_that_arrive_after_it(clean_processors, pool):
    processor = clean_processors.default
    processor.set_delay(1500)
    slow = pool.submit(timed, post_payment, processor.url)
    time.sleep(0.3)
    processor.set_delay(0)  # the waiting payment keeps its 1.5 s
    fast, fast_start, fast_end = timed(post_payment, processor.url)
    (slow_response, slow_start, slow_end) = slow.result()
    assert fast.status_code == 200 and slow_response.status_code == 200
    assert slow_end - slow_start >= 1.5
    assert fast_end < slow_end  # did not wait behind it nor for 1.5 s
    assert fast_end - fast_start < 1.0


def test_waiting_payments_do_not_stall_the_other_endpoints(clean_processors, pool):
    processor = clean_processors.default
    processor.set_delay(3000)
    waiting = [pool.submit(post_payment, processor.url) for _ in range(50)]
    time.sleep(0.3)
    _, start, end = timed(processor.admin_summary)
    assert end - start < 1.0
    assert all(future.result().status_code == 200 for future in waiting)
    assert processor.admin_summary()["totalRequests"] == 50


def test_delay_and_failure_configuration_answer_config_was_is(clean_processors):
    processor = clean_processors.default
    assert processor.set_delay(100) == {"config": "delay", "was": 0, "is": 100}
    assert processor.set_delay(2000) == {"config": "delay", "was": 100, "is": 2000}
    assert processor.set_failure(True) == {"config": "failure", "was": False, "is": True}
    assert processor.set_failure(False) == {"config": "failure", "was": True, "is": False}


@pytest.mark.parametrize("path, body", [
    ("delay", {"delay": "100"}), ("delay", {"delay": -1}), ("delay", {}),
    ("failure", {"failure": "true"}), ("failure", {}), ("token", {"token": 5}),
])
def test_invalid_configuration_is_400(clean_processors, path, body):
    response = requests.put(f"{clean_processors.default.url}/admin/configurations/{path}",
                            json=body, headers=TOKEN, timeout=10)
    assert response.status_code == 400


# ------------------------------------------------------------ admin: token, summary, purge

ADMIN_CALLS = [
    ("GET", "/admin/payments-summary", None),
    ("PUT", "/admin/configurations/token", {"token": "x"}),
    ("PUT", "/admin/configurations/delay", {"delay": 10}),
    ("PUT", "/admin/configurations/failure", {"failure": True}),
    ("POST", "/admin/purge-payments", None),
]


@pytest.mark.parametrize("method, path, body", ADMIN_CALLS)
@pytest.mark.parametrize("headers", [{}, {"X-Rinha-Token": "124"}])
def test_admin_endpoints_need_the_token(clean_processors, method, path, body, headers):
    processor = clean_processors.default
    assert post_payment(processor.url).status_code == 200
    response = requests.request(method, processor.url + path, json=body, headers=headers,
                                timeout=10)
    assert response.status_code == 401
    # Nothing changed.
    assert processor.set_delay(0)["was"] == 0
    assert processor.set_failure(False)["was"] is False
    assert processor.admin_summary()["totalRequests"] == 1


def test_token_change_is_204_and_the_old_token_stops_working(clean_processors):
    processor = clean_processors.default
    response = requests.put(f"{processor.url}/admin/configurations/token",
                            json={"token": "s3cret"}, headers=TOKEN, timeout=10)
    assert response.status_code == 204
    old = requests.get(f"{processor.url}/admin/payments-summary", headers=TOKEN, timeout=10)
    assert old.status_code == 401
    new = requests.get(f"{processor.url}/admin/payments-summary",
                       headers={"X-Rinha-Token": "s3cret"}, timeout=10)
    assert new.status_code == 200
    processor.token = "s3cret"  # so that the next reset can restore 123


def test_summary_counts_between_inclusive_bounds_with_fees(clean_processors):
    stamps = ["2025-07-15T12:00:00.000Z", "2025-07-15T12:00:01.000Z",
              "2025-07-15T12:00:02.000Z", "2025-07-15T12:00:03.000Z"]
    for processor in (clean_processors.default, clean_processors.fallback):
        for stamp in stamps:
            assert post_payment(processor.url, amount=19.90, requested_at=stamp).status_code == 200
    default = exact(clean_processors.default.admin_summary_text(stamps[1], stamps[2]))
    assert default == {"totalRequests": 2, "totalAmount": decimal.Decimal("39.80"),
                       "totalFee": decimal.Decimal("1.99"),
                       "feePerTransaction": decimal.Decimal("0.05")}
    fallback = exact(clean_processors.fallback.admin_summary_text(stamps[0], stamps[3]))
    assert fallback == {"totalRequests": 4, "totalAmount": decimal.Decimal("79.60"),
                        "totalFee": decimal.Decimal("11.94"),
                        "feePerTransaction": decimal.Decimal("0.15")}


def test_summary_fee_is_exact(clean_processors):
    processor = clean_processors.default
    post_payment(processor.url, amount=19.90)
    summary = exact(processor.admin_summary_text())
    assert summary["totalFee"] == decimal.Decimal("0.995")


def test_summary_counts_every_row_when_a_bound_is_missing(clean_processors):
    processor = clean_processors.default
    post_payment(processor.url, requested_at="2020-01-01T00:00:00.000Z")
    post_payment(processor.url, requested_at="2030-01-01T00:00:00.000Z")
    inside = "2025-01-01T00:00:00.000Z"
    assert processor.admin_summary(inside, inside)["totalRequests"] == 0
    assert processor.admin_summary()["totalRequests"] == 2
    assert processor.admin_summary(from_=inside)["totalRequests"] == 2
    assert processor.admin_summary(to=inside)["totalRequests"] == 2


def test_summary_with_a_malformed_bound_is_400(clean_processors):
    response = requests.get(f"{clean_processors.default.url}/admin/payments-summary",
                            params={"from": "soon", "to": AT}, headers=TOKEN, timeout=10)
    assert response.status_code == 400


def test_purge_deletes_every_payment(clean_processors):
    processor = clean_processors.default
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for correlation_id in ids:
        assert post_payment(processor.url, correlation_id).status_code == 200
    response = requests.post(f"{processor.url}/admin/purge-payments", headers=TOKEN, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"message": "All payments purged."}
    assert processor.admin_summary()["totalRequests"] == 0
    assert processor.get_payment(ids[0]) is None
    assert post_payment(processor.url, ids[0]).status_code == 200  # no longer a duplicate


# ------------------------------------------------------------ service-health

def health(url: str) -> requests.Response:
    return requests.get(f"{url}/payments/service-health", timeout=30)


def test_health_reports_failure_and_delay(start_emulator):
    processor = start_emulator(health_window=0.2)
    assert health(processor.url).json() == {"failing": False, "minResponseTime": 0}
    processor.set_delay(250)
    processor.set_failure(True)
    assert health(processor.url).json() == {"failing": True, "minResponseTime": 250}


def test_health_serves_one_call_per_window_queues_two_oldest_first_rejects_the_rest(
        start_emulator, pool):
    window = 1.0
    processor = start_emulator(health_window=window)
    calls = []
    for _ in range(4):  # arrive in this order, all within the first window
        calls.append(pool.submit(timed, health, processor.url))
        time.sleep(0.02)
    (first, _, first_end), (second, _, second_end), (third, _, third_end), \
        (fourth, _, _) = [call.result() for call in calls]
    assert fourth.status_code == 429
    assert int(fourth.headers["Retry-After"]) >= 1
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
    # One per window, the oldest caller first.
    assert first_end < second_end < third_end
    assert second_end - first_end >= 0.5 * window
    assert third_end - second_end >= 0.9 * window
    # The queue has drained: a later caller is served again.
    assert health(processor.url).status_code == 200


def test_health_is_not_taken_for_a_payment_id(start_emulator):
    response = health(start_emulator().url)
    assert response.status_code == 200
    assert set(response.json()) == {"failing", "minResponseTime"}


# ------------------------------------------------------------ concurrency limiter

def test_concurrency_limiter_admits_queues_then_answers_429(start_emulator, pool):
    processor = start_emulator(extra_args=("--max-concurrency", "2", "--max-queue", "1"))
    processor.set_delay(800)
    admitted = []
    for _ in range(3):  # 2 run, 1 waits in the queue
        admitted.append(pool.submit(post_payment, processor.url))
        time.sleep(0.05)
    time.sleep(0.1)
    assert post_payment(processor.url).status_code == 429
    over = requests.get(f"{processor.url}/payments/{uuid.uuid4()}", timeout=10)
    assert over.status_code == 429  # GET by id shares the limiter
    # Other endpoints are not behind it.
    assert processor.admin_summary()["totalRequests"] == 0
    assert health(processor.url).status_code == 200
    assert [future.result().status_code for future in admitted] == [200, 200, 200]
    assert processor.admin_summary()["totalRequests"] == 3
    processor.set_delay(0)
    assert post_payment(processor.url).status_code == 200  # permits came back
