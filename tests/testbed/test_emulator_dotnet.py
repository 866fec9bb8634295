"""The emulator's model of the real service's .NET and PostgreSQL pieces (bruto/testbed/emulator/dotnet.py).

Examples pin what the issue and the .NET sources say; hypothesis properties
check the parsers against independent reference computations.
"""

from __future__ import annotations

import datetime
import decimal
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bruto.testbed.emulator import dotnet
from bruto.testbed.emulator.dotnet import BindingError

D = decimal.Decimal
_PG_EPOCH_US = 946684800_000_000  # 2000-01-01T00:00:00 in Unix microseconds


# ------------------------------------------------------------ DateTime and timestamp

@pytest.mark.parametrize("text, stored", [
    ("2025-07-15T12:34:56.000Z", "2025-07-15T12:34:56"),
    ("2025-07-15T12:34:56.5Z", "2025-07-15T12:34:56.5"),
    ("2025-07-15T12:34:56.1234567Z", "2025-07-15T12:34:56.123456"),  # truncated to microseconds
    ("2025-07-15T12:34:56.1234567891234567Z", "2025-07-15T12:34:56.123456"),  # 16 digits at most
    ("2025-07-15T09:34:56-03:00", "2025-07-15T12:34:56"),  # converted to UTC
    ("2025-07-15T14:34+02", "2025-07-15T12:34:00"),
    ("2025-07-16T02:34:56+14:00", "2025-07-15T12:34:56"),
    ("2025-07-15", "2025-07-15T00:00:00"),  # a date alone is midnight
    ("2025-07-15T12:34", "2025-07-15T12:34:00"),
    ("0001-01-01T00:00:00", "0001-01-01T00:00:00"),
    # Npgsql divides ticks by 10 toward 2000-01-01: before it, a 7th digit rounds up.
    ("1999-12-31T23:59:59.9999995", "2000-01-01T00:00:00"),
    ("1999-12-31T23:59:59.9999985", "1999-12-31T23:59:59.999999"),
    ("9999-12-31T23:59:59.9999999", "9999-12-31T23:59:59.9999999"),  # DateTime.MaxValue, 'infinity'
])
def test_datetime_is_stored_as_npgsql_writes_it_and_read_back_without_offset(text, stored):
    assert dotnet.format_datetime(dotnet.parse_datetime(text)) == stored


@pytest.mark.parametrize("text", [
    "2025-07-15 12:34:56", "2025-07-15t12:34:56", "2025-07-15T12:34:56z", "20250715T123456",
    "2025-07-15T12", "2025-07-15T12:34:56.", "2025-07-15T12:34:56.12345678901234567",
    "2025-07-15T12:34:56+0300", "2025-07-15T12:34:56+15:00", "2025-07-15T12:34:56+14:30",
    "2025-07-15T12:34:60", "2025-07-15T24:00", "0000-01-01", "2025-02-29", "2025-7-15",
    "0001-01-01T00:00+01:00",  # before DateTime.MinValue once in UTC
    "\uff12025-07-15", "", None, 1752582896,
])
def test_datetime_refuses_what_system_text_json_refuses(text):
    with pytest.raises(BindingError):
        dotnet.parse_datetime(text)


def reference_stored_us(moment: datetime.datetime, fraction: str, offset_minutes: int | None) -> int:
    """The stored microseconds computed another way: Python datetimes, then the 7th digit."""
    utc = moment - datetime.timedelta(minutes=offset_minutes or 0)
    micros = (utc - datetime.datetime(1970, 1, 1)) // datetime.timedelta(microseconds=1)
    micros += int(fraction[:6].ljust(6, "0"))
    seventh = int(fraction[6:7] or 0)
    if seventh and micros < _PG_EPOCH_US:  # truncation toward 2000 rounds up before it
        micros += 1
    return micros


@given(moment=st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                           timezones=st.none()).map(lambda m: m.replace(microsecond=0)),
       fraction=st.from_regex(r"[0-9]{0,16}", fullmatch=True),
       offset_minutes=st.one_of(st.none(), st.integers(-14 * 60, 14 * 60)),
       with_seconds=st.booleans())
def test_datetime_parsing_matches_a_reference(moment, fraction, offset_minutes, with_seconds):
    if not with_seconds:
        moment, fraction = moment.replace(second=0), ""
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}"
    if with_seconds:
        text += f":{moment.second:02d}"
    if fraction:
        text += "." + fraction
    if offset_minutes is not None:
        sign = "-" if offset_minutes < 0 else "+"
        text += f"{sign}{abs(offset_minutes) // 60:02d}:{abs(offset_minutes) % 60:02d}"
    if text.startswith("9999-12-31T23:59:59.9999999"):
        return  # DateTime.MaxValue: the example above
    assert dotnet.parse_datetime(text) == reference_stored_us(moment, fraction, offset_minutes)


