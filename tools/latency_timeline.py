"""Where in a k6 run the slow requests are: ``python tools/latency_timeline.py run.csv``.

Record a run with k6's CSV output in microseconds, for instance:

    K6_OUT=csv=/tmp/run.csv K6_CSV_TIME_FORMAT=unix_micro bruto-bench --no-floor

then this prints, for the POST /payments of the run: the p99 threshold, how
the requests above it are spread over the test (per 5 s), how many requests
each one found in flight when it started (the burst it was part of), and how
tightly they cluster in time (a stall catches many requests at once; a slow
path is slow everywhere).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import csv
import statistics


def load(path: str) -> list[tuple[float, float]]:
    """(start in seconds from the first request, duration in ms) of each POST /payments."""
    rows = []
    with open(path, newline="") as source:
        for row in csv.DictReader(source):
            if row["metric_name"] != "http_req_duration" or row.get("method") != "POST":
                continue
            if not row.get("url", "").endswith("/payments"):
                continue
            duration_ms = float(row["metric_value"])
            end_s = int(row["timestamp"]) / 1e6
            rows.append((end_s - duration_ms / 1000, duration_ms))
    rows.sort()
    first = rows[0][0]
    return [(start - first, duration) for start, duration in rows]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="k6 CSV output with K6_CSV_TIME_FORMAT=unix_micro")
    parser.add_argument("--window-ms", type=float, default=5.0, help="burst window (default %(default)s)")
    args = parser.parse_args(argv)
    rows = load(args.csv)
    durations = [d for _, d in rows]
    starts = [s for s, _ in rows]
    p99 = percentile(durations, 0.99)
    slow = [(s, d) for s, d in rows if d >= p99]
    print(f"{len(rows)} POST /payments; median {statistics.median(durations):.2f} ms, "
          f"p90 {percentile(durations, 0.9):.2f}, p99 {p99:.2f}, max {max(durations):.2f}")

    print("\nper 5 s of the test: requests, slow (>= p99), worst ms")
    buckets = collections.defaultdict(list)
    for start, duration in rows:
        buckets[int(start // 5) * 5].append(duration)
    for second in sorted(buckets):
        values = buckets[second]
        print(f"  {second:3d} s  {len(values):5d}  {sum(d >= p99 for d in values):4d}  {max(values):7.2f}")

    window = args.window_ms / 1000
    def started_near(start: float) -> int:
        return bisect.bisect_right(starts, start) - bisect.bisect_left(starts, start - window)
    print(f"\nrequests started in the {args.window_ms:g} ms before (itself included): median, p90")
    everyone = [started_near(s) for s in starts]
    slow_ones = [started_near(s) for s, _ in slow]
    print(f"  all   {statistics.median(everyone):5.1f} {percentile(everyone, 0.9):5.1f}")
    print(f"  slow  {statistics.median(slow_ones):5.1f} {percentile(slow_ones, 0.9):5.1f}")

    episodes = []
    for start, duration in slow:
        if episodes and start - episodes[-1][-1][0] <= 0.05:
            episodes[-1].append((start, duration))
        else:
            episodes.append([(start, duration)])
    sizes = sorted((len(e) for e in episodes), reverse=True)
    print(f"\nslow requests in episodes (started within 50 ms of the previous slow one): "
          f"{len(episodes)} episodes, largest {sizes[:10]}")
    for episode in sorted(episodes, key=len, reverse=True)[:5]:
        print(f"  at {episode[0][0]:7.3f} s: {len(episode)} requests over "
              f"{(episode[-1][0] - episode[0][0]) * 1000:.1f} ms, worst {max(d for _, d in episode):.2f} ms")


if __name__ == "__main__":
    main()
