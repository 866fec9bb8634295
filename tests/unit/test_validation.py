"""The validation table of POST /payments (bruto/validation.py), row by row."""

from __future__ import annotations

import json
import sys
import uuid
from decimal import Decimal

import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from bruto.gateway.validation import MAX_AMOUNT_CENTS
from bruto.gateway.validation import REFUSALS
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_payment
from bruto.money import format_cents

ID = "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"


def test_a_valid_payment_gives_id_bytes_and_cents():
    assert parse_payment(b'{"correlationId":"%s","amount":19.90}' % ID.encode()) == (uuid.UUID(ID).bytes, 1990)
    assert parse_payment(b'{"correlationId":"%s","amount":20}' % ID.encode())[1] == 2000


@pytest.mark.parametrize("body, status, error", [
    (b"x" * 5000, 413, "body is larger than 4096 bytes"),
    (b"", 400, "body is not valid JSON"),
    (b'{"correlationId": ', 400, "body is not valid JSON"),
    (b'{"correlationId":"%s","amount":NaN}' % ID.encode(), 400, "body is not valid JSON"),
    (b'[1, 2]', 400, "body must be a JSON object"),
    (b'{"amount": 1}', 422, "correlationId is required"),
    (b'{"correlationId": 7, "amount": 1}', 422, "correlationId must be a UUID"),
    (b'{"correlationId": "not-a-uuid", "amount": 1}', 422, "correlationId must be a UUID"),
    (b'{"correlationId":"%s"}' % ID.encode(), 422, "amount is required"),
    (b'{"correlationId":"%s","amount":"19.90"}' % ID.encode(), 422, "amount must be a number"),
    (b'{"correlationId":"%s","amount":true}' % ID.encode(), 422, "amount must be a number"),
    (b'{"correlationId":"%s","amount":0}' % ID.encode(), 422, "amount must be positive"),
    (b'{"correlationId":"%s","amount":-1.5}' % ID.encode(), 422, "amount must be positive"),
    (b'{"correlationId":"%s","amount":19.901}' % ID.encode(), 422, "amount must have at most 2 decimals"),
    (b'{"correlationId":"%s","amount":0.001}' % ID.encode(), 422, "amount must have at most 2 decimals"),
    (b'{"correlationId":"%s","amount":1e12}' % ID.encode(), 422, "amount must be at most 1000000000.00"),
    (b'{"correlationId":"%s","amount":1e308}' % ID.encode(), 422, "amount must be at most 1000000000.00"),
    (b'{"correlationId":"%s","amount":-1e308}' % ID.encode(), 422, "amount must be positive"),
    (b'{"correlationId":"%s","amount":%d}' % (ID.encode(), 10**40), 422, "amount must be at most 1000000000.00"),
    # Beyond a double's range: JSON all the same (orjson refuses it; the error path reads it again).
    (b'{"correlationId":"%s","amount":1e400}' % ID.encode(), 422, "amount must be at most 1000000000.00"),
    (b'{"correlationId":"%s","amount":-1e400}' % ID.encode(), 422, "amount must be positive"),
    (b'{"correlationId":"%s","amount":1%s}' % (ID.encode(), b"0" * 400), 422, "amount must be at most 1000000000.00"),
    (b'{"correlationId":"%s","amount":Infinity}' % ID.encode(), 400, "body is not valid JSON"),
    (b'{"correlationId":"%s","amount":1e400' % ID.encode(), 400, "body is not valid JSON"),
    (b'{"x":' + b"[" * 3000, 400, "body is not valid JSON"),
    (b'"\xff"', 400, "body is not valid JSON"),
])
def test_bad_input_gets_its_status_and_message(body, status, error):
    with pytest.raises(InvalidPayment) as raised:
        parse_payment(body)
    assert (raised.value.status, raised.value.message) == (status, error)


@given(st.integers(min_value=1, max_value=100_000_000_000))
def test_every_two_decimal_amount_is_read_exactly(cents):
    body = b'{"correlationId":"%s","amount":%s}' % (ID.encode(), format_cents(cents).encode())
    assert parse_payment(body)[1] == cents


def test_format_cents():
    assert [format_cents(c) for c in (0, 5, 1990, 100, -250)] == ["0.00", "0.05", "19.90", "1.00", "-2.50"]


# Any JSON value, with payment-shaped objects over-represented so that the
# valid path is explored as much as every way of being invalid.
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=40))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=8)
_AMOUNTS = (st.integers() | st.floats(allow_nan=False, allow_infinity=False)
            | st.builds(lambda digits, exponent: digits * 10.0 ** exponent,  # every magnitude alike
                        st.floats(-9.99, 9.99), st.integers(-320, 307))
            | st.decimals(allow_nan=False, allow_infinity=False, places=2).map(float)
            | st.integers(min_value=-10, max_value=10**13).map(lambda c: float(format_cents(c))))
_PAYMENTS = st.fixed_dictionaries({"correlationId": st.uuids().map(str)}, optional={"amount": _AMOUNTS})
_ANYTHING = st.fixed_dictionaries({}, optional={"correlationId": st.uuids().map(str) | _JSON,
                                                "amount": _AMOUNTS | _JSON, "extra": _JSON})


@settings(max_examples=300)
@given(_PAYMENTS | _ANYTHING | _JSON)
@example({"correlationId": ID, "amount": sys.float_info.max})  # x 100 overflows to infinity
@example({"correlationId": ID, "amount": -sys.float_info.max})
@example({"correlationId": ID, "amount": 10**400})
def test_any_json_body_gives_a_valid_payment_or_invalid_payment(value):
    body = json.dumps(value).encode()  # the stdlib writes any integer and 1e308 alike
    try:
        correlation_id, cents = parse_payment(body)
    except InvalidPayment as refused:
        assert refused.reason != "invalid_json"  # the stdlib wrote it: it is JSON
        assert (refused.status, refused.message) == REFUSALS[refused.reason]
        return
    assert correlation_id == uuid.UUID(value["correlationId"]).bytes
    assert 0 < cents <= MAX_AMOUNT_CENTS
    assert Decimal(repr(value["amount"])) * 100 == cents  # exact, never rounded


def _is_json(body: bytes) -> bool:
    """RFC 8259's answer, from the standard library (its NaN and Infinity refused)."""
    def refuse(constant):
        raise ValueError(constant)
    try:
        json.loads(body.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


@given(st.binary(max_size=200) | st.builds(lambda value, junk: json.dumps(value).encode() + junk,
                                            _PAYMENTS | _JSON, st.binary(max_size=3)))
def test_any_bytes_are_refused_as_not_json_exactly_when_they_are_not_json(body):
    try:
        parse_payment(body)
    except InvalidPayment as refused:
        assert (refused.reason == "invalid_json") == (not _is_json(body))
        assert (refused.status, refused.message) == REFUSALS[refused.reason]
        return
    assert _is_json(body)
