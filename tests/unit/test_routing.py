"""Routing, breakers and timeouts as pure functions of the health table and the clock."""

from __future__ import annotations

import numpy as np
import pytest

from bruto.dispatcher import breaker
from bruto.dispatcher import routing
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import HEALTH

S = 1_000_000  # microseconds
POLICY = routing.Policy(patience_us=30 * S, target_rate=600, max_in_flight=128)


@pytest.fixture
def health():
    return np.zeros(2, dtype=HEALTH.record)


def fail(row, times, now):
    for _ in range(times):
        breaker.record_failure(row, now)


def test_healthy_default_takes_everything(health):
    assert routing.choose(health, (0, 0), 10 * S, POLICY) == DEFAULT


def test_a_few_failures_are_noise_but_a_run_of_them_opens_the_breaker(health):
    fail(health[DEFAULT], breaker.THRESHOLD - 1, 10 * S)
    assert routing.choose(health, (0, 0), 10 * S, POLICY) == DEFAULT
    breaker.record_failure(health[DEFAULT], 10 * S)
    assert routing.choose(health, (1, 0), 10 * S, POLICY) is None  # open, and a probe would need in-flight 0


def test_an_open_breaker_lets_exactly_one_probe_through_per_interval(health):
    fail(health[DEFAULT], breaker.THRESHOLD, 10 * S)
    later = 10 * S + breaker.PROBE_INTERVAL_US
    assert routing.choose(health, (0, 0), later, POLICY) == DEFAULT  # the probe
    assert int(health[DEFAULT]["breaker"]) == breaker.HALF_OPEN
    assert routing.choose(health, (1, 0), later, POLICY) is None     # nothing beside it
    breaker.record_failure(health[DEFAULT], later + 100)
    assert int(health[DEFAULT]["breaker"]) == breaker.OPEN
    assert routing.choose(health, (0, 0), later + 200, POLICY) is None  # wait for the next interval


def test_a_successful_probe_closes_the_breaker_and_resets_the_outage_clock(health):
    fail(health[DEFAULT], breaker.THRESHOLD, 10 * S)
    routing.choose(health, (0, 0), 11 * S, POLICY)
    breaker.record_success(health[DEFAULT])
    assert int(health[DEFAULT]["breaker"]) == breaker.CLOSED
    assert breaker.down_for(health[DEFAULT], 12 * S) == 0
    assert routing.choose(health, (0, 0), 12 * S, POLICY) == DEFAULT


def test_payments_wait_for_default_within_the_patience(health):
    fail(health[DEFAULT], breaker.THRESHOLD, 10 * S)
    health[DEFAULT]["probe_at"] = 10 * S + 29 * S  # a probe is out
    health[DEFAULT]["breaker"] = breaker.HALF_OPEN
    assert routing.choose(health, (1, 0), 10 * S + 29 * S, POLICY) is None


def test_past_the_patience_fallback_takes_the_load(health):
    fail(health[DEFAULT], breaker.THRESHOLD, 10 * S)
    health[DEFAULT]["breaker"] = breaker.HALF_OPEN  # its probe is out
    assert routing.choose(health, (1, 0), 41 * S, POLICY) == FALLBACK


def test_with_both_down_everything_waits(health):
    fail(health[DEFAULT], breaker.THRESHOLD, 10 * S)
    fail(health[FALLBACK], breaker.THRESHOLD, 10 * S)
    health[DEFAULT]["breaker"] = health[FALLBACK]["breaker"] = breaker.HALF_OPEN
    assert routing.choose(health, (1, 1), 50 * S, POLICY) is None


def test_a_failing_health_report_opens_and_a_healthy_one_invites_a_probe(health):
    breaker.record_health(health[DEFAULT], True, 10 * S)
    assert int(health[DEFAULT]["breaker"]) == breaker.OPEN
    assert routing.choose(health, (0, 0), 10 * S + 1, POLICY) is None
    breaker.record_health(health[DEFAULT], False, 10 * S + 2)
    assert routing.choose(health, (0, 0), 10 * S + 3, POLICY) == DEFAULT
    assert int(health[DEFAULT]["breaker"]) == breaker.HALF_OPEN


def test_timeouts_are_never_shorter_than_the_processor_needs(health):
    row = health[DEFAULT]
    for delay_ms in (0, 20, 100, 2000, 5000):
        row["min_response_ms"] = delay_ms
        assert routing.timeout_s(row) > delay_ms / 1000 + 0.5
    row["latency_p90_ms"] = 9000  # observed slower than reported
    assert routing.timeout_s(row) > 9.0


def test_in_flight_follows_littles_law(health):
    row = health[DEFAULT]
    row["min_response_ms"] = 100
    assert 550 * 0.1 <= routing.in_flight_limit(row, POLICY) <= POLICY.max_in_flight
    assert routing.choose(health, (routing.in_flight_limit(row, POLICY), 0), 10 * S, POLICY) is None
    row["min_response_ms"] = 0
    assert routing.in_flight_limit(row, POLICY) == routing.MIN_IN_FLIGHT
    row["min_response_ms"] = 5000
    assert routing.in_flight_limit(row, POLICY) == POLICY.max_in_flight
