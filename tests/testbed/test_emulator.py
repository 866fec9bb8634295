"""The processor emulator over real HTTP, against real processes.

Each test pins one behaviour of docs/CHALLENGE.md §2 (docs/EMULATOR.md maps
them). Durations are asserted only where they are the behaviour: a request
waits out its delay, a queued health call is served in a later window.
"""

from __future__ import annotations

import concurrent.futures
import decimal
import json
import socket
import time
import uuid

import pytest
import requests

pytestmark = pytest.mark.slow  # real processes

TOKEN = {"X-Rinha-Token": "123"}
AT = "2025-07-15T12:34:56.000Z"
JSON_UTF8 = "application/json; charset=utf-8"


def post_payment(url: str, correlation_id: str | None = None, amount: object = 19.90,
                 requested_at: str = AT, timeout: float = 10) -> requests.Response:
    body = {"correlationId": correlation_id or str(uuid.uuid4()), "amount": amount,
            "requestedAt": requested_at}
    return requests.post(f"{url}/payments", json=body, timeout=timeout)


def post_raw(url: str, body: str) -> requests.Response:
    """POST /payments with a body exactly as written (numbers keep their spelling)."""
    return requests.post(f"{url}/payments", data=body.encode(),
                         headers={"Content-Type": "application/json"}, timeout=10)


