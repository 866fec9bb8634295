"""What `bruto-bench --compose` computes without Docker: cgroup paths, compose's listing, the counters' result.

The compose run itself needs a Docker engine (CI machines have none); its
output on this machine is in docs/BENCHMARKS.md.
"""

import json
import os
from pathlib import Path

import pytest

from bruto.testbed.bench import run as bench
from bruto.testbed.bench.compose import ContainerResources
from bruto.testbed.bench.compose import parse_proc_cgroup
from bruto.testbed.bench.compose import parse_ps
from bruto.testbed.bench.compose import poll_like_the_judge
from bruto.testbed.bench.compose import summary_answers
from bruto.testbed.bench.score import summary_line
from bruto.testbed.stack.runner import StackError

# /proc/<pid>/cgroup of a container under Docker 20.10, cgroupfs driver, cgroup v1.
CONTAINER_CGROUP = """\
12:pids:/docker/4f1c
9:memory:/docker/4f1c
4:cpu,cpuacct:/docker/4f1c
1:name=systemd:/docker/4f1c
0::/system.slice/containerd.service
"""


def test_cgroup_paths_of_a_container():
    assert parse_proc_cgroup(CONTAINER_CGROUP, Path("/sys/fs/cgroup")) == {
        "cpu": "/sys/fs/cgroup/cpu/docker/4f1c",
        "cpuacct": "/sys/fs/cgroup/cpuacct/docker/4f1c",
        "memory": "/sys/fs/cgroup/memory/docker/4f1c",
    }


def test_cgroup_v2_only_is_refused():
    with pytest.raises(StackError, match="cpu, cpuacct, memory"):
        parse_proc_cgroup("0::/system.slice/docker-4f1c.scope\n")


@pytest.mark.parametrize("text", [
    # compose 2.21 and later: one object per line
    '{"ID":"aa11","Service":"api1","State":"running"}\n{"ID":"bb22","Service":"balancer","State":"running"}\n',
    # before: one array
    '[{"ID":"aa11","Service":"api1"},{"ID":"bb22","Service":"balancer"}]',
])
def test_compose_listing(text):
    assert parse_ps(text) == {"api1": "aa11", "balancer": "bb22"}
    assert parse_ps("\n") == {}


