"""The scoring of docs/CHALLENGE.md §4, checked on a summary recorded by rinha.js."""

import copy
import json
from pathlib import Path

import pytest

from bruto.testbed.bench.score import EXPECTED_P99
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
