"""Routing, breakers and timeouts: pure functions, a state in and a state (or a choice) out."""

from __future__ import annotations

import dataclasses

import numpy as np

from bruto.dispatcher import breaker
from bruto.dispatcher import routing
from bruto.dispatcher.breaker import Breaker
from bruto.dispatcher.routing import Choice
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import HEALTH

S = 1_000_000  # microseconds
POLICY = routing.Policy(patience_us=30 * S, target_rate=600, max_in_flight=128)
UP = Breaker()
FAST = (0, 0)


def failed(state, times, now):
    for _ in range(times):
        state = breaker.failed(state, now)
    return state


def test_healthy_default_takes_everything():
    assert routing.choose((UP, UP), FAST, (0, 0), 10 * S, POLICY) == Choice(DEFAULT)


def test_a_few_failures_are_noise_but_a_run_of_them_opens_the_breaker():
    default = failed(UP, breaker.THRESHOLD - 1, 10 * S)
    assert routing.choose((default, UP), FAST, (0, 0), 10 * S, POLICY) == Choice(DEFAULT)
    default = breaker.failed(default, 10 * S)
    assert default.state == breaker.OPEN and default.down_since == 10 * S
    assert routing.choose((default, UP), FAST, (0, 0), 10 * S, POLICY) is None


def test_an_open_breaker_lets_exactly_one_probe_through_per_interval():
    default = failed(UP, breaker.THRESHOLD, 10 * S)
    later = 10 * S + breaker.PROBE_INTERVAL_US
    assert routing.choose((default, UP), FAST, (0, 0), later - 1, POLICY) is None  # not due yet
    assert routing.choose((default, UP), FAST, (1, 0), later, POLICY) is None  # a payment still out
    # News of a recovery (breaker.reprobe) probes at once, whatever went out before it.
    assert routing.choose((breaker.reprobe(default, later), UP), FAST, (3, 0), later,
                          POLICY) == Choice(DEFAULT, probe=True)
    assert routing.choose((default, UP), FAST, (0, 0), later, POLICY) == Choice(DEFAULT, probe=True)
    default = breaker.probing(default, later)
    assert default.state == breaker.HALF_OPEN
    assert routing.choose((default, UP), FAST, (1, 0), later, POLICY) is None  # nothing beside it
    default = breaker.failed(default, later + 100)
    assert default.state == breaker.OPEN
    assert routing.choose((default, UP), FAST, (0, 0), later + 200, POLICY) is None  # wait for the next interval


def test_choosing_changes_nothing():
    default = failed(UP, breaker.THRESHOLD, 10 * S)
    before = (default, UP)
    routing.choose(before, FAST, (0, 0), 11 * S, POLICY)
    assert before == (default, UP)  # frozen values: the caller records breaker.probing


def test_a_successful_probe_closes_the_breaker_and_resets_the_outage_clock():
    default = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 11 * S)
    default = breaker.succeeded(default)
    assert default.state == breaker.CLOSED
    assert routing.down_since(default, 0) == 0
    assert routing.choose((default, UP), FAST, (0, 0), 12 * S, POLICY) == Choice(DEFAULT)


def test_payments_wait_for_default_within_the_patience():
    default = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 39 * S)  # a probe is out
    assert routing.choose((default, UP), FAST, (1, 0), 39 * S, POLICY) is None


def test_past_the_patience_fallback_takes_the_load():
    default = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 41 * S)
    assert routing.choose((default, UP), FAST, (1, 0), 41 * S, POLICY) == Choice(FALLBACK)


def test_with_both_down_everything_waits():
    default = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 50 * S)
    fallback = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 50 * S)
    assert routing.choose((default, fallback), FAST, (1, 1), 50 * S, POLICY) is None


def test_a_failing_health_report_opens_and_a_healthy_one_invites_a_probe():
    default = breaker.reported(UP, True, 10 * S)
    assert default.state == breaker.OPEN
    assert routing.choose((default, UP), FAST, (0, 0), 10 * S + 1, POLICY) is None
    default = breaker.reported(default, False, 10 * S + 2)
    assert routing.choose((default, UP), FAST, (0, 0), 10 * S + 3, POLICY) == Choice(DEFAULT, probe=True)
    assert breaker.reported(UP, False, 10 * S) == UP  # a healthy report never closes or opens


def test_routing_knows_when_its_answer_changes_by_itself():
    default = failed(UP, breaker.THRESHOLD, 10 * S)
    assert routing.next_change((default, UP), 10 * S, POLICY) == 10 * S + breaker.PROBE_INTERVAL_US
    probing = breaker.probing(default, 11 * S)
    assert routing.next_change((probing, UP), 11 * S, POLICY) == 10 * S + POLICY.patience_us
    assert routing.next_change((UP, UP), 11 * S, POLICY) is None


