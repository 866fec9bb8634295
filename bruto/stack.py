"""The local bruto stack, as plain processes: ``bruto-stack up|down|status``.

The topology is the compose file's: a load balancer on :9999
(``bruto.balancer``, or nginx with ``--balancer nginx``) in front of two
gunicorn instances on unix sockets, one dispatcher, and (unless processor URLs
are given) two processor emulators, default on 8001 and fallback on 8002.

``--limits`` confines bruto's processes (the balancer included, the emulators
not) in cgroup v1 cpu, cpuacct and memory groups, with the challenge's 1.5 CPU and
350 MB split per service as `SERVICE_LIMITS` says. The groups are nested under
the cgroups of the process running ``up``, so whoever accounts for that
process still accounts for the stack.

Every process is started in its own session, so its process group id is its
PID; ``down`` signals exactly those groups (and what is left in our cgroups),
never anything found by name. What was started is recorded in
``<run dir>/state.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
DEFAULT_RUN_DIR = "/tmp/bruto-stack"
DEFAULT_SHM_DIR = "/dev/shm/bruto-stack"
ADMIN_TOKEN = "123"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "memory")
CFS_PERIOD_US = 100_000

# (CPUs, MB) per service; the sums are the challenge's 1.5 CPU and 350 MB.
# NOTE: the APIs get most of the CPU because they serve every request on the
# hot path; the dispatcher gets the most memory because it holds the outbox
# and the ledger's pages; the balancer needs little of either (nginx ~0.1 ms
# of CPU per request; bruto.balancer only works when a client connects).
SERVICE_LIMITS = {
    "balancer": (0.20, 30),
    "api1": (0.45, 100),
    "api2": (0.45, 100),
    "dispatcher": (0.40, 120),
}
TOTAL_LIMITS = (1.5, 350)
# bruto.balancer hands connections to the instances; nginx proxies requests.
BALANCERS = ("bruto", "nginx")

READY_TIMEOUT_S = 30.0
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
    """

    name: str
    argv: list[str]
    env: dict[str, str]
    ready: tuple
    limited: bool = True
    extra_logs: list[str] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------- services


def emulator_services(default_port: int = 8001, fallback_port: int = 8002) -> list[Service]:
    """The two processor emulators (never confined: they are the test's, not bruto's)."""
    services = []
    for name, port, fee in (("default", default_port, "0.05"), ("fallback", fallback_port, "0.15")):
        url = f"http://127.0.0.1:{port}"
        services.append(
            Service(
                name=f"emulator-{name}",
                argv=["bruto-emulator", "--host", "127.0.0.1", "--port", str(port), "--fee", fee],
                env={},
                ready=("http", f"{url}/admin/payments-summary", {"X-Rinha-Token": ADMIN_TOKEN}),
                limited=False,
            )
        )
    return services


def bruto_services(
    run_dir: Path,
    shm_dir: str,
    default_url: str,
    fallback_url: str,
    port: int = 9999,
    workers: int = 1,
    balancer: str = "bruto",
) -> list[Service]:
    """Dispatcher, two API instances on unix sockets, then the balancer, in start order."""
    env = {
        "BRUTO_SHM_DIR": shm_dir,
        "BRUTO_DEFAULT_URL": default_url,
        "BRUTO_FALLBACK_URL": fallback_url,
        "BRUTO_WORKERS": str(workers),
    }
    services = [
        Service("dispatcher", ["bruto-dispatcher"], dict(env), ready=("alive", 1.0)),
    ]
    for name in ("api1", "api2"):
        sock = run_dir / f"{name}.sock"
        services.append(
            Service(
                name,
                ["gunicorn", "-c", str(CONF_DIR / "gunicorn.py")],
                dict(env, BRUTO_BIND=f"unix:{sock}"),
                ready=("unix", str(sock), "/payments-summary"),
            )
        )
    # NOTE: the balancer starts last, once the sockets answer: nginx would mark
    # an instance dead for 10 s if it sent it traffic before (LESSONS.md), and
    # bruto's balancer would close the clients it could not hand over.
    if balancer == "nginx":
        conf = render_nginx_conf(CONF_DIR / "nginx.conf", run_dir, port, socket_dir=run_dir)
        services.append(nginx_service("balancer", conf, run_dir, port))
    else:
        services.append(Service(
            "balancer",
            ["bruto-balancer", "--bind", f"127.0.0.1:{port}", "--channels", str(workers),
             str(run_dir / "api1.sock"), str(run_dir / "api2.sock")],
            {},
            ready=("http", f"http://127.0.0.1:{port}/payments-summary", {}),
        ))
    return services


