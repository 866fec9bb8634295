"""What the machine and each part of a run do while k6 runs, read once a second.

Per group of processes (a service of the process stack, a container, k6,
docker-proxy): CPU seconds (its cgroup's ``cpuacct.usage`` when it has one,
else its processes' ``/proc/PID/stat``), CFS throttling (its cgroup's
``cpu.stat``), and the time its threads waited on a run queue for a CPU
(``/proc/PID/task/TID/schedstat``, second field, ns): the scheduling delay a
request meets before any of its code runs. Also the machine's busy CPU
(``/proc/stat``) and, when bruto's shared directory can be read, its backlog.

A thread that ends between two samples keeps the wait seen at the last one;
a thread born during the run counts from zero.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bruto.shm.region import RegionError
from bruto.shm.snapshot import SharedRegions
from bruto.testbed.stack import cgroups
from bruto.testbed.stack.runner import cpu_seconds
from bruto.testbed.stack.runner import live_processes

INTERVAL_S = 1.0


@dataclasses.dataclass
class Group:
    """Processes measured together.

    Args:
        name: What the result calls it (``api1``, ``k6``, ``payment-processor-default``).
        pids: Its live PIDs, given ``{process group: [PIDs]}`` of the machine.
        cgroup: Its v1 cgroup directories (``cpu``, ``cpuacct``, ``memory``), if it has its own.
    """

    name: str
    pids: Callable[[dict[int, list[int]]], list[int]]
    cgroup: dict[str, str] | None = None


def in_process_group(name: str, pgid: int, cgroup: dict[str, str] | None = None) -> Group:
    """A service of a process stack: every process of its process group."""
    return Group(name, lambda by_pgid: by_pgid.get(pgid, []), cgroup)


def in_cgroup(name: str, paths: dict[str, str]) -> Group:
    """A container (or a confined service): every process of its cgroup."""
    return Group(name, lambda _: cgroups.pids(paths), paths)


def parse_schedstat(text: str) -> int:
    """The run-queue wait (ns) from a schedstat line: ``on-CPU ns, waiting ns, timeslices``."""
    return int(text.split()[1])


def task_waits(pid: int) -> dict[int, int]:
    """``{thread id: ns waited on a run queue}`` of every thread of a process (gone: empty)."""
    waits: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return waits
    for tid in tids:
        try:
            waits[int(tid)] = parse_schedstat(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text())
        except (OSError, IndexError, ValueError):
            continue
    return waits


class RunQueueWait:
    """One group's run-queue wait over a run, from successive ``{tid: ns}`` readings."""

    def __init__(self):
        self._base: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._readings = 0

    def update(self, waits: dict[int, int]) -> None:
        for tid, ns in waits.items():
            if tid not in self._base:
                # Present at the first reading: count from there; born since: from zero.
                self._base[tid] = ns if self._readings == 0 else 0
            self._last[tid] = ns
        self._readings += 1

    def seconds(self) -> float:
        return sum(self._last[tid] - self._base[tid] for tid in self._last) / 1e9


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def processes_by_group() -> dict[int, list[int]]:
    """``{process group: [PIDs]}`` of every live process (one /proc scan)."""
    by_pgid: dict[int, list[int]] = {}
    for pid, fields in live_processes():
        by_pgid.setdefault(int(fields[2]), []).append(pid)
    return by_pgid


class ShmBacklog:
    """Reads bruto's backlog in ``shm_dir``: None until its regions exist (and once they are gone).

    :meth:`close` lets go of the mappings: under compose the regions are on a
    tmpfs volume that Docker cannot unmount (nor remove) while a mapping holds it.
    """

    def __init__(self, shm_dir: str):
        self.shm_dir = shm_dir
        self.regions: SharedRegions | None = None

    def __call__(self) -> dict | None:
        try:
            self.regions = self.regions or SharedRegions(self.shm_dir)
            snapshot = self.regions.read()
        except (RegionError, OSError, ValueError):
            self.regions = None
            return None
        return {
            "accepted": snapshot["gateway"]["accepted"],
            "intake_backlog": snapshot["gateway"]["backlog"],
            "outbox_in_use": snapshot["outbox"]["in_use"],
            "confirmed_default": snapshot["processors"]["default"]["confirmed"],
            "confirmed_fallback": snapshot["processors"]["fallback"]["confirmed"],
        }

    def close(self) -> None:
        # The last references: CPython unmaps at once.
        self.regions = None