def test_a_breaker_goes_through_the_health_table_unchanged():
    rows = np.zeros(2, dtype=HEALTH.record)
    state = dataclasses.replace(failed(UP, breaker.THRESHOLD, 10 * S), failures=7)
    breaker.write(rows[FALLBACK], state)
    assert breaker.read(rows[FALLBACK]) == state
    assert breaker.read(rows[DEFAULT]) == UP


def test_timeouts_are_never_shorter_than_the_processor_needs():
    for delay_ms in (0, 20, 100, 2000, 5000, 9000):
        assert routing.timeout_s(delay_ms) > delay_ms / 1000 + 0.5


def test_in_flight_follows_littles_law():
    assert 550 * 0.1 <= routing.in_flight_limit(100, POLICY) <= POLICY.max_in_flight
    limit = routing.in_flight_limit(100, POLICY)
    assert routing.choose((UP, UP), (100, 0), (limit, 0), 10 * S, POLICY) is None
    assert routing.in_flight_limit(0, POLICY) == routing.MIN_IN_FLIGHT
    assert routing.in_flight_limit(5000, POLICY) == POLICY.max_in_flight


def test_the_patience_follows_from_the_fees_and_the_settlement_bound():
    preview = routing.Policy.from_terms(0.05, 0.15, 90)
    final = routing.Policy.from_terms(0.07, 0.10, 90)
    assert preview.patience_us == int(90 * 0.10 / 0.85 * S)  # ~10.6 s: a 10-s outage waits for default
    assert final.patience_us == int(90 * 0.03 / 0.90 * S)    # 3 s: minutes of outage go to fallback
    assert routing.Policy.from_terms(0.10, 0.10, 90).patience_us == 0  # no fee to save: no wait
    assert routing.Policy.from_terms(0.0, 0.60, 90).patience_us == 90 * S  # never past the bound


def test_a_default_slower_than_the_limit_is_down_from_when_it_became_slow():
    policy = routing.Policy.from_terms(0.07, 0.10, 90)
    slow = (policy.latency_limit_ms + 1, 0)
    since = (10 * S, 0)
    within = 10 * S + policy.patience_us - 1
    assert routing.choose((UP, UP), slow, (0, 0), within, policy, since) is None
    assert routing.next_change((UP, UP), within, policy, since) == 10 * S + policy.patience_us
    assert routing.choose((UP, UP), slow, (0, 0), within + 1, policy, since) == Choice(FALLBACK)
    # As fast as the limit: default again, whatever the clock says.
    at_limit = (policy.latency_limit_ms, 0)
    assert routing.choose((UP, UP), at_limit, (0, 0), within + 1, policy, (0, 0)) == Choice(DEFAULT)


def test_a_slow_fallback_is_not_used_either():
    policy = routing.Policy.from_terms(0.07, 0.10, 90)
    default = breaker.probing(failed(UP, breaker.THRESHOLD, 10 * S), 59 * S)  # its probe is out
    latencies = (0, policy.latency_limit_ms + 1)
    assert routing.choose((default, UP), latencies, (1, 0), 60 * S, policy, (0, 10 * S)) is None


def test_a_late_processor_takes_nothing_new_but_is_not_down():
    answering, limit = 100, 100 * 3 // 2 + routing.LATE_MARGIN_MS
    assert not routing.late(answering, limit)
    assert routing.late(answering, limit + 1)
    assert routing.late(0, routing.LATE_MARGIN_MS + 1)  # no answers yet: a few tens of ms is late
    # Late default: held (up, so no patience clock runs and fallback gets nothing) ...
    assert routing.choose((UP, UP), (200, 0), (5, 0), 10 * S, POLICY, is_late=(True, False)) is None
    # ... and a late fallback takes nothing either, while default is down past the patience.
    default = failed(UP, breaker.THRESHOLD, 10 * S)
    assert routing.choose((breaker.probing(default, 50 * S), UP), (0, 200), (1, 5), 50 * S, POLICY,
                          is_late=(False, True)) is None
    assert routing.choose((breaker.probing(default, 50 * S), UP), (0, 200), (1, 5), 50 * S,
                          POLICY) == Choice(FALLBACK)


def test_news_of_a_recovery_replaces_a_stale_probe_never_a_fresh_one():
    opened = failed(UP, breaker.THRESHOLD, 10 * S)
    probing = breaker.probing(opened, 11 * S)
    # The probe went out under a 2-s delay; health now says 20 ms and not failing.
    assert breaker.reported(probing, False, 11 * S + 100_000, 20) == probing  # out 100 ms: wait for it
    again = breaker.reported(probing, False, 11 * S + 300_000, 20)
    assert again.state == breaker.OPEN and breaker.may_probe(again, 11 * S + 300_000)
    assert again.down_since == opened.down_since  # the outage clock does not restart
    assert breaker.reported(probing, True, 13 * S, 20) == probing  # still failing: nothing new
    assert breaker.reprobe(UP, 13 * S) == UP  # never closes, never opens
    assert breaker.may_probe(breaker.reprobe(opened, 10 * S + 1), 10 * S + 1)
