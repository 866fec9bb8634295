"""Start, check and stop a set of services as plain processes.

With limits, the confined services run in cgroup groups, v1 or v2
(bruto.testbed.stack.cgroups), with the split the services declare.

Every process is started in its own session, so its process group id is its
PID; ``down`` signals exactly those groups (and what is left in our cgroups),
never anything found by name. What was started is recorded in
``<run dir>/state.json``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bruto.testbed.stack import cgroups

READY_TIMEOUT_S = 30.0
# The name of the supervisor's record in state.json (bruto.testbed.stack.supervisor).
SUPERVISOR = "supervisor"
# Left in the scratch directories a stack creates, so that a later stack
# started on a directory an earlier one kept knows it may remove it.
SCRATCH_MARK = ".bruto-stack-scratch"
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 25


class StackError(RuntimeError):
    """A stack could not be started or stopped; the message says why."""


@dataclasses.dataclass
class Service:
    """One process the stack starts.

    Attributes:
        name: Short name, also the cgroup's and the log file's.
        argv: Command line.
        env: Extra environment variables.
        ready: How to tell it answers: ``("http", url, headers)``,
            ``("unix", socket_path, url_path)`` or ``("alive", seconds)``.
        limited: Whether ``--limits`` confines it.
        extra_logs: Logs it writes besides its output (shown when it fails).
        cgroup: The limits' entry it is confined by (default: its name);
            a standby shares the group, and so the limits, of what it stands by for.
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: tuple
    limited: bool = True
    extra_logs: list[str] = dataclasses.field(default_factory=list)
    cgroup: str = ""

    @property
    def group(self) -> str:
        return self.cgroup or self.name

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> "Service":
        return cls(**dict(fields, ready=tuple(fields["ready"])))


# --------------------------------------------------------------- processes


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, which tells it from a PID reuse; None once it died.

    A zombie (dead, not yet reaped by its parent) counts as dead.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces; the fields after ')' do not.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def live_processes():
    """Every live process as (PID, the fields of /proc/PID/stat after the command name).

    Those fields start with the state, the parent's PID and the process group;
    zombies are left out (they are gone already). No procps needed.
    """
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
        if fields[0] != "Z":
            yield int(entry), fields


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in a process group."""
    return [pid for pid, fields in live_processes() if int(fields[2]) == pgid]


def tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note that it is missing."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def logs_of(service: Service, record: dict) -> str:
    """The tails of every log of a service, for a failure message."""
    return "\n".join(
        f"last lines of {path}:\n{tail(path)}" for path in [record["log"]] + service.extra_logs
    )


def probe(ready: tuple) -> str | None:
    """Ask a service once whether it answers; None if it does, else why not."""
    kind = ready[0]
    try:
        if kind == "http":
            _, url, headers = ready
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        if kind == "unix":
            _, path, url_path = ready
            connection = UnixHTTPConnection(path, timeout=1.0)
            try:
                connection.request("GET", url_path)
                status = connection.getresponse().status
            finally:
                connection.close()
            return None if status == 200 else f"HTTP {status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    return None


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, to ask a gunicorn instance directly."""

    def __init__(self, path: str, timeout: float = 1.0):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


# ------------------------------------------------------------------- stack


