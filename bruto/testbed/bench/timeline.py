"""Where in a k6 run the slow POST /payments are, from k6's CSV output.

k6 writes one row per sample with ``--out csv=FILE`` (``K6_CSV_TIME_FORMAT=unix_micro``:
the time a request ended, in µs since the epoch); ``bruto-bench`` records
it for every run and ``tools/latency_timeline.py`` prints the same analysis
for any such file. A request is *slow* at or above the run's p99 of the
POSTs; slow requests that start within 50 ms of the previous slow one form an
*episode*, and an episode of two or more is a *stall*: something held every
request in flight at once, where a slow path would be slow everywhere.
"""

from __future__ import annotations

import bisect
import collections
import csv
import gzip
import statistics

WINDOW_S = 5
EPISODE_GAP_S = 0.05


def load(path: str) -> tuple[float, list[tuple[float, float]]]:
    """The POST /payments of a k6 CSV (plain or .gz).

    Returns:
        (the epoch second the first POST started, [(start in seconds from it,
        duration in ms)] sorted by start); (0, []) when the file has none.
    """
    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as source:
        for row in csv.DictReader(source):
            if row["metric_name"] != "http_req_duration" or row.get("method") != "POST":
                continue
            if not row.get("url", "").endswith("/payments"):
                continue
            duration_ms = float(row["metric_value"])
            end_s = int(row["timestamp"]) / 1e6
            rows.append((end_s - duration_ms / 1000, duration_ms))
    if not rows:
        return 0.0, []
    rows.sort()
    first = rows[0][0]
    return first, [(start - first, duration) for start, duration in rows]


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def episodes(rows: list[tuple[float, float]], slow_ms: float,
             gap_s: float = EPISODE_GAP_S) -> list[list[tuple[float, float]]]:
    """The slow requests (``duration >= slow_ms``) grouped: each starts within ``gap_s`` of the one before."""
    found: list[list[tuple[float, float]]] = []
    for start, duration in rows:
        if duration < slow_ms:
            continue
        if found and start - found[-1][-1][0] <= gap_s:
            found[-1].append((start, duration))
        else:
            found.append([(start, duration)])
    return found


def windows(rows: list[tuple[float, float]], slow_ms: float, width_s: float = WINDOW_S) -> list[dict]:
    """Per ``width_s`` of the test: POSTs, their p50/p99/max, the slow ones, the stalls that began there."""
    durations = collections.defaultdict(list)
    for start, duration in rows:
        durations[int(start // width_s)].append(duration)
    stalls: collections.Counter[int] = collections.Counter()
    stalled: collections.Counter[int] = collections.Counter()
    for episode in episodes(rows, slow_ms):
        if len(episode) >= 2:
            index = int(episode[0][0] // width_s)
            stalls[index] += 1
            stalled[index] += len(episode)
    return [
        {
            "start_s": index * width_s,
            "posts": len(values),
            "p50_ms": round(statistics.median(values), 3),
            "p99_ms": round(percentile(values, 0.99), 3),
            "max_ms": round(max(values), 3),
            "slow": sum(d >= slow_ms for d in values),
            "stalls": stalls[index],
            "stalled_posts": stalled[index],
        }
        for index, values in sorted(durations.items())
    ]


def per_second(rows: list[tuple[float, float]]) -> list[dict]:
    """POSTs, p50 and p99 of each second of the test (what the picture draws)."""
    return [
        {"t": w["start_s"], "posts": w["posts"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"]}
        for w in windows(rows, float("inf"), 1)
    ]


def started_near(starts: list[float], start: float, window_s: float) -> int:
    """How many requests started in the ``window_s`` before ``start`` (itself included)."""
    return bisect.bisect_right(starts, start) - bisect.bisect_left(starts, start - window_s)


def analyse(rows: list[tuple[float, float]]) -> dict:
    """A run's tail as the result JSON carries it: overall figures, windows, the largest stalls."""
    if not rows:
        return {"posts": 0}
    durations = [d for _, d in rows]
    slow_ms = percentile(durations, 0.99)
    found = episodes(rows, slow_ms)
    stalls = [e for e in found if len(e) >= 2]
    return {
        "posts": len(rows),
        "p50_ms": round(statistics.median(durations), 3),
        "p90_ms": round(percentile(durations, 0.9), 3),
        "p99_ms": round(slow_ms, 3),
        "max_ms": round(max(durations), 3),
        "slow_posts": sum(d >= slow_ms for d in durations),
        "stalls": len(stalls),
        "stalled_posts": sum(len(e) for e in stalls),
        "largest_stalls": [
            {"at_s": round(e[0][0], 3), "posts": len(e), "span_ms": round((e[-1][0] - e[0][0]) * 1000, 1),
             "worst_ms": round(max(d for _, d in e), 3)}
            for e in sorted(stalls, key=len, reverse=True)[:5]
        ],
        "windows": windows(rows, slow_ms),
        "window_s": WINDOW_S,
        "slow_means": "at or above the p99 of the run's POST /payments (p99_ms)",
    }
