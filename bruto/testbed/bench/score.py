"""The challenge's score of one k6 run, from the summary ``rinha.js`` writes."""

from __future__ import annotations

EXPECTED_P99 = "http_req_duration{expected_response:true}"


def _metric(metrics: dict, name: str, field: str) -> float:
    """A value from k6's summary; counters and gauges never touched are absent: 0."""
    return metrics.get(name, {}).get("values", {}).get(field, 0)


def score(summary: dict) -> dict:
    """Score a run as docs/CHALLENGE.md §4 does, from the JSON rinha.js writes.

    Args:
        summary: ``{"metrics": ..., "state": ...}`` as written by the script's
            handleSummary (k6's summary data).

    Returns:
        The score: total_liquido (the final figure), gross, fees, p99 (ms over
        every request with an expected response), bonus, fine,
        inconsistencies, lag, the backend's count and amount per processor,
        the payments that succeeded and failed, and whether the run
        disqualifies (negative lag).
    """
    metrics = summary["metrics"]
    p99 = metrics[EXPECTED_P99]["values"]["p(99)"]
    bonus = max((11 - p99) * 0.02, 0)
    inconsistencies = _metric(metrics, "inconsistencies", "count")
    fine = 0.35 if inconsistencies > 0 else 0.0
    processors = {}
    for name in ("default", "fallback"):
        processors[name] = {
            "requests": int(_metric(metrics, f"backend_{name}_requests", "value")),
            "amount": _metric(metrics, f"backend_{name}_amount", "value"),
            "fee_per_transaction": _metric(metrics, f"fee_{name}", "value"),
        }
    gross = sum(p["amount"] for p in processors.values())
    fees = sum(p["amount"] * p["fee_per_transaction"] for p in processors.values())
    liquid = (gross - fees) * (1 + bonus - fine)
    payments_ok = int(_metric(metrics, "payments_ok", "count"))
    lag = payments_ok - sum(p["requests"] for p in processors.values())
    return {
        "total_liquido": round(liquid, 2),
        "gross": round(gross, 2),
        "fees": round(fees, 2),
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
