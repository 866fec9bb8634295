"""Counters in shared memory, read back as a snapshot and as Prometheus' text format (no processes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bruto import inspector
from bruto.config import Settings
from bruto.dispatcher import breaker
from bruto.dispatcher.metrics import MAX_WAIT_US
from bruto.dispatcher.metrics import DispatcherMetrics
from bruto.dispatcher.metrics import bucket_of
from bruto.dispatcher.processor import Health
from bruto.dispatcher.processor import Outcome
from bruto.dispatcher.processor import RateLimited
from bruto.dispatcher.processor import Stored
from bruto.gateway.counters import GatewayCounters
from bruto.gateway.metrics import SharedMemoryCollector
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_payment
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import HEALTH
from bruto.shm.layout import LATENCY_BOUNDS_US
from bruto.shm.layout import LEDGER
from bruto.shm.layout import REJECTIONS
from bruto.shm.layout import create_all
from bruto.shm.layout import open_health
from bruto.shm.layout import open_metrics
from bruto.shm.snapshot import read

# One body for each row of bruto.gateway.validation's table.
INVALID_BODIES = [
    b"x" * 5000,
    b"{not json",
    b"[1, 2]",
    b'{"amount": 1}',
    b'{"correlationId": "nope", "amount": 1}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": "1"}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": -1}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 1.001}',
    b'{"correlationId": "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60b3", "amount": 1e12}',
]


@pytest.fixture
def shm(tmp_path):
    settings = Settings(shm_dir=str(tmp_path / "shm"), intake_slots=2, intake_capacity=64,
                        ledger_capacity=64, outbox_capacity=64)
    create_all(settings)
    return settings


def scrape(shm_dir: str) -> dict:
    """GET /metrics' body, parsed back by prometheus_client: {(sample name, sorted labels): value}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SharedMemoryCollector(shm_dir))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def refusal(body: bytes) -> InvalidPayment:
    with pytest.raises(InvalidPayment) as raised:
        parse_payment(body)
    return raised.value


def test_every_refusal_of_the_validation_table_has_its_own_reason():
    reasons = [refusal(body).reason for body in INVALID_BODIES]
    assert sorted(reasons) == sorted(reason for reason, _ in REJECTIONS if reason not in ("intake_full", "overloaded"))
    statuses = dict(REJECTIONS)
    assert [statuses[r] for r in reasons] == [refusal(body).status for body in INVALID_BODIES]


def test_a_workers_answers_are_counted_in_its_slab_and_rendered(shm):
    intake = IntakeWriter.claim(shm)
    counters = GatewayCounters(intake.slab)
    for n in range(3):
        intake.append(bytes([n]) * 16, 1990, 1)
    for body in INVALID_BODIES:
        counters.rejection(refusal(body))
    counters.rejection(refusal(b"{not json"))
    counters.intake_full()
    counters.response("/payments-summary", 200)
    counters.response("/payments-summary", 400)
    counters.response("/nowhere", 404)
    counters.response("/payments", 405)
    counters.protocol_error(431)

    snap = read(shm.shm_dir)
    assert snap["gateway"]["accepted"] == 3
    assert snap["gateway"]["rejections"]["invalid_json"] == 2
    assert snap["gateway"]["rejections"]["intake_full"] == 1
    assert snap["gateway"]["requests"] == {
        "payments": {"202": 3, "400": 3, "413": 1, "422": 7, "503": 1, "405": 1},
        "payments_summary": {"200": 1, "400": 1},
        "other": {"404": 1},
    }
    samples = scrape(shm.shm_dir)
    slot = str(intake.slot).zfill(2)

    def requests(route, status):
        return samples[("bruto_http_requests_total", (("route", route), ("slot", slot), ("status", status)))]

    assert requests("payments", "202") == 3
    assert requests("payments", "422") == 7
    assert requests("payments_summary", "400") == 1
    assert requests("other", "404") == 1
    assert samples[("bruto_payments_rejected_total", (("reason", "amount_too_precise"), ("slot", slot)))] == 1
    assert samples[("bruto_http_protocol_errors_total", (("slot", slot), ("status", "431")))] == 1
    assert samples[("bruto_intake_backlog", (("slot", slot),))] == 3
    assert samples[("bruto_worker_up", (("slot", slot),))] == 1  # this process holds the slot's lock
    # A slot no worker ever claimed is left out.
    assert not any(dict(labels).get("slot") == "01" for _, labels in samples)


