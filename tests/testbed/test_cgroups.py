"""The limits' cgroups on v2 against a fake unified tree (this machine runs v1, which tests/testbed/test_stack.py
::test_up_with_limits confines for real), and bruto-bench / bruto-soak refusing to run unconfined."""

from __future__ import annotations

from pathlib import Path

import pytest

from bruto.testbed import soak
from bruto.testbed.bench import run as bench
from bruto.testbed.stack import cgroups

MB = 2**20


def unified(root: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma misc") -> Path:
    """The files a cgroup v2 root has that the code reads or writes (the kernel makes them on mkdir)."""
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 0)


def test_v2_is_recognised_and_what_it_lacks_is_named(tmp_path, as_root):
    assert cgroups.version(unified(tmp_path / "full")) == 2
    assert cgroups.unavailable_reason(tmp_path / "full") is None
    lacking = unified(tmp_path / "lacking", "cpuset io pids")
    assert cgroups.unavailable_reason(lacking) == f"cgroup v2 at {lacking} offers no cpu or memory controller"
    (tmp_path / "none").mkdir()
    assert cgroups.version(tmp_path / "none") is None
    assert cgroups.unavailable_reason(tmp_path / "none") == (
        f"neither cgroup v1 (cpu, cpuacct, memory hierarchies under {tmp_path / 'none'}) "
        f"nor cgroup v2 ({tmp_path / 'none'}/cgroup.controllers) is mounted")


def test_v1_is_told_first_where_both_are_mounted(tmp_path):
    root = unified(tmp_path)
    for controller in cgroups.CGROUP_CONTROLLERS:
        (root / controller).mkdir()
        (root / controller / "tasks").write_text("")
    assert cgroups.version(root) == 1


def test_not_root_is_the_reason_before_any_other(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups.os, "geteuid", lambda: 1000)
    assert cgroups.unavailable_reason(unified(tmp_path)) == "cgroup limits need root"


def test_v2_groups_get_the_quota_and_the_memory_limit_under_a_parent_that_delegates(tmp_path):
    root = unified(tmp_path)
    groups = cgroups.create("bruto-1-run", {"api1": (0.45, 100), "dispatcher": (0.40, 120)}, (0.85, 220), root)
    parent = root / "bruto-1-run"
    assert groups == {"": dict.fromkeys(cgroups.CGROUP_CONTROLLERS, str(parent)),
                      "api1": dict.fromkeys(cgroups.CGROUP_CONTROLLERS, str(parent / "api1")),
                      "dispatcher": dict.fromkeys(cgroups.CGROUP_CONTROLLERS, str(parent / "dispatcher"))}
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +memory"
    assert (parent / "cpu.max").read_text() == "85000 100000"
    assert (parent / "memory.max").read_text() == str(220 * MB)
    assert (parent / "api1" / "cpu.max").read_text() == "45000 100000"
    assert (parent / "api1" / "memory.max").read_text() == str(100 * MB)
    assert (parent / "dispatcher" / "cpu.max").read_text() == "40000 100000"
    assert not (parent / "api1" / "cgroup.subtree_control").exists()  # a leaf: its processes live there


def test_v2_usage_reads_the_unified_files(tmp_path):
    group = tmp_path / "api1"
    group.mkdir()
    (group / "memory.current").write_text(str(40 * MB))
    (group / "memory.peak").write_text(str(64 * MB))
    (group / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                                    "nr_periods 40\nnr_throttled 3\nthrottled_usec 150000\n")
    (group / "cgroup.procs").write_text("101\n102\n")
    paths = dict.fromkeys(cgroups.CGROUP_CONTROLLERS, str(group))
    assert cgroups.usage(paths) == {"memory_mb": 40.0, "peak_memory_mb": 64.0, "cpu_seconds": 2.5,
                                    "throttled_periods": 3, "throttled_seconds": 0.15}
    assert cgroups.pids(paths) == [101, 102]
    (group / "memory.peak").unlink()  # before Linux 5.19: the current figure is all there is
    assert cgroups.usage(paths)["peak_memory_mb"] == 40.0


def test_bruto_bench_refuses_to_measure_an_unconfined_stack(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cgroups, "unavailable_reason", lambda: "cgroup limits need root")
    assert bench.main(["--run-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == ("bruto-bench: cannot confine the stack to the challenge's 1.5 CPU / 350 MB: "
                                       "cgroup limits need root (--no-limits runs it unconfined)\n")
    assert list(tmp_path.iterdir()) == []  # nothing was started


def test_bruto_soak_refuses_to_run_without_its_memory_limit(monkeypatch, capsys):
    monkeypatch.setattr(cgroups, "unavailable_reason", lambda: "cgroup limits need root")
    assert soak.main([]) == 1
    assert capsys.readouterr().err == ("bruto-soak: cannot set the dispatcher's 120 MB limit: cgroup limits need "
                                       "root (--no-limits measures without it)\n")
