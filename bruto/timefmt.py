"""Timestamps: integer microseconds since the Unix epoch, UTC, and their ISO-8601 forms."""

from __future__ import annotations

import datetime
import time

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


def now_us() -> int:
    return time.time_ns() // 1000


def parse_iso(text: str) -> int:
    """Parse an ISO-8601 date-time into epoch microseconds.

    Accepts what the official test sends (``2020-07-10T12:34:56.000Z``) and the
    other common forms: any fraction digits, ``Z`` or a numeric offset, a bare
    date. A value without an offset is taken as UTC, as the processors do.

    It is also the parser of the ``requestedAt`` a processor's GET
    /payments/{id} returns: PostgreSQL's ``timestamp`` (UTC, no zone) written
    by System.Text.Json, without offset and with fraction digits only as far
    as they are non-zero (``2025-07-15T12:34:56``, ``2025-07-15T12:34:56.5``,
    ``2025-07-15T12:34:56.123456``); digits past the microsecond (.NET's
    seventh) are dropped.

    Raises:
        ValueError: not an ISO-8601 date-time.
    """
    if not text or len(text) > 64:
        raise ValueError(text)
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return (value - _EPOCH) // _MICROSECOND


def format_iso_ms(epoch_us: int) -> str:
    """Render epoch microseconds as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Only exact milliseconds are ever sent to a processor, so the value it stores
    and the one our ledger keeps are the same number.
    """
    seconds, micros = divmod(epoch_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % (micros // 1000)