def test_the_dispatchers_counters_are_rendered_as_counters_and_histograms(shm):
    metrics = DispatcherMetrics(open_metrics(shm))
    metrics.attempt(0, attempts_before=0)
    metrics.answered(0, Outcome.UNKNOWN, 7_000_000)
    metrics.attempt(0, attempts_before=1)
    metrics.answered(0, Outcome.STORED, 1_500)
    metrics.attempt(1, attempts_before=0)
    metrics.answered(1, Outcome.FAILED, 300)
    metrics.looked_up(0, Stored(requested_at=1, amount_cents=1990))
    metrics.looked_up(0, None)
    metrics.looked_up(0, Outcome.UNKNOWN)
    metrics.confirmed(0, 1990, waited_us=40_000)
    metrics.confirmed(0, 10, waited_us=-5)  # another clock: never a negative wait
    metrics.health_polled(1, Health(failing=True, min_response_ms=100))
    metrics.health_polled(1, RateLimited(5.0))
    metrics.health_polled(1, None)
    metrics.duplicate_dropped()
    metrics.purged()

    samples = scrape(shm.shm_dir)

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("bruto_payment_attempts_total", processor="default") == 2
    assert value("bruto_payment_retries_total", processor="default") == 1
    assert value("bruto_payment_outcomes_total", processor="default", outcome="unknown") == 1
    assert value("bruto_payment_outcomes_total", processor="default", outcome="stored") == 1
    assert value("bruto_payment_outcomes_total", processor="fallback", outcome="failed") == 1
    for result in ("found", "not_found", "unknown"):
        assert value("bruto_payment_lookups_total", processor="default", result=result) == 1
    for result in ("ok", "rate_limited", "failed"):
        assert value("bruto_health_polls_total", processor="fallback", result=result) == 1
    assert value("bruto_payments_confirmed_total", processor="default") == 2
    assert value("bruto_payments_confirmed_cents_total", processor="default") == 2000
    assert value("bruto_payment_duplicates_dropped_total") == 1
    assert value("bruto_purges_total") == 1
    send = "bruto_payment_send_duration_seconds"
    assert value(send + "_count", processor="default") == 2
    assert value(send + "_sum", processor="default") == pytest.approx(7.0015)
    assert value(send + "_bucket", processor="default", le="0.001") == 0
    assert value(send + "_bucket", processor="default", le="0.002") == 1
    assert value(send + "_bucket", processor="default", le="5") == 1
    assert value(send + "_bucket", processor="default", le="10") == 2
    assert value(send + "_bucket", processor="default", le="+Inf") == 2
    assert value("bruto_outbox_wait_seconds_bucket", le="0.00025") == 1
    assert value("bruto_outbox_wait_seconds_bucket", le="0.05") == 2
    assert value("bruto_outbox_wait_seconds_sum") == pytest.approx(0.04)
    assert value("bruto_dispatcher_up") == 0  # no dispatcher holds the lock


def test_a_wrong_acceptance_time_never_overflows_the_wait_sum(shm):
    """An accepted_at of 0 (a writer with no clock, a tool) made each wait ~1.7e15 µs:
    a few thousand of them overflowed the int64 sum, and the store raised in the dispatcher."""
    region = open_metrics(shm)
    metrics = DispatcherMetrics(region)
    for _ in range(10_000):
        metrics.confirmed(0, 1990, waited_us=1_700_000_000_000_000)
    assert int(region.counters["outbox_wait_sum_us"]) == 10_000 * MAX_WAIT_US
    assert int(region.records[0]["confirmed"]) == 10_000


def test_health_and_breakers_are_rendered(shm):
    row = open_health(shm).records[0]
    row["min_response_ms"] = 2000
    row["failing"] = 1
    state = breaker.reported(breaker.Breaker(), True, 1_000_000)  # closed -> open
    breaker.write(row, state)
    state = breaker.probing(state, 2_000_000)                      # open -> half-open
    breaker.write(row, state)
    breaker.write(row, breaker.failed(state, 2_100_000))           # half-open -> open
    samples = scrape(shm.shm_dir)
    labels = (("processor", "default"),)
    assert samples[("bruto_breaker_state", labels)] == breaker.OPEN
    assert samples[("bruto_processor_failing", labels)] == 1
    assert samples[("bruto_processor_min_response_time_seconds", labels)] == 2.0
    opened = samples[("bruto_breaker_transitions_total", (("processor", "default"), ("state", "open")))]
    half_opened = samples[("bruto_breaker_transitions_total", (("processor", "default"), ("state", "half_open")))]
    assert (opened, half_opened) == (2, 1)


EVENTS = st.lists(st.tuples(st.sampled_from(["success", "failure", "health_failing", "health_ok", "probe"]),
                            st.integers(0, 1_000_000)), max_size=60)


@given(EVENTS)
def test_breaker_transitions_count_every_change_of_state(events):
    row = np.zeros(1, dtype=HEALTH.record)[0]
    changes = [0, 0, 0]
    now = 0
    state = breaker.Breaker()
    for event, step in events:
        now += step
        before = int(row["breaker"])
        if event == "success":
            state = breaker.succeeded(state)
        elif event == "failure":
            state = breaker.failed(state, now)
        elif event.startswith("health"):
            state = breaker.reported(state, event == "health_failing", now)
        elif breaker.may_probe(state, now):
            state = breaker.probing(state, now)
        breaker.write(row, state)
        after = int(row["breaker"])
        if after != before:
            changes[after] += 1
    assert list(row["transitions"]) == changes


