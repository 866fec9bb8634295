"""Money is integer cents everywhere; these convert it to and from the decimal text JSON carries."""

from __future__ import annotations

import decimal
import math
import re

_CENT = decimal.Decimal("0.01")
_NUMERIC_STRING = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT64 = 1 << 63


def format_cents(cents: int) -> str:
    """Exact decimal text of an amount in cents: 1990 -> '19.90'."""
    sign = "-" if cents < 0 else ""
    whole, fraction = divmod(abs(cents), 100)
    return f"{sign}{whole}.{fraction:02d}"


def parse_amount_cents(value: object) -> int:
    """Whole cents of an amount a processor reports, rounded as the processor stores amounts.

    Accepts every spelling of an amount in a processor's JSON: a number with
    any scale (``19.9``, ``19.90``, ``10``, ``1E+2``) as orjson gives it (int
    or float), or a numeric string (``"7.5"``). The processor keeps
    ``decimal.Round(amount, 2)``, banker's rounding, so a value with more
    than two decimals is rounded half to even (19.905 -> 1990, 19.915 -> 1992).

    NOTE: a float is taken as its shortest repr, which is the decimal text it
    was parsed from for up to 15 significant digits: every amount bruto
    accepts (at most 1,000,000,000.00) is exact.

    Raises:
        ValueError: not a number, not finite, or beyond int64 cents.
    """
    if isinstance(value, bool):
        raise ValueError(f"not an amount: {value!r}")
    if isinstance(value, int):
        exact = decimal.Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite amount: {value!r}")
        exact = decimal.Decimal(repr(value))
    elif isinstance(value, str) and _NUMERIC_STRING.fullmatch(value):
        exact = decimal.Decimal(value)
    else:
        raise ValueError(f"not an amount: {value!r}")
    try:
        cents = int(exact.quantize(_CENT, rounding=decimal.ROUND_HALF_EVEN).scaleb(2))
    except decimal.InvalidOperation:  # more digits than the context holds: far beyond int64
        raise ValueError(f"amount out of range: {value!r}") from None
    if not -_INT64 <= cents < _INT64:
        raise ValueError(f"amount out of range: {value!r}")
    return cents
