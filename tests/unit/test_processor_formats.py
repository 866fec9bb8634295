"""bruto reads back what a processor stored, in every spelling the real processor can produce.

The dispatcher resolves an unknown outcome with GET /payments/{id} and keeps
the requestedAt and amount the processor reports (ProcessorClient.lookup:
`bruto.timefmt.parse_iso`, `bruto.money.parse_amount_cents`). These
properties run the way from what bruto sends, through each spelling the real
service accepts for that same value, to what it stores and writes back (the
emulator's model of it, bruto.testbed.emulator.dotnet), and parse that back.
"""

from __future__ import annotations

import datetime
import decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bruto.gateway.validation import MAX_AMOUNT_CENTS
from bruto.money import format_cents
from bruto.money import parse_amount_cents
from bruto.testbed.emulator import dotnet
from bruto.testbed.emulator import server as emulator
from bruto.timefmt import format_iso_ms
from bruto.timefmt import parse_iso

_EPOCH = datetime.datetime(1970, 1, 1)


def stored_json(requested_at_text: str, amount_json: str) -> dict:
    """POST /payments with these values, then GET /payments/{id} as orjson gives it to ProcessorClient.lookup."""
    body = (f'{{"correlationId":"4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3","amount":{amount_json},'
            f'"requestedAt":"{requested_at_text}"}}')
    correlation_id, amount, requested_at_us = emulator.parse_payment(emulator.decode_json_object(body.encode()))
    return orjson.loads(emulator.payment_json(correlation_id, *emulator.amount_columns(amount), requested_at_us))


# ------------------------------------------------------------ requestedAt

def spellings_of_instant(micros: int, offset_minutes: int, fraction_digits: int) -> list[str]:
    """Texts System.Text.Json reads as this instant: Z, +00:00, no offset, a shifted wall time."""
    utc = _EPOCH + datetime.timedelta(microseconds=micros)
    wall = utc + datetime.timedelta(minutes=offset_minutes)
    fraction = f"{utc.microsecond:06d}".ljust(fraction_digits, "0")
    fraction = fraction.rstrip("0") if fraction_digits < 6 else fraction
    dot = f".{fraction}" if fraction else ""
    sign = "-" if offset_minutes < 0 else "+"
    offset = f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    return [f"{utc:%Y-%m-%dT%H:%M:%S}{dot}Z", f"{utc:%Y-%m-%dT%H:%M:%S}{dot}+00:00",
            f"{utc:%Y-%m-%dT%H:%M:%S}{dot}", f"{wall:%Y-%m-%dT%H:%M:%S}{dot}{offset}"]


# From 2000 to 2100: what bruto's clock can send (whole milliseconds) and any microsecond.
SENT_MS = st.integers(946684800_000, 4102444800_000).map(lambda ms: ms * 1000)
SENT_US = st.integers(946684800_000_000, 4102444800_000_000)


@given(SENT_MS)
def test_what_bruto_sends_comes_back_to_the_microsecond(requested_at):
    assert parse_iso(stored_json(format_iso_ms(requested_at), "1")["requestedAt"]) == requested_at


@given(SENT_US, st.integers(-14 * 60, 14 * 60), st.sampled_from([0, 3, 6, 7, 16]))
def test_every_spelling_of_an_instant_comes_back_to_its_microsecond(requested_at, offset_minutes, digits):
    for text in spellings_of_instant(requested_at, offset_minutes, digits):
        assert parse_iso(stored_json(text, "1")["requestedAt"]) == requested_at, text


@given(st.integers(dotnet.MIN_US, dotnet.MAX_US))
def test_every_timestamp_the_processor_can_write_parses_to_itself(micros):
    assert parse_iso(dotnet.format_datetime(micros)) == micros


@pytest.mark.parametrize("text, micros", [
    ("2025-07-15T12:34:56", 1752582896_000000),
    ("2025-07-15T12:34:56.5", 1752582896_500000),
    ("2025-07-15T12:34:56.123456", 1752582896_123456),
    ("2025-07-15T12:34:56.1234567", 1752582896_123456),  # DateTime's 7th digit: dropped
    ("2025-07-15T00:00:00", 1752537600_000000),
    ("0001-01-01T00:00:00", dotnet.MIN_US),  # a payment sent without requestedAt
])
def test_the_processor_timestamp_spellings_parse(text, micros):
    assert parse_iso(text) == micros


# ------------------------------------------------------------ amount

SENT_CENTS = st.integers(1, MAX_AMOUNT_CENTS)


def spellings_of_cents(cents: int) -> list[str]:
    """JSON values the real service reads as this amount (before its rounding): any scale, exponents, strings."""
    exact = decimal.Decimal(cents).scaleb(-2)
    trimmed = format(exact.normalize(), "f")
    texts = [format_cents(cents), trimmed, f"{cents}e-2", f"{cents}E-2", f"{format_cents(cents)}0",
             f"{format_cents(cents)}4", f"{cents * 10}e-3"]
    return texts + [f'"{text}"' for text in texts]


@given(SENT_CENTS)
def test_what_bruto_sends_comes_back_to_the_cent(cents):
    assert parse_amount_cents(stored_json("2025-07-15T12:34:56.000Z", format_cents(cents))["amount"]) == cents


@given(SENT_CENTS)
def test_every_spelling_of_an_amount_comes_back_to_its_cent(cents):
    for text in spellings_of_cents(cents):
        assert parse_amount_cents(stored_json("2025-07-15T12:34:56.000Z", text)["amount"]) == cents, text


@given(st.decimals(min_value=-10**9, max_value=10**9, allow_nan=False, allow_infinity=False, places=None)
       .filter(lambda d: -20 <= d.as_tuple().exponent <= 2))
def test_an_amount_of_any_scale_rounds_half_to_even_as_the_processor_stores_it(amount):
    expected = int(amount.quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_EVEN).scaleb(2))
    assert parse_amount_cents(str(amount)) == expected
    stored = dotnet.round_amount(dotnet.parse_decimal(amount))
    assert parse_amount_cents(orjson.loads(dotnet.format_decimal(stored))) == expected


@pytest.mark.parametrize("value, cents", [
    (19.9, 1990), (19.90, 1990), (10, 1000), (100, 10000), (0.1, 10), ("7.5", 750), ("19.905", 1990),
    ("19.915", 1992), ("1e2", 10000), (".5", 50), ("5.", 500), (999999999.99, 99999999999),
])
def test_amount_examples(value, cents):
    assert parse_amount_cents(value) == cents


@pytest.mark.parametrize("value", [None, True, "", "abc", " 1", "1,5", float("nan"), float("inf"), [], {},
                                   "1e30", 1e30])
def test_amounts_that_are_not_amounts_are_refused(value):
    with pytest.raises(ValueError):
        parse_amount_cents(value)