class Stack:
    """A set of services started, checked and stopped together.

    Args:
        run_dir: Logs, sockets, rendered configs and state.json.
        services: In start order (they are stopped in reverse).
        limits: ``{service: (CPUs, MB)}`` to confine the ``limited``
            services in cgroups (their parent group gets the sums); None
            runs them unconfined.
        scratch_dirs: Directories the services fill (the shared memory); those
            that ``up`` finds missing, ``down`` removes.
        notes: Kept in state.json as they are (the stack's shared directory).
    """

    def __init__(
        self,
        run_dir: str | Path,
        services: list[Service] | None = None,
        limits: dict[str, tuple[float, int]] | None = None,
        scratch_dirs: list[str] | None = None,
        notes: dict | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.services = services or []
        self.limits = limits
        self.scratch_dirs = scratch_dirs or []
        self.notes = notes or {}
        # NOTE: the Popen objects are kept so that only they reap their
        # process: a dropped Popen is reaped by subprocess behind our back,
        # and its exit status is lost.
        self._children: dict[int, subprocess.Popen] = {}
        self.state_file = self.run_dir / "state.json"

    def load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise StackError(f"no stack recorded in {self.run_dir}") from None

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def up(self) -> dict:
        """Start every service in order, each one answering before the next starts.

        Returns:
            The recorded state.

        Raises:
            StackError: A service did not start; what was started is stopped
                again and the message names the service, the reason and the
                tail of its log.
        """
        if self.state_file.exists():
            if any(self.alive(p) for p in self.load_state()["processes"]):
                raise StackError(f"a stack is already running from {self.run_dir}; run down first")
            # A stack that died without down: clear its cgroups, keep its
            # directories (what they hold was accepted; this stack resumes it).
            self.down(may_remove=lambda path: False)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {
            "run_dir": str(self.run_dir),
            "processes": [],
            "cgroups": {},
            "notes": self.notes,
            "scratch_dirs": [d for d in self.scratch_dirs
                             if not os.path.exists(d) or os.path.exists(os.path.join(d, SCRATCH_MARK))],
        }
        for path in state["scratch_dirs"]:
            os.makedirs(path, exist_ok=True)
            Path(path, SCRATCH_MARK).touch()
        if self.limits:
            reason = cgroups.unavailable_reason()
            if reason:
                raise StackError(f"--limits: {reason}")
            total = (sum(cpus for cpus, _ in self.limits.values()), sum(mb for _, mb in self.limits.values()))
            state["cgroups"] = cgroups.create(f"bruto-{os.getpid()}-{self.run_dir.name}", self.limits, total)
        self._save(state)
        try:
            for service in self.services:
                # Something else on our port would answer the readiness probe
                # while our process fails to bind: refuse before starting.
                if service.ready[0] == "http" and probe(service.ready) is None:
                    raise StackError(f"{service.name}: {service.ready[1]} already answers; another stack is up?")
                state["processes"].append(self._start(service, state["cgroups"]))
                self._save(state)
                self._wait_ready(service, state["processes"][-1])
        except BaseException:
            self.down()
            raise
        return state

    def _start(self, service: Service, groups: dict) -> dict:
        log = self.run_dir / f"{service.name}.log"
        argv = service.argv
        paths = groups.get(service.group) if service.limited else None
        if paths:
            # Join the groups from inside the child before exec, so that every
            # process it forks (gunicorn workers, nginx's worker) starts in them.
            joins = " && ".join(
                # dict.fromkeys: on cgroup v2 every controller's directory is the same one.
                f"echo $$ > {shlex.quote(str(Path(p, 'cgroup.procs')))}" for p in dict.fromkeys(paths.values())
            )
            argv = ["sh", "-c", f'{joins} && exec "$@"', service.name] + argv
        env = dict(os.environ, **service.env)
        with open(log, "ab") as out:
            try:
                process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=self.run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except FileNotFoundError as error:
                raise StackError(f"{service.name}: cannot run {argv[0]!r}: {error}") from None
        self._children[process.pid] = process
        return {
            "name": service.name,
            "pid": process.pid,
            "start_time": start_time(process.pid),
            "argv": service.argv,
            "log": str(log),
            "ready": list(service.ready),
            "limited": bool(paths),
            "cgroup": service.group,
            "started_at": time.time(),
        }

    def _wait_ready(self, service: Service, record: dict) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        if service.ready[0] == "alive":
            deadline = time.monotonic() + service.ready[1]
        reason: str | None = "no answer yet"
        while True:
            status = self._exit_status(record["pid"])
            if status is not None:
                raise StackError(f"{service.name} exited ({status}) while starting; {logs_of(service, record)}")
            if service.ready[0] == "alive":
                if time.monotonic() >= deadline:
                    return
            else:
                reason = probe(service.ready)
                if reason is None:
                    return
                if time.monotonic() >= deadline:
                    raise StackError(
                        f"{service.name} did not answer within {READY_TIMEOUT_S:.0f} s ({reason}); "
                        f"{logs_of(service, record)}"
                    )
            time.sleep(0.05)

    def _exit_status(self, pid: int) -> int | None:
        """Exit status of a process we started, None while it runs."""
        child = self._children.get(pid)
        if child is not None:
            return child.poll()
        # Started by another invocation: not ours to wait for.
        return None if start_time(pid) is not None else -1

    def _reap(self, pid: int) -> None:
        """Collect a child that has exited, so it does not linger as a zombie."""
        child = self._children.get(pid)
        if child is not None:
            child.poll()

    @staticmethod
    def alive(record: dict) -> bool:
        """Whether the recorded process is still the one we started."""
        started = record["start_time"]
        return started is not None and start_time(record["pid"]) == started

    def down(self, may_remove: Callable[[str], bool] = lambda path: True) -> list[str]:
        """Stop what state.json records, in reverse start order, and remove the cgroups.

        A supervisor (bruto.testbed.stack.supervisor) is stopped first.

        Args:
            may_remove: Asked, once everything is stopped, about each scratch
                directory: whether to remove it (False keeps it).

        Returns:
            Problems met (processes that needed SIGKILL, cgroups left behind).
        """
        try:
            state = self.load_state()
        except StackError:
            return []
        problems = []
        supervisor = [record for record in state["processes"] if record["name"] == SUPERVISOR]
        if supervisor:
            # First, so that it restarts nothing we stop; then what it last recorded.
            problems += self._stop(supervisor[0])
            state = self.load_state()
        for record in reversed(state["processes"]):
            if record["name"] != SUPERVISOR:
                problems += self._stop(record)
        for name, paths in state["cgroups"].items():
            # Anything that left its process group is still in its service's cgroup.
            for stray in cgroups.pids(paths) if name else []:
                problems.append(f"{name}: PID {stray} outside its process group; killed")
                try:
                    os.kill(stray, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if state["cgroups"]:
            problems += [f"cgroup left behind: {p}" for p in cgroups.remove(state["cgroups"])]
        for path in state.get("scratch_dirs", []):
            if may_remove(path):
                shutil.rmtree(path, ignore_errors=True)
        self.state_file.unlink()
        return problems

    def _stop(self, record: dict) -> list[str]:
        pid = record["pid"]
        leader_ours = self.alive(record)
        # The group outlives its leader only with processes we started in it
        # (Linux does not reuse a PID still used as a process group id).
        if not leader_ours and start_time(pid) is not None:
            return [f"{record['name']}: PID {pid} is now another process; left alone"]
        signal_group(pid, signal.SIGTERM)
        self._reap(pid)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while group_members(pid) and time.monotonic() < deadline:
            self._reap(pid)
            time.sleep(0.05)
        problems = []
        if group_members(pid):
            problems.append(f"{record['name']}: still running {STOP_TIMEOUT_S:.0f} s after SIGTERM; killed")
            signal_group(pid, signal.SIGKILL)
        return problems

    def status(self) -> list[dict]:
        """One row per recorded process: alive, answering, memory and CPU."""
        state = self.load_state()
        rows = []
        for record in state["processes"]:
            alive = self.alive(record)
            ready = tuple(record["ready"])
            answer = "-"
            if alive and ready[0] != "alive":
                reason = probe(ready)
                answer = "ok" if reason is None else reason
            row = {
                "name": record["name"],
                "pid": record["pid"],
                "alive": alive,
                "answers": answer,
                "processes": len(group_members(record["pid"])) if alive else 0,
                "rss_mb": round(sum(rss_bytes(p) for p in group_members(record["pid"])) / 2**20, 1),
            }
            cgroup = state["cgroups"].get(record.get("cgroup", record["name"])) if record.get("limited") else None
            if cgroup:
                row.update({k: round(v, 2) for k, v in cgroups.usage(cgroup).items()})
            rows.append(row)
        if state["cgroups"]:
            total = {k: round(v, 2) for k, v in cgroups.usage(state["cgroups"][""]).items()}
            rows.append(dict(name="(limited total)", **total))
        return rows




def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (and its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 of stat, 12-15 here.
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
