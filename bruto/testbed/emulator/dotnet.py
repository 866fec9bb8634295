"""How the real processor reads and writes values: System.Text.Json, .NET types, Npgsql, PostgreSQL.

The official processor is an ASP.NET minimal API that binds request bodies
with System.Text.Json's web defaults, keeps `requestedAt` in a PostgreSQL
`timestamp` (without time zone) column through Npgsql and the amount in a
`numeric` column after `decimal.Round(amount, 2)`. Every function here is
pure and mirrors one of those pieces (docs/EMULATOR.md says what each one
relies on):

- `bind`: web-default property binding (case-insensitive names, missing
  properties keep the .NET default, null for a value type is an error).
- `parse_datetime` / `format_datetime`: System.Text.Json's ISO-8601 reader,
  Npgsql's DateTime -> timestamp conversion, and the writer's trimmed
  round-trip format for the `timestamp` read back.
- `parse_decimal` / `round_amount` / `format_decimal`: .NET `decimal` from a
  JSON number or a numeric string, banker's rounding to 2 places, and the
  writer's text, which keeps the value's own scale.
- `parse_guid`, `parse_int32`: the other two types the service binds.
"""

from __future__ import annotations

import datetime
import decimal
import re

MIN_US = -62135596800_000_000  # 0001-01-01T00:00:00 (DateTime.MinValue) in Unix microseconds
MAX_US = 253402300799_999_999  # 9999-12-31T23:59:59.999999
# DateTime.MaxValue (9999-12-31T23:59:59.9999999) is written by Npgsql as the
# timestamp 'infinity', which reads back as DateTime.MaxValue again: kept as
# one microsecond past MAX_US, so it sorts after every finite timestamp.
INFINITY_US = MAX_US + 1

_EPOCH = datetime.datetime(1970, 1, 1)
_UNIX_EPOCH_TICKS = 621355968000000000  # DateTime ticks (100 ns since 0001-01-01) of 1970-01-01
_PG_EPOCH_TICKS = 630822816000000000  # 2000-01-01, PostgreSQL's epoch, in DateTime ticks
_MAX_TICKS = 3155378975999999999  # DateTime.MaxValue.Ticks
_TICKS_PER_US = 10
_TICKS_PER_SECOND = 10_000_000

# System.Text.Json's extended ISO-8601 profile (JsonHelpers.TryParseDateTimeOffset):
# YYYY-MM-DD, optionally THH:MM, optionally :SS, optionally .F{1,16} (only the
# first 7 digits count), then optionally Z or +HH / +HH:MM; ASCII digits only.
_ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,16}))?)?"
    r"(Z|[+-][0-9]{2}(?::[0-9]{2})?)?)?")
# Utf8Parser's decimal grammar for a numeric string: a sign, digits with an
# optional point ("5." and ".5" too, not "."), an optional exponent.
_NUMERIC_STRING = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Utf8Parser's Guid "D" format, the only one System.Text.Json reads.
_GUID_D = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_INT_STRING = re.compile(r"[+-]?[0-9]+")

_DECIMAL_MAX = 2**96 - 1  # decimal.MaxValue, and the largest mantissa at any scale
_DECIMAL_MAX_SCALE = 28
_CENT = decimal.Decimal("0.01")
_ONE = decimal.Decimal(1)
_EXACT = decimal.Context(prec=100, Emax=10**6, Emin=-10**6, traps=[decimal.InvalidOperation])
_EMPTY_GUID = "00000000-0000-0000-0000-000000000000"


class BindingError(ValueError):
    """A body the real service refuses at model binding (HTTP 400)."""


# ---------------------------------------------------------------- properties

def bind(body: dict, names: tuple[str, ...]) -> dict[str, object]:
    """Picks the properties of `names` out of a JSON object, as web defaults bind them.

    Names match case-insensitively (`CorrelationID`, `AMOUNT`); when a name
    appears twice the later value wins; other properties are ignored. A name
    absent from the body is absent from the result: the caller applies the
    .NET default.

    Args:
        body: The parsed JSON object, in document order.
        names: The property names of the bound type, e.g. ("correlationId", "amount").

    Returns:
        {name as given in `names`: JSON value}.
    """
    wanted = {name.upper(): name for name in names}
    bound = {}
    for key, value in body.items():
        name = wanted.get(key.upper())
        if name is not None:
            bound[name] = value
    return bound


def parse_guid(value: object) -> str:
    """A Guid property: a string in the hyphenated "D" format, lower-cased.

    Raises:
        BindingError: for anything else (null included: Guid is a value type).
    """
    if not isinstance(value, str) or not _GUID_D.fullmatch(value):
        raise BindingError(f"not a GUID in the D format: {value!r}")
    return value.lower()


def default_guid() -> str:
    """default(Guid), what a missing correlationId binds to."""
    return _EMPTY_GUID


def parse_int32(value: object) -> int:
    """An int property: a JSON integer or, under web defaults, a string of one.

    Raises:
        BindingError: for a fraction, an exponent, a non-number, null, or a
            value outside Int32.
    """
    if isinstance(value, str) and _INT_STRING.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -2**31 <= value < 2**31:
        raise BindingError(f"not an Int32: {value!r}")
    return value


# ---------------------------------------------------------------- DateTime and timestamp

