"""The challenge's score of one k6 run, from the summary ``rinha.js`` or ``rinha-final.js`` writes."""

from __future__ import annotations

import decimal

EXPECTED_P99 = "http_req_duration{expected_response:true}"
# Whose summary the teardown counted, per script (the gauges' prefix): the
# preview trusts the backend's, the final the processors' (docs/CHALLENGE.md §3, §3b).
COUNTED_FROM = {"preview": "backend", "final": "processor"}


def _metric(metrics: dict, name: str, field: str) -> float:
    """A value from k6's summary; counters and gauges never touched are absent: 0."""
    return metrics.get(name, {}).get("values", {}).get(field, 0)


def _exact(value: float) -> decimal.Decimal:
    """A float as the decimal it prints as (what big.js makes of a JavaScript number)."""
    return decimal.Decimal(repr(value))


def _cents(value: decimal.Decimal) -> float:
    """Rounded to 2 decimals as big.js's ``round(2)`` does: half away from zero."""
    return float(value.quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP))


def bonus_of(p99_ms: float) -> float:
    """The p99 bonus as both official scripts compute it (docs/CHALLENGE.md §4).

    p99 rounded to 2 decimals first, then ``(11 - p99) * 0.02`` in floating
    point, rounded to 2 decimals: whole percent, one step per 0.5 ms (at
    exactly 2.75 ms the float is 0.165 and rounds up to 17 %).
    """
    return max(_cents(_exact((11 - _cents(_exact(p99_ms))) * 0.02)), 0.0)


def score(summary: dict) -> dict:
    """Score a run as docs/CHALLENGE.md §4 does, from the JSON the script writes.

    Args:
        summary: ``{"script": "preview" | "final", "metrics": ..., "state": ...}``
            as written by the script's handleSummary (k6's summary data); a
            summary without ``script`` is the preview's.

    Returns:
        The score: total_liquido (the final figure), gross, fees, p99 (ms over
        every request with an expected response), bonus, fine,
        inconsistencies, lag, the count and amount per processor the teardown
        counted (``counted_from``: the backend's summary in the preview, the
        processors' admin summaries in the final), the payments that
        succeeded and failed, and whether the run disqualifies (negative lag).
    """
    metrics = summary["metrics"]
    script = summary.get("script", "preview")
    counted_from = COUNTED_FROM[script]
    p99 = metrics[EXPECTED_P99]["values"]["p(99)"]
    bonus = bonus_of(p99)
    inconsistencies = _metric(metrics, "inconsistencies", "count")
    fine = 0.35 if inconsistencies > 0 else 0.0
    processors = {}
    for name in ("default", "fallback"):
        processors[name] = {
            "requests": int(_metric(metrics, f"{counted_from}_{name}_requests", "value")),
            "amount": _metric(metrics, f"{counted_from}_{name}_amount", "value"),
            "fee_per_transaction": _metric(metrics, f"fee_{name}", "value"),
        }
    # In decimals, as the scripts do with big.js: the amounts and fees are money.
    gross = sum((_exact(p["amount"]) for p in processors.values()), decimal.Decimal(0))
    fees = sum((_exact(p["amount"]) * _exact(p["fee_per_transaction"]) for p in processors.values()), decimal.Decimal(0))
    liquid = (gross - fees) * (1 + _exact(bonus) - _exact(fine))
    payments_ok = int(_metric(metrics, "payments_ok", "count"))
    lag = payments_ok - sum(p["requests"] for p in processors.values())
    return {
        "script": script,
        "time_scale": summary.get("time_scale", 1),
        "counted_from": counted_from,
        "total_liquido": _cents(liquid),
        "gross": _cents(gross),
        "fees": _cents(fees),
        "p99": round(p99, 3),
        "bonus": round(bonus, 4),
        "fine": fine,
        "inconsistencies": int(inconsistencies),
        "lag": lag,
        "disqualified": lag < 0,
        "default": {k: round(v, 2) for k, v in processors["default"].items()},
        "fallback": {k: round(v, 2) for k, v in processors["fallback"].items()},
        "payments_ok": payments_ok,
        "failures": int(_metric(metrics, "payments_failed", "count")),
        "http_requests": int(_metric(metrics, "http_reqs", "count")),
        "consistency_probes_failed": int(_metric(metrics, "consistency_probes_failed", "count")),
        "teardown_ok": bool(_metric(metrics, "teardown_ok", "value")),
        "p99_payments": round(_metric(metrics, "http_req_duration{scenario:payments}", "p(99)"), 3),
        "p99_consistency": round(_metric(metrics, "http_req_duration{scenario:consistency}", "p(99)"), 3),
        "median_payments": round(_metric(metrics, "http_req_duration{scenario:payments}", "med"), 3),
    }


def summary_line(label: str, result: dict) -> str:
    """One line a person reads first."""
    s = result["score"]
    line = (
        f"{label}: liquido {s['total_liquido']:,.2f}  p99 {s['p99']:.2f} ms"
    )
    if result.get("floor_p99") is not None:
        line += f" (floor {result['floor_p99']:.2f} ms, {result['p99_over_floor']:+.2f} ms)"
    if result.get("noise"):
        line = "NOISE (floor p99 above 2.5 ms: discard, run again)  " + line
    if s.get("time_scale", 1) != 1:
        line += f"  [time scale {s['time_scale']:g}: not the challenge's timeline]"
    tail = result.get("tail") or {}
    if tail.get("posts"):
        line += f"  stalls {tail['stalls']} ({tail['stalled_posts']} POSTs)"
    line += (
        f"  inconsistencies {s['inconsistencies']}  lag {s['lag']}"
        f"  default {s['default']['requests']}  fallback {s['fallback']['requests']}"
        f"  failures {s['failures']}"
    )
    resources = result.get("resources") or {}
    if resources.get("peak_memory_mb") is not None:
        line += f"  peak {resources['peak_memory_mb']:.0f} MB  cpu {resources['cpu_seconds']:.1f} s"
        if resources.get("throttled_seconds") is not None:
            line += f" (throttled {resources['throttled_seconds']:.2f} s)"
        services = resources.get("per_service") or {}
        if services:
            line += "  [" + ", ".join(
                f"{name} {v['cpu_seconds']:.1f} s/{v['throttled_seconds']:.2f} s thr" for name, v in services.items()
            ) + "]"
        outside = resources.get("outside_limits") or {}
        if "docker-proxy" in outside:
            line += f"  docker-proxy {outside['docker-proxy']['cpu_seconds']:.1f} s"
    if result.get("cpu"):
        line += (
            f"  machine busy {result['cpu']['machine_busy_seconds']:.0f} cpu-s"
            f" (k6 {result['cpu']['k6_seconds']:.0f})"
        )
    return line
