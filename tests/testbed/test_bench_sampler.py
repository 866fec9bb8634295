"""What bruto-bench reads each second while k6 runs (bruto.testbed.bench.sampler), and its picture."""

import os

import pytest

from bruto.config import Settings
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake
from bruto.shm.layout import open_outbox
from bruto.testbed.bench import plot
from bruto.testbed.bench import run as bench
from bruto.testbed.bench import sampler
from bruto.testbed.bench.score import summary_line


def test_schedstat_second_field_is_the_wait():
    # /proc/PID/schedstat: ns on a CPU, ns waiting on a run queue, timeslices.
    assert sampler.parse_schedstat("2073151474 391882071 18403\n") == 391882071


def test_run_queue_wait_over_the_run():
    wait = sampler.RunQueueWait()
    wait.update({1: 100, 2: 50})             # at the start: counted from here
    wait.update({1: 300, 2: 80, 3: 40})      # thread 3 born during the run: from zero
    wait.update({1: 500})                    # 2 and 3 ended: their last readings stand
    assert wait.seconds() == pytest.approx((400 + 30 + 40) / 1e9)


def test_this_process_is_measured():
    me = sampler.in_process_group("me", os.getpgrp())
    waits = sampler.task_waits(os.getpid())
    assert os.getpid() in waits and all(ns >= 0 for ns in waits.values())
    probe = sampler.Sampler([me])
    row = probe.sample()
    assert row["cpu_s"]["me"] > 0
    assert row["busy_s"] > 0
    assert sampler.task_waits(2**22 + 1) == {}  # no such process


def samples():
    return [
        {"t": 100.0, "busy_s": 50.0, "cpu_s": {"api1": 10.0}, "throttled_s": {"api1": 1.0},
         "backlog": {"intake_backlog": 0}},
        {"t": 101.0, "busy_s": 51.5, "cpu_s": {"api1": 10.5, "k6": 0.2}, "throttled_s": {"api1": 1.0},
         "backlog": {"intake_backlog": 40}},
        {"t": 103.0, "busy_s": 53.5, "cpu_s": {"api1": 10.4, "k6": 1.0}, "throttled_s": {"api1": 1.25},
         "backlog": None},
    ]


def test_summary_over_the_run():
    summary = sampler.summarize(samples(), {"api1": 0.5, "k6": 2.0})
    assert summary["seconds"] == 3.0
    assert summary["machine_busy_seconds"] == 3.5
    assert summary["groups"]["api1"] == {"cpu_seconds": 0.4, "runqueue_wait_s": 0.5, "throttled_seconds": 0.25}
    # k6 appeared at the second sample and has no cgroup: CPU from there, no throttling.
    assert summary["groups"]["k6"] == {"cpu_seconds": 0.8, "runqueue_wait_s": 2.0, "throttled_seconds": None}


def test_per_second_rates():
    rates = sampler.series(samples(), t0=100.5)
    assert rates["t"] == [0.5, 2.5]
    assert rates["busy_cores"] == [1.5, 1.0]
    # api1's CPU went down (a process of it ended): not drawn. k6 began late.
    assert rates["cpu_cores"] == {"api1": [0.5, None], "k6": [None, 0.4]}
    assert rates["backlog"] == {"intake_backlog": [40, None]}


def test_no_shared_directory_no_backlog(tmp_path):
    assert sampler.ShmBacklog(str(tmp_path / "none"))() is None


@pytest.mark.parametrize(("floor_p99", "noise"), [(None, False), (1.1, False), (2.5, False), (2.51, True)])
def test_a_slow_floor_marks_the_run_as_noise(floor_p99, noise):
    assert bench.is_noise(floor_p99) is noise


def test_noise_leads_the_summary_line():
    result = {"score": {"total_liquido": 1.0, "p99": 4.0, "inconsistencies": 0, "lag": 0, "time_scale": 1,
                        "default": {"requests": 1}, "fallback": {"requests": 0}, "failures": 0},
              "floor_p99": 2.8, "p99_over_floor": 1.2, "noise": True,
              "tail": {"posts": 10, "stalls": 2, "stalled_posts": 5}}
    line = summary_line("final run 1/3", result)
    assert line.startswith("NOISE (floor p99 above 2.5 ms")
    assert "stalls 2 (5 POSTs)" in line


def test_the_picture_is_a_png(tmp_path):
    latency = [{"t": t, "posts": 100, "p50_ms": 1.0, "p99_ms": 2.0 + t} for t in range(5)]
    seconds = sampler.series(samples(), t0=100.0)
    path = plot.draw(tmp_path / "run-1.png", "final run 1/1", latency, latency[:3], seconds, 4.0, 1.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backlog_read_from_a_shared_directory(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=8, ledger_capacity=4)
    create_all(settings)
    open_intake(settings, 0).counters["written"] = 5   # five payments accepted
    open_dispatch(settings).records[0]["drained"] = 3   # three drained into the outbox
    open_outbox(settings).counters["in_use"] = 3
    backlog = sampler.ShmBacklog(str(tmp_path))
    assert backlog() == {"accepted": 5, "intake_backlog": 2, "outbox_in_use": 3,
                         "confirmed_default": 0, "confirmed_fallback": 0}
    backlog.close()
    assert backlog.regions is None
