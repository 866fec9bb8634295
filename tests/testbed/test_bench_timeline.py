"""Where a run's slow POSTs are (bruto.testbed.bench.timeline), on k6's CSV of a recorded run."""

import gzip
from pathlib import Path

import pytest

from bruto.testbed.bench import timeline

# 1.2 s of a `bruto-bench --time-scale 0.2` run's k6 CSV (timestamps in µs):
# every http_req_duration row (608 POST /payments, and the probe's and the
# stages' GETs and PUTs) and 40 rows of other metrics. It holds a stall.
FIXTURE = Path(__file__).parent / "data" / "k6-posts-stall.csv.gz"


@pytest.fixture(scope="module")
def posts():
    return timeline.load(str(FIXTURE))


def test_only_post_payments_are_read(posts):
    t0, rows = posts
    assert t0 == pytest.approx(1796242822.320355)
    assert len(rows) == 608
    starts = [start for start, _ in rows]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(duration > 0 for _, duration in rows)


def test_plain_and_gzipped_csv_read_alike(tmp_path, posts):
    plain = tmp_path / "run.csv"
    plain.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    assert timeline.load(str(plain)) == posts


def test_a_csv_without_posts(tmp_path):
    empty = tmp_path / "floor.csv"
    empty.write_text("metric_name,timestamp,metric_value,method,url\nhttp_reqs,1,1,GET,http://x/payments-summary\n")
    assert timeline.load(str(empty)) == (0.0, [])
    assert timeline.analyse([]) == {"posts": 0}


def test_the_recorded_stall(posts):
    result = timeline.analyse(posts[1])
    assert (result["posts"], result["p99_ms"], result["max_ms"]) == (608, 21.787, 29.515)
    assert result["slow_posts"] == 7
    # All seven slow POSTs started within 26.4 ms: one stall, not a slow path.
    assert (result["stalls"], result["stalled_posts"]) == (1, 7)
    assert result["largest_stalls"] == [{"at_s": 0.609, "posts": 7, "span_ms": 26.4, "worst_ms": 29.515}]


def test_windows_partition_the_run(posts):
    rows = posts[1]
    slow_ms = timeline.percentile([d for _, d in rows], 0.99)
    halves = timeline.windows(rows, slow_ms, 0.5)
    assert [w["start_s"] for w in halves] == [0, 0.5, 1.0]
    assert sum(w["posts"] for w in halves) == 608
    assert sum(w["slow"] for w in halves) == 7
    # The stall began at 0.609 s: its window holds it, whole.
    assert [(w["stalls"], w["stalled_posts"]) for w in halves] == [(0, 0), (1, 7), (0, 0)]
    for w in halves:
        assert w["p50_ms"] <= w["p99_ms"] <= w["max_ms"]
    assert [s["posts"] for s in timeline.per_second(rows)] == [w["posts"] for w in timeline.windows(rows, slow_ms, 1)]


def test_episodes_split_on_a_50_ms_gap():
    rows = [(0.0, 1.0), (0.01, 9.0), (0.05, 9.5), (0.2, 9.0), (0.3, 1.0), (0.34, 12.0), (0.39, 9.0)]
    found = timeline.episodes(rows, 9.0)
    assert [[start for start, _ in e] for e in found] == [[0.01, 0.05], [0.2], [0.34, 0.39]]
    windows = timeline.windows(rows, 9.0, 0.25)
    assert [(w["slow"], w["stalls"], w["stalled_posts"]) for w in windows] == [(3, 1, 2), (2, 1, 2)]


def test_requests_started_near():
    starts = [0.0, 0.001, 0.002, 0.010, 0.0105]
    assert timeline.started_near(starts, 0.002, 0.005) == 3
    assert timeline.started_near(starts, 0.0105, 0.005) == 2
