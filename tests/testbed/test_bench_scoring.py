"""The scoring of docs/CHALLENGE.md §4, checked on a summary recorded by rinha.js."""

import copy
import json
from pathlib import Path

import pytest

from bruto.testbed.bench.score import EXPECTED_P99
from bruto.testbed.bench.score import bonus_of
from bruto.testbed.bench.score import score

FIXTURE = Path(__file__).parent / "data" / "rinha-summary-bruto.json"


@pytest.fixture
def summary():
    # Recorded by `bruto-bench` (bruto-1-summary.json): 16,342 payments
    # accepted, 12,934 confirmed by default (257,386.60), none by fallback,
    # p99 445.85 ms, no inconsistency.
    return json.loads(FIXTURE.read_text())


def with_p99(summary, p99):
    changed = copy.deepcopy(summary)
    changed["metrics"][EXPECTED_P99]["values"]["p(99)"] = p99
    return changed


def test_recorded_run(summary):
    result = score(summary)
    assert result["p99"] == 445.845
    assert result["bonus"] == 0
    assert result["fine"] == 0
    assert result["inconsistencies"] == 0
    assert result["default"] == {"requests": 12934, "amount": 257386.6, "fee_per_transaction": 0.05}
    assert result["fallback"] == {"requests": 0, "amount": 0, "fee_per_transaction": 0.15}
    assert result["gross"] == 257386.6
    assert result["fees"] == 12869.33  # 5% of the default amount
    assert result["total_liquido"] == 244517.27
    assert result["payments_ok"] == 16342
    assert result["lag"] == 16342 - 12934
    assert result["failures"] == 0
    assert result["disqualified"] is False
    assert result["teardown_ok"] is True


def test_bonus_from_p99(summary):
    # 1 ms gives the 20% of CHALLENGE.md §4's example; 11 ms and above give none.
    assert score(with_p99(summary, 1.0))["bonus"] == 0.2
    assert score(with_p99(summary, 1.0))["total_liquido"] == round(257386.6 * 0.95 * 1.2, 2)
    assert score(with_p99(summary, 3.5))["bonus"] == 0.15
    assert score(with_p99(summary, 11.0))["bonus"] == 0
    assert score(with_p99(summary, 12.0))["bonus"] == 0


def test_p99_counts_only_expected_responses(summary):
    changed = copy.deepcopy(summary)
    changed["metrics"]["http_req_duration"]["values"]["p(99)"] = 9999.0
    assert score(changed)["p99"] == 445.845


def test_any_inconsistency_fines_35_percent(summary):
    changed = with_p99(summary, 1.0)
    changed["metrics"]["inconsistencies"] = {"type": "counter", "values": {"count": 1, "rate": 0.01}}
    result = score(changed)
    assert result["inconsistencies"] == 1
    assert result["fine"] == 0.35
    assert result["total_liquido"] == round(257386.6 * 0.95 * (1 + 0.2 - 0.35), 2)


def test_fallback_pays_its_own_fee(summary):
    changed = copy.deepcopy(summary)
    metrics = changed["metrics"]
    metrics["backend_fallback_requests"]["values"]["value"] = 100
    metrics["backend_fallback_amount"]["values"]["value"] = 1990.0
    result = score(changed)
    assert result["gross"] == round(257386.6 + 1990.0, 2)
    assert result["fees"] == round(257386.6 * 0.05 + 1990.0 * 0.15, 2)
    assert result["lag"] == 16342 - 12934 - 100


def test_negative_lag_disqualifies(summary):
    changed = copy.deepcopy(summary)
    changed["metrics"]["backend_default_requests"]["values"]["value"] = 16343
    result = score(changed)
    assert result["lag"] == -1
    assert result["disqualified"] is True


def test_failed_payments_are_counted(summary):
    changed = copy.deepcopy(summary)
    changed["metrics"]["payments_failed"] = {"type": "counter", "values": {"count": 7, "rate": 0.1}}
    assert score(changed)["failures"] == 7


# ------------------------------------------------------------ the final script

FINAL_FIXTURE = Path(__file__).parent / "data" / "rinha-final-summary-bruto.json"


@pytest.fixture
def final_summary():
    # Recorded by `bruto-bench --script final --time-scale 0.1` (a 30-s smoke
    # run of rinha-final.js, emulators at 7 % / 10 %): 9,157 payments
    # accepted, 7,650 stored by default (153,382.50), none by fallback,
    # p99 74.84 ms, no inconsistency.
    return json.loads(FINAL_FIXTURE.read_text())


def test_recorded_final_run_counts_what_the_processors_stored(final_summary):
    result = score(final_summary)
    assert (result["script"], result["counted_from"], result["time_scale"]) == ("final", "processor", 0.1)
    assert result["default"] == {"requests": 7650, "amount": 153382.5, "fee_per_transaction": 0.07}
    assert result["fallback"] == {"requests": 0, "amount": 0, "fee_per_transaction": 0.1}
    assert result["gross"] == 153382.5  # 7,650 × 20.05
    assert result["fees"] == 10736.78  # 7 % of it, 10,736.775 rounded half up
    assert result["total_liquido"] == 142645.73  # no bonus at 74.84 ms, no fine
    assert result["p99"] == 74.838
    assert result["payments_ok"] == 9157
    assert result["lag"] == 9157 - 7650
    assert result["inconsistencies"] == 0
    assert result["teardown_ok"] is True


def test_final_ignores_gauges_of_the_backend(final_summary):
    # The final's teardown never asks the backend; a stray backend gauge must not count.
    changed = copy.deepcopy(final_summary)
    changed["metrics"]["backend_default_requests"] = {"type": "gauge", "values": {"value": 9157}}
    assert score(changed)["lag"] == 9157 - 7650


def test_final_fallback_pays_its_own_fee(final_summary):
    changed = with_p99(final_summary, 2.0)
    metrics = changed["metrics"]
    metrics["processor_fallback_requests"]["values"]["value"] = 1000
    metrics["processor_fallback_amount"]["values"]["value"] = 20050.0
    result = score(changed)
    assert result["bonus"] == 0.18
    assert result["gross"] == 173432.5
    assert result["fees"] == round(153382.5 * 0.07 + 20050.0 * 0.10, 2)
    assert result["lag"] == 9157 - 7650 - 1000
    # (173,432.50 - 12,741.775) × 1.18 = 189,615.0555, in decimals as big.js computes it
    assert result["total_liquido"] == 189615.06


@pytest.mark.parametrize(("p99", "bonus"), [
    (1.0, 0.2), (1.25, 0.2), (1.254, 0.2),  # p99 is rounded to 2 decimals first
    (1.255, 0.19), (1.26, 0.19), (1.75, 0.19), (1.76, 0.18), (2.25, 0.18),
    (2.55, 0.17), (2.75, 0.17),  # (11 - 2.75) * 0.02 is the float 0.165, rounded up
    (2.76, 0.16), (10.75, 0.01), (10.76, 0.0), (11.0, 0.0), (14.15, 0.0),
])
def test_bonus_moves_in_whole_percent(p99, bonus):
    assert bonus_of(p99) == bonus