def parse_datetime(text: object) -> int:
    """requestedAt as the real service stores it, in microseconds since the Unix epoch.

    System.Text.Json reads the text into a DateTime (100 ns ticks; digits past
    the 7th are ignored; an offset is applied and the result converted to the
    server's local time, UTC in the official container; a date alone is
    midnight), then Npgsql writes the ticks as PostgreSQL microseconds since
    2000-01-01 with C#'s integer division, which truncates toward that epoch.

    Args:
        text: The JSON value of requestedAt.

    Returns:
        Microseconds since 1970-01-01T00:00:00 of the stored `timestamp`
        (INFINITY_US for DateTime.MaxValue).

    Raises:
        BindingError: if `text` is not a string System.Text.Json reads as a DateTime.
    """
    if not isinstance(text, str):
        raise BindingError("requestedAt must be an ISO-8601 string")
    match = _ISO.fullmatch(text)
    if match is None:
        raise BindingError(f"not an ISO-8601 date-time System.Text.Json reads: {text!r}")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime.datetime(int(year), int(month), int(day),
                                   int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:  # year 0000, month 13, February 30, hour 24, second 60 ...
        raise BindingError(f"not a valid date-time: {text!r}") from None
    ticks = (moment - datetime.datetime(1, 1, 1)) // datetime.timedelta(microseconds=1) * _TICKS_PER_US
    ticks += int((fraction or "0")[:7].ljust(7, "0"))
    if offset and offset != "Z":
        hours, minutes = int(offset[1:3]), int(offset[4:6] or 0)
        if hours > 14 or minutes > 59 or (hours == 14 and minutes):
            raise BindingError(f"offset out of range: {text!r}")
        shift = (hours * 3600 + minutes * 60) * _TICKS_PER_SECOND
        ticks += shift if offset[0] == "-" else -shift
        if not 0 <= ticks <= _MAX_TICKS:
            raise BindingError(f"out of DateTime's range in UTC: {text!r}")
    if ticks == _MAX_TICKS:
        return INFINITY_US
    since_pg_epoch = ticks - _PG_EPOCH_TICKS
    micros = abs(since_pg_epoch) // _TICKS_PER_US  # C# division: toward zero
    micros = micros if since_pg_epoch >= 0 else -micros
    return micros + (_PG_EPOCH_TICKS - _UNIX_EPOCH_TICKS) // _TICKS_PER_US


def format_datetime(micros: int) -> str:
    """A `timestamp` read back by Npgsql and written by System.Text.Json.

    The DateTime is of kind Unspecified, so no offset and no "Z"; fraction
    digits only as far as they are non-zero: "2025-07-15T12:34:56",
    "2025-07-15T12:34:56.5", "2025-07-15T12:34:56.123456".
    """
    if micros >= INFINITY_US:
        return "9999-12-31T23:59:59.9999999"
    moment = _EPOCH + datetime.timedelta(microseconds=micros)
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text


# ---------------------------------------------------------------- decimal and numeric

def parse_decimal(value: object) -> decimal.Decimal:
    """A .NET decimal property, from a JSON number or (web defaults) a numeric string.

    The value keeps its scale as written ("19.90" has two decimals, "19.9"
    one); an exponent is applied ("1e2" is 100, "1.5e-1" is 0.15); more than
    28 decimals or 96 bits are rounded half to even as .NET's parser does.

    Args:
        value: A `decimal.Decimal` (a JSON number with a fraction or an
            exponent, read with `parse_float=Decimal`), an int (a JSON
            integer) or a str (a numeric string).

    Raises:
        BindingError: for null, booleans, other strings, or a value beyond
            decimal.MaxValue.
    """
    if isinstance(value, str):
        if not _NUMERIC_STRING.fullmatch(value):
            raise BindingError(f"not a number: {value!r}")
        value = decimal.Decimal(value)
    elif isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        raise BindingError(f"amount must be a number: {value!r}")
    number = decimal.Decimal(value)
    if not number.is_finite():
        raise BindingError(f"not a finite number: {value!r}")
    try:
        if exponent(number) > 0:  # a decimal has no negative scale: 1E+2 is 100
            number = number.quantize(_ONE, context=_EXACT)
        if exponent(number) < -_DECIMAL_MAX_SCALE:
            number = number.quantize(_ONE.scaleb(-_DECIMAL_MAX_SCALE), decimal.ROUND_HALF_EVEN, _EXACT)
        # Digits that do not fit in the 96-bit mantissa are rounded away, one decimal at a time.
        while _mantissa(number) > _DECIMAL_MAX and exponent(number) < 0:
            number = number.quantize(_ONE.scaleb(exponent(number) + 1), decimal.ROUND_HALF_EVEN, _EXACT)
    except decimal.InvalidOperation:  # more than _EXACT's 100 digits: far beyond decimal.MaxValue
        raise BindingError(f"out of decimal's range: {value!r}") from None
    if _mantissa(number) > _DECIMAL_MAX:
        raise BindingError(f"out of decimal's range: {value!r}")
    return number


def exponent(number: decimal.Decimal) -> int:
    """The exponent of a finite decimal (``19.90``: -2)."""
    value = number.as_tuple().exponent
    if not isinstance(value, int):
        raise ValueError(f"{number} is not finite")
    return value


def _mantissa(number: decimal.Decimal) -> int:
    """The digits of `number` as a non-negative integer, its scale aside."""
    return int("".join(map(str, number.as_tuple().digits)))


def round_amount(amount: decimal.Decimal) -> decimal.Decimal:
    """`decimal.Round(amount, 2)`, then stored in a PostgreSQL `numeric`.

    Banker's rounding (19.905 -> 19.90, 19.915 -> 19.92) of a value with more
    than two decimals; a value with two or fewer keeps its scale (19.9 stays
    19.9, 10 stays 10). numeric has no negative zero.
    """
    if exponent(amount) < -2:
        amount = amount.quantize(_CENT, decimal.ROUND_HALF_EVEN, _EXACT)
    return amount.copy_abs() if amount.is_zero() else amount


def format_decimal(amount: decimal.Decimal) -> str:
    """A decimal as System.Text.Json writes it: plain digits, its own scale ("19.9", "10", "0.00")."""
    return format(amount, "f")
