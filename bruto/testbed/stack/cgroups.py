"""cgroup groups that confine the stack's services as docker's limits would, on cgroup v1 or v2.

One parent group with the totals, one child per service. CPU is a quota per
100 ms period (as docker sets ``cpus``); memory a hard limit.

- **v1** (a hierarchy per controller, ``/sys/fs/cgroup/cpu`` ...): the groups
  nest under the cgroups of the process that creates them, so whoever
  accounts for that process still accounts for the stack;
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` and ``memory.limit_in_bytes``.
- **v2** (one unified hierarchy, stock Debian 12): the parent is created at
  the hierarchy's root, because v2 lets a cgroup hand controllers to its
  children only while it holds no process itself, and the creating process's
  own cgroup holds it (the root is the one exception); the root's
  ``cgroup.subtree_control`` must offer ``cpu`` and ``memory`` (systemd's
  does), and the parent enables both for its children. ``cpu.max`` ("quota
  period") and ``memory.max``.

Either way a service's groups are ``{controller: directory}`` for ``cpu``,
``cpuacct`` and ``memory`` (on v2 the same directory three times), which
:func:`usage` and :func:`pids` read whichever the version.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory")
# What v2 needs enabled for the children (cpuacct's counters are cpu's there).
V2_CONTROLLERS = ("cpu", "memory")
CFS_PERIOD_US = 100_000


def version(root: Path = CGROUP_ROOT) -> int | None:
    """1 or 2: which cgroup hierarchy confines here (v1 when both are mounted); None if neither is usable."""
    if all((root / controller / "tasks").exists() for controller in CGROUP_CONTROLLERS):
        return 1
    if (root / "cgroup.controllers").exists():
        return 2
    return None


def unavailable_reason(root: Path = CGROUP_ROOT) -> str | None:
    """Why limits cannot be set here (one line), or None if they can."""
    if os.geteuid() != 0:
        return "cgroup limits need root"
    found = version(root)
    if found == 1:
        for controller in CGROUP_CONTROLLERS:
            if not os.access(root / controller, os.W_OK):
                return f"{root / controller} is not writable"
        return None
    if found == 2:
        offered = (root / "cgroup.controllers").read_text().split()
        missing = [c for c in V2_CONTROLLERS if c not in offered]
        if missing:
            return f"cgroup v2 at {root} offers no {' or '.join(missing)} controller"
        if not os.access(root, os.W_OK):
            return f"{root} (cgroup v2) is not writable"
        return None
    return (f"neither cgroup v1 ({', '.join(CGROUP_CONTROLLERS)} hierarchies under {root}) "
            f"nor cgroup v2 ({root}/cgroup.controllers) is mounted")


def own_cgroup(controller: str, root: Path = CGROUP_ROOT) -> Path:
    """The v1 cgroup directory of this process for one controller."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return root / controller / path.lstrip("/")
    return root / controller


def create(tag: str, limits: dict[str, tuple[float, int]],
           total: tuple[float, int], root: Path = CGROUP_ROOT) -> dict[str, dict[str, str]]:
    """Create the parent group (the totals) and one group per service.

    Args:
        tag: Unique name of the parent group.
        limits: ``{service: (CPUs, MB)}``.
        total: ``(CPUs, MB)`` of the parent group.
        root: Where the cgroup hierarchies are mounted.

    Returns:
        ``{"": {controller: path}, service: {controller: path}, ...}``; the
        empty name is the parent, whose counters cover the whole stack.
    """
    if version(root) == 2:
        return _create_v2(root / tag, limits, total, root)
    groups: dict[str, dict[str, str]] = {}
    parents = {c: own_cgroup(c, root) / tag for c in CGROUP_CONTROLLERS}
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


def _create_v2(parent: Path, limits: dict[str, tuple[float, int]], total: tuple[float, int],
               root: Path) -> dict[str, dict[str, str]]:
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    # The root hands cpu and memory to its children (systemd's does already; writing it again is a no-op).
    (root / "cgroup.subtree_control").write_text(enable)
    groups: dict[str, dict[str, str]] = {}
    for name, (cpus, mb) in [("", total)] + list(limits.items()):
        path = parent / name if name else parent
        path.mkdir(exist_ok=True)
        if not name:
            # The parent holds no process: it may hand both controllers to the services' groups.
            (path / "cgroup.subtree_control").write_text(enable)
        (path / "cpu.max").write_text(f"{int(cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}")
        (path / "memory.max").write_text(str(mb * 1024 * 1024))
        groups[name] = dict.fromkeys(CGROUP_CONTROLLERS, str(path))
    return groups


def remove(groups: dict[str, dict[str, str]]) -> list[str]:
    """Remove the groups, children first; returns the ones that could not be removed."""
    left = []
    for name in sorted(groups, key=lambda n: n == ""):
        for path in dict.fromkeys(groups[name].values()):  # v2: one directory for every controller
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
    """Memory (now and peak, MB), CPU seconds and throttling of one group, v1 or v2."""
    mem = Path(paths["memory"])
    cpu_stat = dict(
        line.split() for line in Path(paths["cpu"], "cpu.stat").read_text().splitlines()
    )
    if (mem / "memory.current").exists():  # v2
        peak = mem / "memory.peak"  # Linux 5.19 and later
        current = int((mem / "memory.current").read_text())
        return {
            "memory_mb": current / 2**20,
            "peak_memory_mb": (int(peak.read_text()) if peak.exists() else current) / 2**20,
            "cpu_seconds": int(cpu_stat["usage_usec"]) / 1e6,
            "throttled_periods": int(cpu_stat.get("nr_throttled", 0)),
            "throttled_seconds": int(cpu_stat.get("throttled_usec", 0)) / 1e6,
        }
    return {
        "memory_mb": int((mem / "memory.usage_in_bytes").read_text()) / 2**20,
        "peak_memory_mb": int((mem / "memory.max_usage_in_bytes").read_text()) / 2**20,
        "cpu_seconds": int(Path(paths["cpuacct"], "cpuacct.usage").read_text()) / 1e9,
        "throttled_periods": int(cpu_stat.get("nr_throttled", 0)),
        "throttled_seconds": int(cpu_stat.get("throttled_time", 0)) / 1e9,
    }