def floor_services(run_dir: Path, port: int = 9998) -> list[Service]:
    """The static nginx of conf/nginx-floor.conf, alone."""
    conf = render_nginx_conf(CONF_DIR / "nginx-floor.conf", run_dir, port)
    return [nginx_service("floor", conf, run_dir, port)]


def nginx_service(name: str, conf: Path, run_dir: Path, port: int) -> Service:
    """nginx in the foreground, its pid file and error log in the run directory."""
    error_log = run_dir / f"{name}-error.log"
    directives = f"daemon off; pid {run_dir / name}.pid; error_log {error_log} warn;"
    if os.geteuid() == 0:
        # NOTE: started by root, nginx runs its worker as 'nobody', which cannot
        # reach sockets under a private directory (pytest's tmp, mkdtemp). The
        # worker keeps the starting user instead; this is a local stack on
        # 127.0.0.1, and the compose file runs nginx its own way.
        directives += " user root;"
    return Service(
        name,
        ["nginx", "-p", str(run_dir), "-c", str(conf), "-g", directives],
        {},
        ready=("http", f"http://127.0.0.1:{port}/payments-summary", {}),
        extra_logs=[str(error_log)],
    )


def render_nginx_conf(template: Path, run_dir: Path, port: int, socket_dir: Path | None = None) -> Path:
    """Write a copy of an nginx config with the listen port and socket directory replaced.

    Args:
        template: conf/nginx.conf or conf/nginx-floor.conf.
        run_dir: Where the copy is written.
        port: The port to listen on.
        socket_dir: Replaces ``/run/bruto/`` (the compose file's shared volume).

    Returns:
        The path of the copy.

    Raises:
        StackError: If the template no longer has what is replaced.
    """
    text = template.read_text()
    listens = [line for line in text.splitlines() if line.strip().startswith("listen ")]
    if len(listens) != 1:
        raise StackError(f"{template}: expected one 'listen' line, found {len(listens)}")
    old_port = listens[0].split()[1].rstrip(";")
    text = text.replace(listens[0], listens[0].replace(old_port, str(port), 1))
    if socket_dir is not None:
        if "/run/bruto/" not in text:
            raise StackError(f"{template}: no /run/bruto/ socket path to rewrite")
        text = text.replace("/run/bruto/", f"{socket_dir}/")
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / template.name
    out.write_text(text)
    return out


# ----------------------------------------------------------------- cgroups


def cgroups_unavailable_reason() -> str | None:
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


def create_cgroups(tag: str) -> dict[str, dict[str, str]]:
    """Create the parent group (the totals) and one group per service.

    Args:
        tag: Unique name of the parent group.

    Returns:
        ``{"": {controller: path}, service: {controller: path}, ...}``; the
        empty name is the parent, whose counters cover the whole stack.
    """
    groups: dict[str, dict[str, str]] = {}
    parents = {c: own_cgroup(c) / tag for c in CGROUP_CONTROLLERS}
    for name, (cpus, mb) in [("", TOTAL_LIMITS)] + list(SERVICE_LIMITS.items()):
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


def remove_cgroups(groups: dict[str, dict[str, str]]) -> list[str]:
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


def cgroup_pids(paths: dict[str, str]) -> list[int]:
    """PIDs in a service's memory group (every confined process is in all three)."""
    try:
        text = Path(paths["memory"], "cgroup.procs").read_text()
    except FileNotFoundError:
        return []
    return [int(pid) for pid in text.split()]


def cgroup_usage(paths: dict[str, str]) -> dict[str, float]:
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


