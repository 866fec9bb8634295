"""Dates: what we send a processor and what we parse back are the same number."""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st

from bruto.timefmt import format_iso_ms
from bruto.timefmt import parse_iso

# From the epoch to the last millisecond ISO-8601's four-digit years can write.
_MILLISECONDS = st.integers(min_value=0, max_value=253_402_300_799_999)


@given(_MILLISECONDS)
def test_formatting_then_parsing_gives_back_the_same_microseconds(ms):
    assert parse_iso(format_iso_ms(ms * 1000)) == ms * 1000


@given(_MILLISECONDS)
def test_parsing_then_formatting_gives_back_the_same_text(ms):
    moment = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)
    assert format_iso_ms(parse_iso(text)) == text


@given(_MILLISECONDS, st.integers(min_value=-23 * 60, max_value=23 * 60))
def test_an_offset_names_the_same_instant_as_its_utc_form(ms, offset_minutes):
    offset = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=ms)
    try:
        text = moment.astimezone(offset).isoformat()
    except OverflowError:
        return  # the local form falls outside years 1..9999
    assert parse_iso(text) == parse_iso(format_iso_ms(ms * 1000))


def test_what_the_official_test_sends():
    assert parse_iso("2020-07-10T12:34:56.000Z") == 1_594_384_496_000_000
    assert format_iso_ms(1_594_384_496_123_456) == "2020-07-10T12:34:56.123Z"


@given(st.text(max_size=80) | st.builds(lambda ms, tail: format_iso_ms(ms * 1000)[:-1] + tail,
                                         _MILLISECONDS, st.sampled_from(["", "Z", "+01:00", "-03:30", "123", "x"])))
def test_any_text_is_an_instant_named_again_by_its_canonical_form_or_a_value_error(text):
    try:
        instant = parse_iso(text)
    except ValueError:
        return
    assert type(instant) is int
    if 0 <= instant < 253_402_300_800_000_000:  # the years format_iso_ms writes with four digits
        assert parse_iso(format_iso_ms(instant)) == instant - instant % 1000
