"""Validation of POST /payments bodies: what is accepted, and the error for the rest.

| input                                   | status | reason                  | error                               |
| --------------------------------------- | ------ | ----------------------- | ----------------------------------- |
| body over MAX_BODY bytes                | 413    | body_too_large          | body is larger than 4096 bytes      |
| empty body, or not JSON                 | 400    | invalid_json            | body is not valid JSON              |
| JSON that is not an object              | 400    | not_an_object           | body must be a JSON object          |
| correlationId missing                   | 422    | correlation_id_missing  | correlationId is required           |
| correlationId not a string / not a UUID | 422    | correlation_id_invalid  | correlationId must be a UUID        |
|   (only the 8-4-4-4-12 hex form)        |        |                         |                                     |
| amount missing                          | 422    | amount_missing          | amount is required                  |
| amount not a number (string, bool, null)| 422    | amount_not_a_number     | amount must be a number             |
| amount <= 0                             | 422    | amount_not_positive     | amount must be positive             |
| amount with more than 2 decimals        | 422    | amount_too_precise      | amount must have at most 2 decimals |
| amount above MAX_AMOUNT_CENTS           | 422    | amount_too_large        | amount must be at most 1000000000.00|

The table is :data:`REFUSALS`; an :class:`InvalidPayment` carries its row's
reason, by which the gateway counts it (bruto.shm.layout.REJECTIONS).
Fields other than these two are ignored. JSON cannot carry NaN or Infinity
(refused as not JSON: 400); a number beyond a double's range, such as
``1e400``, is JSON, and is judged as an amount like any other: too large
(or, negative, not positive).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from bruto.money import format_cents

MAX_BODY = 4096
# Cap on one payment: keeps every sum over a full ledger (2^20 records) far
# below the int64 limit, so totals in cents can never overflow.
MAX_AMOUNT_CENTS = 100_000_000_000


# reason -> (status, error): the table above, row by row.
REFUSALS: dict[str, tuple[int, str]] = {
    "body_too_large": (413, f"body is larger than {MAX_BODY} bytes"),
    "invalid_json": (400, "body is not valid JSON"),
    "not_an_object": (400, "body must be a JSON object"),
    "correlation_id_missing": (422, "correlationId is required"),
    "correlation_id_invalid": (422, "correlationId must be a UUID"),
    "amount_missing": (422, "amount is required"),
    "amount_not_a_number": (422, "amount must be a number"),
    "amount_not_positive": (422, "amount must be positive"),
    "amount_too_precise": (422, "amount must have at most 2 decimals"),
    "amount_too_large": (422, f"amount must be at most {format_cents(MAX_AMOUNT_CENTS)}"),
}


class InvalidPayment(ValueError):
    """A request body bruto refuses: ``reason`` names its row of :data:`REFUSALS`,
    ``status`` is the HTTP status to answer, ``message`` the error to say."""

    def __init__(self, reason: str):
        self.status, self.message = REFUSALS[reason]
        super().__init__(self.message)
        self.reason = reason


def parse_payment(body: bytes) -> tuple[bytes, int]:
    """Return ``(correlation id as 16 bytes, amount in cents)`` or raise InvalidPayment."""
    if len(body) > MAX_BODY:
        raise InvalidPayment("body_too_large")
    try:
        payment = orjson.loads(body)
    except orjson.JSONDecodeError:
        payment = _beyond_orjson(body)
    if type(payment) is not dict:
        raise InvalidPayment("not_an_object")
    return _correlation_id(payment.get("correlationId")), _amount_cents(payment.get("amount"))


def parse_correlation_id(value: object) -> bytes:
    """A correlationId as 16 bytes, checked as POST /payments checks it; or raise InvalidPayment (422)."""
    return _correlation_id(value)


def _beyond_orjson(body: bytes) -> object:
    """What orjson refused, read again by the standard library: still JSON, or not.

    orjson refuses numbers beyond a double's range (``1e400``), which are JSON.
    The standard library reads them (as infinity, or as an exact integer), so
    on this path, an error's, it says which bodies are JSON after all.
    """
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, _not_json's; deep nesting
        raise InvalidPayment("invalid_json") from None


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")  # NaN, Infinity, -Infinity: the stdlib's extensions


def _correlation_id(value: object) -> bytes:
    if value is None:
        raise InvalidPayment("correlation_id_missing")
    # NOTE: only the 8-4-4-4-12 hex form. uuid.UUID also takes braces, a
    # urn: prefix, no hyphens, and (through int()) underscores, surrounding
    # spaces and non-ASCII digits, some of which it reads as another UUID
    # than the text says; bytes.fromhex takes only ASCII hex (spaces between
    # pairs aside, which the length check catches), and is faster.
    if type(value) is not str or len(value) != 36 or value[8] != "-" or value[13] != "-" \
            or value[18] != "-" or value[23] != "-":
        raise InvalidPayment("correlation_id_invalid")
    try:
        raw = bytes.fromhex(value[:8] + value[9:13] + value[14:18] + value[19:23] + value[24:])
    except ValueError:
        raise InvalidPayment("correlation_id_invalid") from None
    if len(raw) != 16:
        raise InvalidPayment("correlation_id_invalid")
    return raw


def _amount_cents(value: Any) -> int:
    if value is None:
        raise InvalidPayment("amount_missing")
    kind = type(value)
    if kind is int:
        cents = value * 100
    elif kind is float:
        # Range first: ``round`` of a product that overflows to infinity raises.
        if value > MAX_AMOUNT_CENTS / 100:
            raise InvalidPayment("amount_too_large")
        if value <= 0:
            raise InvalidPayment("amount_not_positive")
        cents = round(value * 100)
        # The parser gives the double nearest to the decimal text; for a text with
        # at most 2 decimals that is exactly cents / 100 (also a correctly rounded
        # division), and for any finer text it is a different double.
        if cents / 100 != value:
            raise InvalidPayment("amount_too_precise")
    else:
        raise InvalidPayment("amount_not_a_number")
    if cents <= 0:
        raise InvalidPayment("amount_not_positive")
    if cents > MAX_AMOUNT_CENTS:
        raise InvalidPayment("amount_too_large")
    return cents