def raw_exchange(port: int, request: bytes) -> bytes:
    """Sends raw bytes on a new connection; returns all the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


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
    response = post_raw(processor.url, f'{{"correlationId":"{correlation_id}","amount":19.90,'
                                       f'"requestedAt":"2025-07-15T12:34:56.123Z"}}')
    assert response.status_code == 200
    assert response.json() == {"message": "payment processed successfully"}
    stored = requests.get(f"{processor.url}/payments/{correlation_id}", timeout=10)
    assert stored.status_code == 200
    # The real service's spelling: the amount as sent (19.90), the timestamp
    # without offset (PostgreSQL timestamp through System.Text.Json).
    assert stored.text == (f'{{"correlationId":"{correlation_id}","amount":19.90,'
                           f'"requestedAt":"2025-07-15T12:34:56.123"}}')
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
    # decimal.Round(amount, 2): banker's rounding of a third decimal.
    ("19.905", "19.90"), ("19.915", "19.92"), ("19.904", "19.90"), ("0.005", "0.00"),
    ("0.015", "0.02"), ("1.999", "2.00"), ("-0.005", "0.00"), ("123456789.125", "123456789.12"),
    ("1.0000", "1.00"),
    # Two decimals or fewer: the value keeps its own scale.
    ("19.90", "19.90"), ("19.9", "19.9"), ("7", "7"), ("10", "10"), ("0.00", "0.00"),
    # Exponents are applied.
    ("1e2", "100"), ("1E+2", "100"), ("1.5e-1", "0.15"), ("1990e-2", "19.90"),
    # Numeric strings, read as numbers (System.Text.Json web defaults).
    ('"7.5"', "7.5"), ('"19.90"', "19.90"), ('"1e2"', "100"), ('"19.905"', "19.90"),
    ('"+7.5"', "7.5"), ('".5"', "0.5"), ('"5."', "5"),
])
def test_amount_is_stored_as_a_decimal_rounded_half_to_even_keeping_its_scale(
        clean_processors, sent, stored):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    response = post_raw(processor.url, f'{{"correlationId":"{correlation_id}","amount":{sent},'
                                       f'"requestedAt":"{AT}"}}')
    assert response.status_code == 200
    row = requests.get(f"{processor.url}/payments/{correlation_id}", timeout=10).text
    assert f'"amount":{stored},' in row
    assert f'"totalAmount":{stored},' in processor.admin_summary_text()


@pytest.mark.parametrize("sent, shown", [
    ("2025-07-15T12:34:56.123456Z", "2025-07-15T12:34:56.123456"),
    ("2025-07-15T12:34:56.000Z", "2025-07-15T12:34:56"),
    ("2025-07-15T12:34:56.5Z", "2025-07-15T12:34:56.5"),
    ("2025-07-15T12:34:56.1234567Z", "2025-07-15T12:34:56.123456"),  # truncated, not rounded
    ("2025-07-15T12:34:56.9999999Z", "2025-07-15T12:34:56.999999"),
    ("2025-07-15T12:34:56.000001+00:00", "2025-07-15T12:34:56.000001"),
    ("2025-07-15T09:34:56.000-03:00", "2025-07-15T12:34:56"),  # converted to UTC
    ("2025-07-15T14:34+02", "2025-07-15T12:34:00"),
    ("2025-07-15T12:34:56", "2025-07-15T12:34:56"),
    ("2025-07-15T12:34", "2025-07-15T12:34:00"),
    ("2025-07-15", "2025-07-15T00:00:00"),  # a date alone is midnight
])
def test_requested_at_is_stored_as_a_timestamp_and_read_back_without_offset(
        clean_processors, sent, shown):
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
    b"",
    b'{"correlationId": null, "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "nope", "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": 12, "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b87d264d9daa194dc1c7cf60b3", "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "{4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3}", "amount": 19.9, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": null, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": "19,9", "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": " 19.9", "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": true, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": NaN, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 1e400, "requestedAt": "2025-07-15T12:34:56.000Z"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": null}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "yesterday"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "2025-07-15 12:34:56"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "2025-07-15T12:34:56+15:00"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "2025-07-15T12"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": "2025-02-30"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 19.9, "requestedAt": 1752582896}',
])
def test_malformed_payment_is_400_and_stores_nothing(clean_processors, body):
    processor = clean_processors.default
    response = requests.post(f"{processor.url}/payments", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert processor.admin_summary()["totalRequests"] == 0


def test_missing_fields_take_the_dotnet_defaults(clean_processors):
    processor = clean_processors.default
    assert post_raw(processor.url, "{}").status_code == 200
    empty_guid = "00000000-0000-0000-0000-000000000000"
    assert requests.get(f"{processor.url}/payments/{empty_guid}", timeout=10).text == (
        f'{{"correlationId":"{empty_guid}","amount":0,"requestedAt":"0001-01-01T00:00:00"}}')
    assert post_raw(processor.url, '{"amount": 5}').status_code == 422  # the empty GUID again
    correlation_id = str(uuid.uuid4())
    assert post_raw(processor.url, f'{{"correlationId":"{correlation_id}"}}').status_code == 200
    assert processor.get_payment(correlation_id) == {
        "correlationId": correlation_id, "amount": 0, "requestedAt": "0001-01-01T00:00:00"}


def test_property_names_match_case_insensitively(clean_processors):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    body = (f'{{"CorrelationID":"{correlation_id.upper()}","AMOUNT":7.5,'
            f'"requestedat":"2025-07-15T12:34:56.5Z","unknown":1}}')
    assert post_raw(processor.url, body).status_code == 200
    assert processor.get_payment(correlation_id) == {
        "correlationId": correlation_id, "amount": 7.5, "requestedAt": "2025-07-15T12:34:56.5"}
    # The same property twice: the later value wins, as System.Text.Json binds it.
    other = str(uuid.uuid4())
    assert post_raw(processor.url, f'{{"correlationId":"{other}","amount":1,"Amount":2}}').status_code == 200
    assert processor.get_payment(other)["amount"] == 2


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
    failed = post_payment(processor.url, correlation_id)
    assert failed.status_code == 500
    assert failed.content == b""
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
    ("delay", {"delay": -1}), ("delay", {"delay": 1.5}), ("delay", {"delay": "1.5"}),
    ("delay", {"delay": 2**31}), ("delay", {"delay": None}),
    ("failure", {"failure": "true"}), ("failure", {"failure": None}),
    ("token", {"token": 5}), ("token", {}),
])
def test_invalid_configuration_is_400(clean_processors, path, body):
    response = requests.put(f"{clean_processors.default.url}/admin/configurations/{path}",
                            json=body, headers=TOKEN, timeout=10)
    assert response.status_code == 400


def test_configuration_bodies_bind_with_the_web_defaults(clean_processors):
    url = f"{clean_processors.default.url}/admin/configurations"
    delay = requests.put(f"{url}/delay", json={"DELAY": "250"}, headers=TOKEN, timeout=10)
    assert delay.json() == {"config": "delay", "was": 0, "is": 250}  # a numeric string, any case
    assert requests.put(f"{url}/failure", json={"Failure": True}, headers=TOKEN,
                        timeout=10).json()["is"] is True
    # A missing property takes its default: delay 0, failure false.
    assert requests.put(f"{url}/delay", json={}, headers=TOKEN, timeout=10).json()["is"] == 0
    assert requests.put(f"{url}/failure", json={}, headers=TOKEN, timeout=10).json()["is"] is False


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


def test_summary_amounts_keep_the_scale_of_a_numeric_sum(clean_processors):
    processor = clean_processors.default
    # Over no rows: the decimal 0, no fraction digits.
    assert processor.admin_summary_text() == (
        '{"totalRequests":0,"totalAmount":0,"totalFee":0.00,"feePerTransaction":0.05}')
    post_raw(processor.url, f'{{"correlationId":"{uuid.uuid4()}","amount":10}}')
    assert '"totalAmount":10,' in processor.admin_summary_text()
    post_raw(processor.url, f'{{"correlationId":"{uuid.uuid4()}","amount":19.9}}')
    assert '"totalAmount":29.9,' in processor.admin_summary_text()
    post_raw(processor.url, f'{{"correlationId":"{uuid.uuid4()}","amount":0.10}}')
    assert '"totalAmount":30.00,' in processor.admin_summary_text()  # the largest scale of the rows


def test_summary_fee_is_exact(clean_processors):
    processor = clean_processors.default
    post_raw(processor.url, f'{{"correlationId":"{uuid.uuid4()}","amount":19.90}}')
    summary = processor.admin_summary_text()
    assert '"totalAmount":19.90,"totalFee":0.9950,' in summary


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
    # The window, whatever is left of it (two later windows are booked here).
    assert fourth.headers["Retry-After"] == "1"
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


# ------------------------------------------------------------ HTTP, as ASP.NET and Kestrel answer

def test_json_answers_say_utf_8(clean_processors):
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    answers = [
        post_payment(processor.url, correlation_id),
        post_payment(processor.url, correlation_id),  # 422
        requests.get(f"{processor.url}/payments/{correlation_id}", timeout=10),
        requests.get(f"{processor.url}/admin/payments-summary", headers=TOKEN, timeout=10),
        requests.put(f"{processor.url}/admin/configurations/delay", json={"delay": 0},
                     headers=TOKEN, timeout=10),
        requests.put(f"{processor.url}/admin/configurations/failure", json={"failure": False},
                     headers=TOKEN, timeout=10),
        requests.post(f"{processor.url}/admin/purge-payments", headers=TOKEN, timeout=10),
    ]
    assert [answer.status_code for answer in answers] == [200, 422, 200, 200, 200, 200, 200]
    assert {answer.headers["Content-Type"] for answer in answers} == {JSON_UTF8}


def test_health_answers_json_in_utf_8(start_emulator):
    response = requests.get(f"{start_emulator(health_window=0.2).url}/payments/service-health",
                            timeout=10)
    assert response.headers["Content-Type"] == JSON_UTF8


@pytest.mark.parametrize("request_bytes", [
    b"GET /payments/service-health HTTP/1.1\r\n\r\n",
    b"GET /payments/service-health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /no/such/route HTTP/1.1\r\n\r\n",
])
def test_an_http_1_1_request_without_exactly_one_host_is_400_and_the_connection_closes(
        start_emulator, request_bytes):
    processor = start_emulator(health_window=0.2)
    answer = raw_exchange(processor.port, request_bytes)  # returns once the server closed
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nContent-Length: 0" in head and body == b""


def test_a_payment_without_host_is_refused_before_the_endpoint(clean_processors):
    processor = clean_processors.default
    body = f'{{"correlationId":"{uuid.uuid4()}","amount":1}}'.encode()
    answer = raw_exchange(processor.port, b"POST /payments HTTP/1.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert processor.admin_summary()["totalRequests"] == 0


def test_an_http_1_0_request_needs_no_host(start_emulator):
    processor = start_emulator(health_window=0.2)
    answer = raw_exchange(processor.port, b"GET /payments/service-health HTTP/1.0\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"200"
    assert answer.endswith(b'{"failing":false,"minResponseTime":0}')