# --------------------------------------------------------------- processes


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, which tells it from a PID reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces; the fields after ')' do not.
    return int(stat.rsplit(")", 1)[1].split()[19])


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] is the state, fields[2] the process group; zombies are gone already.
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


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
        limits: Confine the ``limited`` services in cgroups.
        scratch_dirs: Directories the services fill (the shared memory); those
            that ``up`` finds missing, ``down`` removes.
    """

    def __init__(
        self,
        run_dir: str | Path,
        services: list[Service] | None = None,
        limits: bool = False,
        scratch_dirs: list[str] | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.services = services or []
        self.limits = limits
        self.scratch_dirs = scratch_dirs or []
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
            # A stack that died without down: clear its cgroups and directories.
            self.down()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "run_dir": str(self.run_dir),
            "processes": [],
            "cgroups": {},
            "scratch_dirs": [d for d in self.scratch_dirs if not os.path.exists(d)],
        }
        if self.limits:
            reason = cgroups_unavailable_reason()
            if reason:
                raise StackError(f"--limits: {reason}")
            state["cgroups"] = create_cgroups(f"bruto-{os.getpid()}-{self.run_dir.name}")
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

    def _start(self, service: Service, cgroups: dict) -> dict:
        log = self.run_dir / f"{service.name}.log"
        argv = service.argv
        paths = cgroups.get(service.name) if service.limited else None
        if paths:
            # Join the groups from inside the child before exec, so that every
            # process it forks (gunicorn workers, nginx's worker) starts in them.
            joins = " && ".join(
                f"echo $$ > {shlex.quote(str(Path(p, 'cgroup.procs')))}" for p in paths.values()
            )
            argv = ["sh", "-c", f'{joins} && exec "$@"', service.name] + argv
        env = dict(os.environ, **service.env)
        with open(log, "ab") as out:
            try:
                process = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=REPO_ROOT,
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
        }

    def _wait_ready(self, service: Service, record: dict) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        if service.ready[0] == "alive":
            deadline = time.monotonic() + service.ready[1]
        reason = "no answer yet"
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

    def down(self) -> list[str]:
        """Stop what state.json records, in reverse start order, and remove the cgroups.

        Returns:
            Problems met (processes that needed SIGKILL, cgroups left behind).
        """
        try:
            state = self.load_state()
        except StackError:
            return []
        problems = []
        for record in reversed(state["processes"]):
            problems += self._stop(record, state["cgroups"].get(record["name"]) if record.get("limited") else None)
        if state["cgroups"]:
            problems += [f"cgroup left behind: {p}" for p in remove_cgroups(state["cgroups"])]
        for path in state.get("scratch_dirs", []):
            shutil.rmtree(path, ignore_errors=True)
        self.state_file.unlink()
        return problems

    def _stop(self, record: dict, cgroup: dict | None) -> list[str]:
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
        if cgroup:
            # Anything that left the process group is still in our cgroup.
            for stray in cgroup_pids(cgroup):
                problems.append(f"{record['name']}: PID {stray} outside its group; killed")
                try:
                    os.kill(stray, signal.SIGKILL)
                except ProcessLookupError:
                    pass
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
            cgroup = state["cgroups"].get(record["name"]) if record.get("limited") else None
            if cgroup:
                row.update({k: round(v, 2) for k, v in cgroup_usage(cgroup).items()})
            rows.append(row)
        if state["cgroups"]:
            total = {k: round(v, 2) for k, v in cgroup_usage(state["cgroups"][""]).items()}
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


# --------------------------------------------------------------------- CLI


def build_stack(args: argparse.Namespace) -> Stack:
    run_dir = Path(args.run_dir).resolve()
    services: list[Service] = []
    default_url, fallback_url = args.default_url, args.fallback_url
    if default_url is None and fallback_url is None:
        default_port, fallback_port = args.emulator_ports
        services += emulator_services(default_port, fallback_port)
        default_url = f"http://127.0.0.1:{default_port}"
        fallback_url = f"http://127.0.0.1:{fallback_port}"
    elif default_url is None or fallback_url is None:
        raise StackError("give both --default-url and --fallback-url, or neither")
    services += bruto_services(run_dir, args.shm_dir, default_url, fallback_url, args.port, args.workers,
                               args.balancer)
    return Stack(run_dir, services, limits=args.limits, scratch_dirs=[args.shm_dir])


def parse_ports(text: str) -> tuple[int, int]:
    default, fallback = text.split(",")
    return int(default), int(fallback)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="logs, sockets, state (default %(default)s)")
    parser.add_argument("--shm-dir", default=DEFAULT_SHM_DIR, help="BRUTO_SHM_DIR (default %(default)s)")
    parser.add_argument("--limits", action="store_true", help="confine bruto in cgroups: 1.5 CPU, 350 MB")
    parser.add_argument("--default-url", help="an existing default processor (no emulators are started)")
    parser.add_argument("--fallback-url", help="an existing fallback processor")
    parser.add_argument("--port", type=int, default=9999, help="the balancer's port (default %(default)s)")
    parser.add_argument("--emulator-ports", type=parse_ports, default=(8001, 8002), metavar="D,F",
                        help="ports of the emulators (default 8001,8002)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per instance (default 1)")
    parser.add_argument("--balancer", choices=BALANCERS, default=BALANCERS[0],
                        help="load balancer on --port (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        stack = build_stack(args)
        if args.command == "up":
            state = stack.up()
            for record in state["processes"]:
                confined = " (confined)" if record["limited"] else ""
                print(f"{record['name']:18} pid {record['pid']}{confined}")
            print(f"stack up on http://127.0.0.1:{args.port}; logs and state in {stack.run_dir}")
        elif args.command == "down":
            if not stack.state_file.exists():
                print(f"nothing recorded in {stack.run_dir}")
                return 0
            for problem in stack.down():
                print(problem, file=sys.stderr)
            print("stack down")
        else:
            for row in stack.status():
                print("  ".join(f"{k}={v}" for k, v in row.items()))
    except StackError as error:
        print(f"bruto-stack {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