@hypothesis_settings(max_examples=50)
@given(st.lists(st.integers(0, 100_000_000), max_size=40))
def test_histogram_buckets_hold_what_was_observed(durations):
    """Cumulative bucket ``le`` counts exactly the observations at or below it (bounds inclusive)."""
    durations += list(LATENCY_BOUNDS_US[:3])  # values right on a bound belong to its bucket
    buckets = [0] * (len(LATENCY_BOUNDS_US) + 1)
    for us in durations:
        buckets[bucket_of(us)] += 1
    for i, bound in enumerate(LATENCY_BOUNDS_US):
        assert sum(buckets[:i + 1]) == sum(1 for us in durations if us <= bound)
    assert sum(buckets) == len(durations)


def run_inspector(capsys, *args) -> tuple[int, str, str]:
    status = inspector.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def test_the_inspector_prints_json_and_a_live_view(shm, capsys):
    intake = IntakeWriter.claim(shm)
    intake.append(b"\x01" * 16, 1990, 1)
    status, out, _ = run_inspector(capsys, "--json", "--shm-dir", shm.shm_dir)
    assert status == 0
    assert json.loads(out)["gateway"]["accepted"] == 1
    status, out, _ = run_inspector(capsys, "--shm-dir", shm.shm_dir)
    assert status == 0 and "1 payment accepted, backlog 1" in out
    status, out, _ = run_inspector(capsys, "--watch", "0.05", "--count", "2", "--shm-dir", shm.shm_dir)
    assert status == 0
    assert out.count("payments/s   in") == 2
    assert "default   closed" in out


def test_the_table_adds_up_without_arithmetic(shm):
    """The outbox's parts beside their sum, and a processor's attempts with nothing dangling when there are none."""
    snap = read(shm.shm_dir)
    snap["outbox"].update(queued=29, sent=1, unresolved=0)
    snap["processors"]["default"].update(attempts=3, retries=1, outcomes={"stored": 2, "failed": 1, "unknown": 0})
    shown = inspector.table(snap)
    assert ("outbox: 30 payments not confirmed yet (capacity 64): 29 queued, 1 out to a processor now, "
            "0 unresolved (a lookup decides)") in shown
    assert shown.splitlines()[-2].endswith("; 3 attempts (1 of them a retry): stored 2, failed 1")
    assert shown.splitlines()[-1].endswith("; no attempts")


def test_the_live_view_computes_rates_between_snapshots(shm):
    before = read(shm.shm_dir)
    intake = IntakeWriter.claim(shm)
    for n in range(30):
        intake.append(bytes([n]) * 16, 1990, 1)
    metrics = DispatcherMetrics(open_metrics(shm))
    for _ in range(10):
        metrics.attempt(0, 0)
        metrics.answered(0, Outcome.STORED, 2_000)
        metrics.confirmed(0, 1990, 30_000)
    after = dict(read(shm.shm_dir), taken_at=before["taken_at"] + 2.0)
    view = inspector.watch_view(after, before)
    assert "in     15.0   out      5.0" in view
    assert "mean 2.0 ms, p90 <=2 ms" in view
    assert "accept->confirm p50 <=50 ms" in view


def damage_ledger(shm_dir: str, damage: str) -> str:
    """Damage ledger.bin as ``damage`` says; returns what the error must name."""
    ledger = os.path.join(shm_dir, "ledger.bin")
    if damage == "missing file":
        os.unlink(ledger)
        return "ledger.bin: region file does not exist"
    if damage == "directory":
        os.unlink(ledger)
        os.mkdir(ledger)
        return "ledger.bin: cannot map it"
    with open(ledger, "r+b") as f:
        if damage == "foreign":
            f.write(b"NOTBRUTO")
            return "ledger.bin: not a bruto region"
        if damage == "truncated":
            f.truncate(200)
            return "ledger.bin: file is 200 bytes, shorter than its header claims"
        if damage == "short header":
            f.truncate(10)
            return "ledger.bin: 10 bytes is too short for a region header"
        assert damage == "other version"
        f.seek(24)  # the header's version field
        f.write((99).to_bytes(4, "little"))
        return f"layout version 99, expected {LEDGER.version}"


@pytest.mark.parametrize("damage", ["missing file", "directory", "foreign", "truncated", "short header",
                                    "other version"])
def test_the_inspector_refuses_a_damaged_region_in_one_line(shm, capsys, damage):
    expected = damage_ledger(shm.shm_dir, damage)
    for args in (["--json"], [], ["--watch", "0.01", "--count", "1"]):
        status, out, err = run_inspector(capsys, *args, "--shm-dir", shm.shm_dir)
        assert status == 1
        assert out == ""
        assert err.startswith("bruto-shm: ") and expected in err
        assert err.count("\n") == 1


def test_the_inspector_refuses_a_missing_directory_in_one_line(tmp_path, capsys):
    status, out, err = run_inspector(capsys, "--shm-dir", str(tmp_path / "nowhere"))
    assert (status, out) == (1, "")
    assert "nowhere: no such directory" in err and err.count("\n") == 1


def test_a_setting_error_is_one_line_too(capsys, monkeypatch):
    monkeypatch.setenv("BRUTO_INTAKE_SLOTS", "many")
    status, _, err = run_inspector(capsys, "--json")
    assert status == 1 and err.startswith("bruto-shm: BRUTO_INTAKE_SLOTS must be an integer")
