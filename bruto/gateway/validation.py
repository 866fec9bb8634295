"""Validation of POST /payments bodies: what is accepted, and the error for the rest.

| input                                   | status | error                                   |
| --------------------------------------- | ------ | --------------------------------------- |
| body over MAX_BODY bytes                | 413    | body is larger than 4096 bytes          |
| empty body, or not JSON                 | 400    | body is not valid JSON                  |
| JSON that is not an object              | 400    | body must be a JSON object              |
| correlationId missing                   | 422    | correlationId is required               |
| correlationId not a string / not a UUID | 422    | correlationId must be a UUID            |
|   (only the 8-4-4-4-12 hex form)        |        |                                         |
| amount missing                          | 422    | amount is required                      |
| amount not a number (string, bool, null)| 422    | amount must be a number                 |
| amount <= 0                             | 422    | amount must be positive                 |
| amount with more than 2 decimals        | 422    | amount must have at most 2 decimals     |
| amount above MAX_AMOUNT_CENTS           | 422    | amount must be at most 1000000000.00    |

Fields other than these two are ignored. JSON cannot carry NaN or Infinity
(orjson refuses them as invalid JSON: 400).
"""

from __future__ import annotations

import orjson

from bruto.money import format_cents

MAX_BODY = 4096
# Cap on one payment: keeps every sum over a full ledger (2^20 records) far
# below the int64 limit, so totals in cents can never overflow.
MAX_AMOUNT_CENTS = 100_000_000_000
_TOO_LARGE = f"amount must be at most {format_cents(MAX_AMOUNT_CENTS)}"


class InvalidPayment(ValueError):
    """A request body bruto refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_payment(body: bytes) -> tuple[bytes, int]:
    """Return ``(correlation id as 16 bytes, amount in cents)`` or raise InvalidPayment."""
    if len(body) > MAX_BODY:
        raise InvalidPayment(413, f"body is larger than {MAX_BODY} bytes")
    try:
        payment = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidPayment(400, "body is not valid JSON") from None
    if type(payment) is not dict:
        raise InvalidPayment(400, "body must be a JSON object")
    return _correlation_id(payment.get("correlationId")), _amount_cents(payment.get("amount"))


def parse_correlation_id(value) -> bytes:
    """A correlationId as 16 bytes, checked as POST /payments checks it; or raise InvalidPayment (422)."""
    return _correlation_id(value)


def _correlation_id(value) -> bytes:
    if value is None:
        raise InvalidPayment(422, "correlationId is required")
    # NOTE: only the 8-4-4-4-12 hex form. uuid.UUID also takes braces, a
    # urn: prefix, no hyphens, and (through int()) underscores, surrounding
    # spaces and non-ASCII digits, some of which it reads as another UUID
    # than the text says; bytes.fromhex takes only ASCII hex (spaces between
    # pairs aside, which the length check catches), and is faster.
    if type(value) is not str or len(value) != 36 or value[8] != "-" or value[13] != "-" \
            or value[18] != "-" or value[23] != "-":
        raise InvalidPayment(422, "correlationId must be a UUID")
    try:
        raw = bytes.fromhex(value[:8] + value[9:13] + value[14:18] + value[19:23] + value[24:])
    except ValueError:
        raise InvalidPayment(422, "correlationId must be a UUID") from None
    if len(raw) != 16:
        raise InvalidPayment(422, "correlationId must be a UUID")
    return raw


def _amount_cents(value) -> int:
    if value is None:
        raise InvalidPayment(422, "amount is required")
    kind = type(value)
    if kind is int:
        cents = value * 100
    elif kind is float:
        # Range first: ``round`` of a product that overflows to infinity raises.
        if value > MAX_AMOUNT_CENTS / 100:
            raise InvalidPayment(422, _TOO_LARGE)
        if value <= 0:
            raise InvalidPayment(422, "amount must be positive")
        cents = round(value * 100)
        # The parser gives the double nearest to the decimal text; for a text with
        # at most 2 decimals that is exactly cents / 100 (also a correctly rounded
        # division), and for any finer text it is a different double.
        if cents / 100 != value:
            raise InvalidPayment(422, "amount must have at most 2 decimals")
    else:
        raise InvalidPayment(422, "amount must be a number")
    if cents <= 0:
        raise InvalidPayment(422, "amount must be positive")
    if cents > MAX_AMOUNT_CENTS:
        raise InvalidPayment(422, _TOO_LARGE)
    return cents