class Sampler:
    """Reads every group once a second in a thread, from :meth:`start` to :meth:`stop`.

    Args:
        groups: What to measure.
        backlog: Returns bruto's counters now (``{"accepted", "intake_backlog",
            "outbox_in_use", ...}``), or None when there is nothing to read.
    """

    def __init__(self, groups: list[Group], backlog: Callable[[], dict | None] | None = None,
                 interval_s: float = INTERVAL_S):
        self.groups = list(groups)
        self.backlog = backlog
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self.waits = {group.name: RunQueueWait() for group in self.groups}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, group: Group) -> None:
        """Measure one more group from the next sample on (k6, once it is started)."""
        self.waits[group.name] = RunQueueWait()
        self.groups = [*self.groups, group]

    def sample(self) -> dict:
        by_pgid = processes_by_group()
        row: dict = {"t": time.time(), "busy_s": machine_busy_seconds(), "cpu_s": {}, "throttled_s": {}}
        for group in self.groups:
            pids = group.pids(by_pgid)
            waits: dict[int, int] = {}
            for pid in pids:
                waits.update(task_waits(pid))
            self.waits[group.name].update(waits)
            if group.cgroup:
                try:
                    usage = cgroups.usage(group.cgroup)
                except OSError:  # the container is gone
                    continue
                row["cpu_s"][group.name] = usage["cpu_seconds"]
                row["throttled_s"][group.name] = usage["throttled_seconds"]
            elif pids:  # gone (k6 at the last sample): its last reading stands
                row["cpu_s"][group.name] = sum(cpu_seconds(pid) for pid in pids)
        if self.backlog is not None:
            row["backlog"] = self.backlog()
        self.samples.append(row)
        return row

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                break

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict:
        """The last sample taken; the summary (see :func:`summarize`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        close = getattr(self.backlog, "close", None)
        if close is not None:
            close()
        return summarize(self.samples, {name: wait.seconds() for name, wait in self.waits.items()})


def summarize(samples: list[dict], waits_s: dict[str, float]) -> dict:
    """Per group over the run: CPU seconds, run-queue wait, throttled seconds; the machine's busy CPU.

    CPU and throttling are the difference between a group's first and last
    sample (a group added late counts from its first one).
    """
    groups = {}
    for name, wait in waits_s.items():
        cpu = [row["cpu_s"][name] for row in samples if name in row["cpu_s"]]
        throttled = [row["throttled_s"][name] for row in samples if name in row["throttled_s"]]
        groups[name] = {
            "cpu_seconds": round(cpu[-1] - cpu[0], 2) if cpu else None,
            "runqueue_wait_s": round(wait, 3),
            "throttled_seconds": round(throttled[-1] - throttled[0], 3) if throttled else None,
        }
    return {
        "seconds": round(samples[-1]["t"] - samples[0]["t"], 1) if samples else 0,
        "machine_busy_seconds": round(samples[-1]["busy_s"] - samples[0]["busy_s"], 2) if samples else 0,
        "groups": groups,
        "measured_by": "CPU: cgroup cpuacct.usage, else /proc/PID/stat; run-queue wait: "
                       "/proc/PID/task/*/schedstat (2nd field); throttling: cgroup v1 cpu.stat; once a second",
    }


def series(samples: list[dict], t0: float) -> dict:
    """Per-second rates from cumulative samples (what the picture draws), time from ``t0`` (epoch s).

    Returns:
        ``{"t": [...], "busy_cores": [...], "cpu_cores": {group: [...]},
        "backlog": {counter: [...]}}``, one entry per interval between samples.
    """
    out: dict = {"t": [], "busy_cores": [], "cpu_cores": {}, "backlog": {}}
    for before, after in zip(samples, samples[1:]):
        dt = after["t"] - before["t"]
        if dt <= 0:
            continue
        out["t"].append(round(after["t"] - t0, 2))
        out["busy_cores"].append(round((after["busy_s"] - before["busy_s"]) / dt, 3))
        for name in set(before["cpu_s"]) | set(after["cpu_s"]):
            values = out["cpu_cores"].setdefault(name, [None] * (len(out["t"]) - 1))
            rate = None
            if name in before["cpu_s"] and name in after["cpu_s"]:
                rate = (after["cpu_s"][name] - before["cpu_s"][name]) / dt
            # Negative when one of its processes ended (its CPU left the sum): unknown, not drawn.
            values.append(round(rate, 3) if rate is not None and rate >= 0 else None)
        for counter, value in (after.get("backlog") or {}).items():
            values = out["backlog"].setdefault(counter, [None] * (len(out["t"]) - 1))
            values.append(value)
        for values in (*out["cpu_cores"].values(), *out["backlog"].values()):
            values.extend([None] * (len(out["t"]) - len(values)))
    return out
