"""Where in a k6 run the slow requests are: ``python tools/latency_timeline.py run.csv``.

``bruto-bench`` records k6's CSV of every run (``bruto-1-k6.csv.gz`` in its
run directory); any run recorded with k6's CSV output in microseconds works:

    K6_CSV_TIME_FORMAT=unix_micro k6 run --out csv=/tmp/run.csv ...

This prints, for the POST /payments of the run: the p99 threshold, how the
requests above it are spread over the test (per 5 s), how many requests each
one found in flight when it started (the burst it was part of), and how
tightly they cluster in time (a stall catches many requests at once; a slow
path is slow everywhere). The analysis is bruto.testbed.bench.timeline's,
the one ``bruto-bench`` puts in its result JSON.
"""

from __future__ import annotations

import argparse
import statistics

from bruto.testbed.bench import timeline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="k6 CSV output with K6_CSV_TIME_FORMAT=unix_micro (plain or .gz)")
    parser.add_argument("--window-ms", type=float, default=5.0, help="burst window (default %(default)s)")
    args = parser.parse_args(argv)
    _, rows = timeline.load(args.csv)
    if not rows:
        raise SystemExit(f"{args.csv}: no POST /payments")
    durations = [d for _, d in rows]
    starts = [s for s, _ in rows]
    p99 = timeline.percentile(durations, 0.99)
    print(f"{len(rows)} POST /payments; median {statistics.median(durations):.2f} ms, "
          f"p90 {timeline.percentile(durations, 0.9):.2f}, p99 {p99:.2f}, max {max(durations):.2f}")

    print(f"\nper {timeline.WINDOW_S} s of the test: requests, slow (>= p99), stalls, p50, p99, worst ms")
    for w in timeline.windows(rows, p99):
        print(f"  {w['start_s']:3d} s  {w['posts']:5d}  {w['slow']:4d}  {w['stalls']:3d}"
              f"  {w['p50_ms']:6.2f}  {w['p99_ms']:7.2f}  {w['max_ms']:7.2f}")

    window = args.window_ms / 1000
    print(f"\nrequests started in the {args.window_ms:g} ms before (itself included): median, p90")
    everyone = [timeline.started_near(starts, s, window) for s in starts]
    slow_ones = [timeline.started_near(starts, s, window) for s, d in rows if d >= p99]
    print(f"  all   {statistics.median(everyone):5.1f} {timeline.percentile(everyone, 0.9):5.1f}")
    print(f"  slow  {statistics.median(slow_ones):5.1f} {timeline.percentile(slow_ones, 0.9):5.1f}")

    episodes = timeline.episodes(rows, p99)
    sizes = sorted((len(e) for e in episodes), reverse=True)
    print(f"\nslow requests in episodes (started within {timeline.EPISODE_GAP_S * 1000:.0f} ms of the "
          f"previous slow one): {len(episodes)} episodes, largest {sizes[:10]}")
    for episode in sorted(episodes, key=len, reverse=True)[:5]:
        print(f"  at {episode[0][0]:7.3f} s: {len(episode)} requests over "
              f"{(episode[-1][0] - episode[0][0]) * 1000:.1f} ms, worst {max(d for _, d in episode):.2f} ms")


if __name__ == "__main__":
    main()