@given(st.integers(dotnet.MIN_US, dotnet.MAX_US))
def test_every_stored_timestamp_is_written_trimmed_and_reads_back_as_itself(micros):
    text = dotnet.format_datetime(micros)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{0,5}[1-9])?", text)
    assert dotnet.parse_datetime(text) == micros


# ------------------------------------------------------------ decimal and numeric

@pytest.mark.parametrize("value, parsed", [
    (D("19.90"), "19.90"), (D("19.9"), "19.9"), (10, "10"), (D("1E+2"), "100"), (D("1.0E+1"), "10"),
    (D("100E-1"), "10.0"), (D("1.5E-1"), "0.15"), (D("0.000"), "0.000"),
    ("7.5", "7.5"), ("+7.50", "7.50"), ("5.", "5"), (".5", "0.5"), ("007", "7"), ("1e2", "100"),
    # More than 28 decimals: rounded half to even at the 28th, as .NET's parser does.
    (D("0.01499999999999999999999999999999"), "0.0150000000000000000000000000"),
    (D("79228162514264337593543950335"), "79228162514264337593543950335"),  # decimal.MaxValue
    # 96 bits at most: 29 digits would exceed decimal.MaxValue's mantissa, so 28 remain.
    (D("7.92281625142643375935439503355"), "7.922816251426433759354395034"),
])
def test_decimal_keeps_the_scale_it_was_written_with(value, parsed):
    assert dotnet.format_decimal(dotnet.parse_decimal(value)) == parsed


@pytest.mark.parametrize("value", [
    None, True, 1.5, "", ".", "abc", " 1", "1 ", "1,5", "0x10", "NaN", "Infinity", "1e", "--1",
    D("NaN"), D("Infinity"), D("79228162514264337593543950336"), D("1E+400"), "1e400",
])
def test_decimal_refuses_what_dotnet_refuses(value):
    with pytest.raises(BindingError):
        dotnet.parse_decimal(value)


@pytest.mark.parametrize("amount, stored", [
    ("19.905", "19.90"), ("19.915", "19.92"), ("19.925", "19.92"), ("0.005", "0.00"),
    ("-0.005", "0.00"), ("-1.235", "-1.24"), ("1.0000", "1.00"),
    ("19.9", "19.9"), ("10", "10"), ("19.90", "19.90"), ("-0.0", "0.0"),
])
def test_amounts_are_rounded_half_to_even_to_two_places_keeping_a_smaller_scale(amount, stored):
    assert dotnet.format_decimal(dotnet.round_amount(D(amount))) == stored


@given(st.decimals(min_value=-10**12, max_value=10**12, places=None, allow_nan=False, allow_infinity=False)
       .filter(lambda d: -28 <= d.as_tuple().exponent <= 0))
def test_round_amount_is_decimal_round_two(amount):
    stored = dotnet.round_amount(dotnet.parse_decimal(amount))
    if amount.as_tuple().exponent >= -2:
        assert stored == amount and stored.as_tuple().exponent == amount.as_tuple().exponent
    else:
        assert stored == amount.quantize(D("0.01"), decimal.ROUND_HALF_EVEN)
        assert stored.as_tuple().exponent == -2


# ------------------------------------------------------------ binding

def test_binding_matches_names_case_insensitively_and_the_last_value_wins():
    body = {"CORRELATIONID": "x", "amount": 1, "Amount": 2, "other": 3}
    assert dotnet.bind(body, ("correlationId", "amount", "requestedAt")) == {
        "correlationId": "x", "amount": 2}


@pytest.mark.parametrize("value, parsed", [(100, 100), ("100", 100), ("-5", -5), (2**31 - 1, 2**31 - 1)])
def test_int32_reads_numbers_and_numeric_strings(value, parsed):
    assert dotnet.parse_int32(value) == parsed


@pytest.mark.parametrize("value", [None, True, 1.5, D("1.5"), "1.5", "1e2", " 1", 2**31, -2**31 - 1])
def test_int32_refuses_the_rest(value):
    with pytest.raises(BindingError):
        dotnet.parse_int32(value)


@pytest.mark.parametrize("value", [
    "4a7901b87d264d9daa194dc1c7cf60b3", "{4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3}",
    "urn:uuid:4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b", None, 12,
])
def test_guids_are_read_in_the_d_format_only(value):
    with pytest.raises(BindingError):
        dotnet.parse_guid(value)
    assert dotnet.parse_guid("4A7901B8-7D26-4D9D-AA19-4DC1C7CF60B3") == "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"
