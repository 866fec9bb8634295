"""The dispatcher's lookup path against processors that answer in the real service's format.

GET /payments/{id} on the real processor returns requestedAt as PostgreSQL's
`timestamp` (no offset, fraction trimmed) and the amount with its own scale;
the emulator answers the same way (docs/EMULATOR.md). These tests run
`ProcessorClient.lookup` against a real emulator process, then the two ways
the dispatcher uses it: a 422 (the processor already had the payment) and an
unknown outcome (the dispatcher died while its payments were in flight).
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests
from gateway import Gateway

from bruto.dispatcher.processor import Outcome
from bruto.dispatcher.processor import ProcessorClient
from bruto.dispatcher.processor import Stored
from bruto.dispatcher.processor import make_session
from bruto.shm.snapshot import read as snapshot
from bruto.testbed.emulator.dotnet import MIN_US
from bruto.timefmt import parse_iso

pytestmark = pytest.mark.slow  # real processes


def post_raw(url: str, correlation_id: str, fields: str) -> requests.Response:
    """POST /payments as any client of the processor may: the JSON fields exactly as written."""
    body = f'{{"correlationId":"{correlation_id}"{"," if fields else ""}{fields}}}'
    return requests.post(f"{url}/payments", data=body, timeout=10,
                         headers={"Content-Type": "application/json"})


def lookups(gateway: Gateway) -> int:
    """Lookups the dispatcher made, on either processor, whatever they found."""
    processors = snapshot(gateway.env["BRUTO_SHM_DIR"])["processors"]
    return sum(sum(p["lookups"].values()) for p in processors.values())


def wait_until_sent(gateway: Gateway, count: int, settle_s: float = 1.0, timeout_s: float = 20.0) -> None:
    """Waits until `count` payments are sent and unresolved, or some are and `settle_s` passed."""
    deadline = time.monotonic() + timeout_s
    first_sent = None
    while time.monotonic() < deadline:
        outbox = snapshot(gateway.env["BRUTO_SHM_DIR"])["outbox"]
        sent = outbox["sent"] + outbox["unresolved"]
        if sent and first_sent is None:
            first_sent = time.monotonic()
        if sent >= count or (first_sent is not None and time.monotonic() - first_sent >= settle_s):
            return
        time.sleep(0.02)
    raise AssertionError(f"no payment was sent in {timeout_s} s\n{gateway.log('dispatcher-0')}")


# (JSON fields as a client sent them, requestedAt then amount as the lookup must report them)
SPELLINGS = [
    ('"amount":19.90,"requestedAt":"2025-07-15T12:34:56.000Z"', "2025-07-15T12:34:56Z", 1990),
    ('"amount":19.9,"requestedAt":"2025-07-15T12:34:56.5Z"', "2025-07-15T12:34:56.5Z", 1990),
    ('"amount":"7.5","requestedAt":"2025-07-15T09:34:56.1234567-03:00"', "2025-07-15T12:34:56.123456Z", 750),
    ('"AMOUNT":1e2,"RequestedAt":"2025-07-15"', "2025-07-15T00:00:00Z", 10000),
    ('"amount":10,"requestedAt":"2025-07-15T12:34"', "2025-07-15T12:34:00Z", 1000),
    ('"amount":19.905,"requestedAt":"1999-12-31T23:59:59.9999995"', "2000-01-01T00:00:00Z", 1990),
    ('"amount":19.915,"requestedAt":"2025-07-15T12:34:56.000001+00:00"', "2025-07-15T12:34:56.000001Z", 1992),
]


@pytest.mark.parametrize("fields, requested_at, amount_cents", SPELLINGS)
def test_lookup_reads_what_the_processor_stored_in_its_own_spelling(
        clean_processors, fields, requested_at, amount_cents):
    processor = clean_processors.default
    correlation_id = uuid.uuid4()
    assert post_raw(processor.url, str(correlation_id), fields).status_code == 200
    client = ProcessorClient(processor.url, make_session(2))
    assert client.lookup(correlation_id.bytes) == Stored(parse_iso(requested_at), amount_cents)


def test_lookup_reads_a_payment_stored_with_every_field_missing(clean_processors):
    processor = clean_processors.default
    correlation_id = uuid.uuid4()
    assert post_raw(processor.url, str(correlation_id), "").status_code == 200
    client = ProcessorClient(processor.url, make_session(2))
    assert client.lookup(correlation_id.bytes) == Stored(MIN_US, 0)  # 0001-01-01T00:00:00, 0


def test_what_bruto_pays_is_looked_up_to_the_microsecond_and_cent(clean_processors):
    processor = clean_processors.default
    client = ProcessorClient(processor.url, make_session(2))
    requested_at = 1752582896123_000  # whole milliseconds, as the dispatcher sends
    for amount_cents in (1, 10, 1990, 2000, 100_000_000_000):
        correlation_id = uuid.uuid4()
        assert client.pay(correlation_id.bytes, amount_cents, requested_at, 5.0) is Outcome.STORED
        raw = processor.get_payment(str(correlation_id))
        assert raw["requestedAt"] == "2025-07-15T12:34:56.123"  # the real service's spelling
        assert client.lookup(correlation_id.bytes) == Stored(requested_at, amount_cents)


def test_lookup_of_an_unknown_id_is_none_and_of_a_dead_processor_unknown(start_emulator):
    processor = start_emulator()
    client = ProcessorClient(processor.url, make_session(2))
    assert client.lookup(uuid.uuid4().bytes) is None
    processor.stop()
    assert client.lookup(uuid.uuid4().bytes) is Outcome.UNKNOWN


def test_a_payment_the_processor_already_had_is_recorded_as_it_stored_it(tmp_path, clean_processors):
    """The dispatcher's 422 path: the lookup's requestedAt and amount go to the ledger."""
    processor = clean_processors.default
    correlation_id = str(uuid.uuid4())
    fields = '"amount":"7.5","requestedAt":"2025-07-15T09:34:56.1234567-03:00"'
    assert post_raw(processor.url, correlation_id, fields).status_code == 200
    gw = Gateway.start(tmp_path, clean_processors, workers=1)
    try:
        assert gw.pay(correlation_id, "19.90").status_code == 202
        ours = gw.wait_settled(clean_processors, expected=1)
        assert ours["default"] == {"totalRequests": 1, "totalAmount": 7.5}
        stored_at = "2025-07-15T12:34:56.123456Z"
        assert gw.summary(stored_at, stored_at)["default"]["totalRequests"] == 1
        assert gw.summary("2025-07-15T12:34:56.123457Z", "2025-07-16T00:00:00.000Z")["default"][
            "totalRequests"] == 0
        assert gw.summary("2025-07-15T00:00:00.000Z", "2025-07-15T12:34:56.123455Z")["default"][
            "totalRequests"] == 0
        assert lookups(gw) >= 1
    finally:
        gw.stop()


def test_an_unknown_outcome_is_resolved_by_lookup_to_the_microsecond(tmp_path, clean_processors):
    """Payments in flight when the dispatcher dies: the next one looks them up and records them exactly."""
    processor = clean_processors.default
    processor.set_delay(3000)  # payments stay in flight long enough to kill the dispatcher meanwhile
    amounts = ["0.01", "19.90", "20.00", "1000000000.00", "7.50"] * 4
    ids = [str(uuid.uuid4()) for _ in amounts]
    gw = Gateway.start(tmp_path, clean_processors, workers=1)
    try:
        for correlation_id, amount in zip(ids, amounts):
            assert gw.pay(correlation_id, amount).status_code == 202
        wait_until_sent(gw, len(ids))
        os.kill(gw.dispatchers[0].pid, signal.SIGKILL)
        gw.dispatchers[0].wait()
        outbox = snapshot(gw.env["BRUTO_SHM_DIR"])["outbox"]
        assert outbox["sent"] + outbox["unresolved"] > 0
        gw.start_dispatcher()
        ours = gw.wait_settled(clean_processors, expected=len(ids), timeout=40)
        assert lookups(gw) >= 1
        # A payment marked sent that the killed dispatcher had not yet written is proven absent and
        # sent again, wherever routing sends it by then (default is slow): stored once, somewhere.
        processors = {"default": processor, "fallback": clean_processors.fallback}
        stored_by = {}
        for correlation_id in ids:
            holders = [name for name, p in processors.items() if p.get_payment(correlation_id) is not None]
            assert len(holders) == 1, (correlation_id, holders)
            stored_by[correlation_id] = holders[0]
        assert ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"] == len(ids)
        assert ours["default"]["totalAmount"] + ours["fallback"]["totalAmount"] == pytest.approx(
            4 * (0.01 + 19.90 + 20.00 + 1e9 + 7.50))
        assert ours["default"]["totalRequests"] >= 1  # what was in flight there was found there
        # Each payment at the exact microsecond its processor stored it, as that processor counts it.
        for correlation_id, name in stored_by.items():
            holder = processors[name]
            stored_at = holder.get_payment(correlation_id)["requestedAt"] + "Z"
            theirs = holder.admin_summary(stored_at, stored_at)
            assert theirs["totalRequests"] >= 1
            assert gw.summary(stored_at, stored_at)[name] == {
                "totalRequests": theirs["totalRequests"], "totalAmount": pytest.approx(theirs["totalAmount"])}
    finally:
        gw.stop()