def fake_container(root: Path, name: str, cpu_ns: int, throttled: int, throttled_ns: int, peak: int) -> dict:
    """A container's cgroup files as the kernel lays them out; returns its paths."""
    paths = {c: root / c / name for c in ("cpu", "cpuacct", "memory")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    write_counters(paths, cpu_ns, throttled, throttled_ns, peak)
    return {c: str(p) for c, p in paths.items()}


def write_counters(paths, cpu_ns, throttled, throttled_ns, peak):
    paths = {c: Path(p) for c, p in paths.items()}
    (paths["cpuacct"] / "cpuacct.usage").write_text(f"{cpu_ns}\n")
    (paths["cpu"] / "cpu.stat").write_text(f"nr_periods 900\nnr_throttled {throttled}\nthrottled_time {throttled_ns}\n")
    (paths["memory"] / "memory.usage_in_bytes").write_text(f"{peak // 2}\n")
    (paths["memory"] / "memory.max_usage_in_bytes").write_text(f"{peak}\n")


def test_counters_during_the_test(tmp_path):
    """CPU and throttling count from start(); peak memory is the container's; processors are kept apart."""
    mb = 2**20
    api1 = fake_container(tmp_path, "api1", 5 * 10**9, 3, 10**8, 50 * mb)
    balancer = fake_container(tmp_path, "balancer", 10**9, 0, 0, 10 * mb)
    emulator = fake_container(tmp_path, "emulator", 2 * 10**9, 0, 0, 40 * mb)
    meter = ContainerResources({"api1": api1, "balancer": balancer}, {"payment-processor-default": emulator},
                               proxy_port=1)  # no docker-proxy on port 1
    meter.start()
    write_counters(api1, 7_500_000_000, 5, 3 * 10**8, 60 * mb)
    write_counters(balancer, 1_250_000_000, 4, 5 * 10**7, 12 * mb)
    write_counters(emulator, 5 * 10**9, 0, 0, 41 * mb)
    result = meter.stop()
    assert result["per_service"] == {
        "api1": {"cpu_seconds": 2.5, "throttled_periods": 2, "throttled_seconds": 0.2, "peak_memory_mb": 60.0},
        "balancer": {"cpu_seconds": 0.25, "throttled_periods": 4, "throttled_seconds": 0.05, "peak_memory_mb": 12.0},
    }
    assert (result["cpu_seconds"], result["throttled_periods"], result["throttled_seconds"]) == (2.75, 6, 0.25)
    assert result["peak_memory_mb"] == 72.0
    assert result["outside_limits"] == {
        "payment-processor-default": {"cpu_seconds": 3.0},
        "docker-proxy": {"cpu_seconds": 0, "processes": 0},
    }
    json.dumps(result)  # it goes into result.json as it is


def test_summary_line_shows_each_container():
    result = {
        "score": {"total_liquido": 350000.0, "p99": 5.2, "inconsistencies": 0, "lag": 0,
                  "default": {"requests": 16700}, "fallback": {"requests": 0}, "failures": 0},
        "floor_p99": 1.5, "p99_over_floor": 3.7,
        "resources": {"peak_memory_mb": 170, "cpu_seconds": 13.5, "throttled_seconds": 0.6,
                      "per_service": {"balancer": {"cpu_seconds": 0.57, "throttled_seconds": 0.53},
                                      "dispatcher": {"cpu_seconds": 7.67, "throttled_seconds": 0.05}},
                      "outside_limits": {"docker-proxy": {"cpu_seconds": 2.43, "processes": 2}}},
    }
    line = summary_line("run 1/3", result)
    assert "liquido 350,000.00  p99 5.20 ms (floor 1.50 ms, +3.70 ms)" in line
    assert "[balancer 0.6 s/0.53 s thr, dispatcher 7.7 s/0.05 s thr]" in line
    assert "docker-proxy 2.4 s" in line


def test_compose_takes_no_target(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--compose", "--target", "http://127.0.0.1:9999"])
    assert "--compose starts its own stack" in capsys.readouterr().err


# ------------------------------------------------------------- --cold, the judge's way

def test_the_judge_polls_every_5_s_until_the_summary_answers():
    answers = iter([False, False, True])
    slept = []
    assert poll_like_the_judge(lambda: next(answers), slept.append) == 3
    # After each try that did not answer; the sleep after the answering one is the caller's.
    assert slept == [5.0, 5.0]


def test_an_answer_at_the_first_try_starts_at_once():
    slept = []
    assert poll_like_the_judge(lambda: True, slept.append) == 1
    assert slept == []


def test_the_judge_gives_up_after_15_tries():
    slept = []
    with pytest.raises(StackError, match="15 tries"):
        poll_like_the_judge(lambda: False, slept.append)
    assert len(slept) == 15


def test_a_try_is_an_http_answer_below_400(tmp_path):
    """summary_answers against a real socket: 200 yes, 500 no, nothing listening no."""
    import http.server
    import threading

    statuses = iter([200, 500])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(next(statuses))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert summary_answers(url) is True
        assert summary_answers(url) is False
    finally:
        server.shutdown()
        server.server_close()
    assert summary_answers(url, timeout_s=0.5) is False


def test_cold_needs_compose(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--cold"])
    assert "--cold is a way to start the compose stack" in capsys.readouterr().err


def test_each_container_is_sampled(tmp_path):
    api1 = fake_container(tmp_path, "api1", 0, 0, 0, 2**20)
    emulator = fake_container(tmp_path, "emulator", 0, 0, 0, 2**20)
    (Path(api1["memory"]) / "cgroup.procs").write_text(f"{os.getpid()}\n")
    meter = ContainerResources({"api1": api1}, {"payment-processor-default": emulator}, proxy_port=1)
    groups = {group.name: group for group in meter.groups()}
    assert list(groups) == ["api1", "payment-processor-default", "docker-proxy"]
    assert groups["api1"].pids({}) == [os.getpid()] and groups["api1"].cgroup == api1
    assert groups["payment-processor-default"].pids({}) == []
    assert groups["docker-proxy"].pids({}) == []  # no docker-proxy on port 1
