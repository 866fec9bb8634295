"""cgroup v1 groups that confine the stack's services as docker's limits would.

One parent group with the totals, one child per service, nested under the
cgroups of the process that creates them, so whoever accounts for that
process still accounts for the stack. CPU is a CFS quota per 100 ms period
(as docker sets ``cpus``); memory a hard limit.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory")
CFS_PERIOD_US = 100_000


def unavailable_reason() -> str | None:
    """Why ``--limits`` cannot work here, or None if it can."""
    if os.geteuid() != 0:
        return "cgroup limits need root"
    for controller in CGROUP_CONTROLLERS:
        base = CGROUP_ROOT / controller
        if not (base / "tasks").exists():
            return f"no cgroup v1 '{controller}' hierarchy at {base}"
        if not os.access(base, os.W_OK):
            return f"{base} is not writable"
    return None


def own_cgroup(controller: str) -> Path:
    """The v1 cgroup directory of this process for one controller."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controller / path.lstrip("/")
    return CGROUP_ROOT / controller


def create(tag: str, limits: dict[str, tuple[float, int]],
                   total: tuple[float, int]) -> dict[str, dict[str, str]]:
    """Create the parent group (the totals) and one group per service.

    Args:
        tag: Unique name of the parent group.
        limits: ``{service: (CPUs, MB)}``.
        total: ``(CPUs, MB)`` of the parent group.

    Returns:
        ``{"": {controller: path}, service: {controller: path}, ...}``; the
        empty name is the parent, whose counters cover the whole stack.
    """
    groups: dict[str, dict[str, str]] = {}
    parents = {c: own_cgroup(c) / tag for c in CGROUP_CONTROLLERS}
    for name, (cpus, mb) in [("", total)] + list(limits.items()):
        paths = {}
        for controller, parent in parents.items():
            path = parent / name if name else parent
            path.mkdir(exist_ok=True)
            paths[controller] = str(path)
        Path(paths["cpu"], "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        Path(paths["cpu"], "cpu.cfs_quota_us").write_text(str(int(cpus * CFS_PERIOD_US)))
        Path(paths["memory"], "memory.limit_in_bytes").write_text(str(mb * 1024 * 1024))
        groups[name] = paths
    return groups


def remove(groups: dict[str, dict[str, str]]) -> list[str]:
    """Remove the groups, children first; returns the ones that could not be removed."""
    left = []
    for name in sorted(groups, key=lambda n: n == ""):
        for path in groups[name].values():
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # Busy until the kernel has reaped the last task.
                    time.sleep(0.1)
            else:
                left.append(path)
    return left


def pids(paths: dict[str, str]) -> list[int]:
    """PIDs in a service's memory group (every confined process is in all three)."""
    try:
        text = Path(paths["memory"], "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [int(pid) for pid in text.split()]


def usage(paths: dict[str, str]) -> dict[str, float]:
    """Memory (now and peak, MB), CPU seconds and throttling of one group."""
    mem = Path(paths["memory"])
    cpu_stat = dict(
        line.split() for line in Path(paths["cpu"], "cpu.stat").read_text().splitlines()
    )
    return {
        "memory_mb": int((mem / "memory.usage_in_bytes").read_text()) / 2**20,
        "peak_memory_mb": int((mem / "memory.max_usage_in_bytes").read_text()) / 2**20,
        "cpu_seconds": int(Path(paths["cpuacct"], "cpuacct.usage").read_text()) / 1e9,
        "throttled_periods": int(cpu_stat.get("nr_throttled", 0)),
        "throttled_seconds": int(cpu_stat.get("throttled_time", 0)) / 1e9,
    }
