"""The compose stack as the challenge runs it, for ``bruto-bench --compose``.

The processors' compose file first (it creates the ``payment-processor``
network and publishes the emulators on 127.0.0.1:8001/8002), then
``docker-compose.yml``, the deliverable: built with tools/build_images.sh (how
images are built on this machine, docs/CONTAINERS.md), started with
``docker compose up -d``, judged ready when a summary and a purge answer
through :9999 (the purge needs the dispatcher), and removed with
``docker compose down -v``. Docker's own settings (its userland proxy
included) are left as they are: the judge's Docker decides them.

``--cold`` starts the stack as the organisers' run-tests.sh and
run-tests-final.sh do, once per run: the processors' file ``up --build -d``,
then ``docker compose up --build`` in the foreground (its output in a log),
``GET /payments-summary`` tried every 5 s (at most 15 tries, 3 s each) until
it answers, and k6 once the 5-s sleep after the answering try is over; both
projects are removed after each run. Nothing waits for the purge or the
dispatcher: what k6 meets is what the judge's k6 met.

Each container's counters come from its cgroups (cgroup v1: the directories
named in ``/proc/<its main PID>/cgroup``, whatever the cgroup driver), read
when k6 starts and when it ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import bruto
from bruto.testbed.bench.sampler import Group
from bruto.testbed.bench.sampler import in_cgroup
from bruto.testbed.stack import cgroups
from bruto.testbed.stack.runner import StackError
from bruto.testbed.stack.runner import cpu_seconds
from bruto.testbed.stack.runner import tail

PROCESSORS_FILE = "docker-compose.processors.yml"
PRODUCT_FILE = "docker-compose.yml"
BUILD_SCRIPT = "tools/build_images.sh"
PORT = 9999
# BRUTO_SHM_DIR in docker-compose.yml, where the `shm` volume is mounted.
SHM_DIR = "/dev/shm/bruto"
PROCESSOR_PORTS = (8001, 8002)
READY_TIMEOUT_S = 90.0
COMMAND_TIMEOUT_S = 900
# run-tests.sh's loop: 15 tries of `curl -f --max-time 3 .../payments-summary`,
# each followed by `sleep 5`.
JUDGE_TRIES = 15
JUDGE_INTERVAL_S = 5.0
JUDGE_TRY_TIMEOUT_S = 3.0
# How long the foreground `up` may take to exit once its containers are removed.
FOREGROUND_EXIT_S = 30


def default_compose_dir() -> Path:
    """The checkout this bruto was installed from (an editable install's), where the compose files are."""
    return Path(bruto.__file__).resolve().parent.parent


def parse_proc_cgroup(text: str, root: Path = cgroups.CGROUP_ROOT) -> dict[str, str]:
    """The v1 cgroup directory per controller, from the text of ``/proc/<pid>/cgroup``.

    Args:
        text: Lines ``id:controllers:path`` (``4:memory:/docker/<id>``,
            ``2:cpu,cpuacct:/docker/<id>``).
        root: Where the v1 hierarchies are mounted.

    Returns:
        ``{"cpu": ..., "cpuacct": ..., "memory": ...}``: the controllers
        :func:`bruto.testbed.stack.cgroups.usage` reads.

    Raises:
        StackError: A controller has no v1 hierarchy in the text.
    """
    paths = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in cgroups.CGROUP_CONTROLLERS:
                paths[controller] = str(root / controller / path.lstrip("/"))
    missing = [c for c in cgroups.CGROUP_CONTROLLERS if c not in paths]
    if missing:
        raise StackError(f"no cgroup v1 {', '.join(missing)} in /proc/<pid>/cgroup: {text!r}")
    return paths


def parse_ps(text: str) -> dict[str, str]:
    """``{service: container id}`` from ``docker compose ps --format json``.

    Compose writes one JSON object per line (v2.21 and later) or one JSON
    array (before); both are read.
    """
    text = text.strip()
    if not text:
        return {}
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
    return {row["Service"]: row["ID"] for row in rows}


def counters_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """One container's figures during the test: CPU and throttling as differences, peak memory as read last."""
    return {
        "cpu_seconds": round(after["cpu_seconds"] - before["cpu_seconds"], 2),
        "throttled_periods": int(after["throttled_periods"] - before["throttled_periods"]),
        "throttled_seconds": round(after["throttled_seconds"] - before["throttled_seconds"], 3),
        "peak_memory_mb": round(after["peak_memory_mb"], 1),
    }


def proxy_pids(port: int) -> list[int]:
    """PIDs of Docker's userland proxies for a published host port (none when Docker runs without them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv[0].endswith(b"docker-proxy") or b"-host-port" not in argv[:-1]:
            continue
        if argv[argv.index(b"-host-port") + 1] == str(port).encode():
            found.append(int(entry))
    return found


class Compose:
    """One compose file of the checkout, driven through ``docker compose``.

    Args:
        directory: The checkout holding the compose files.
        file: The compose file's name.
        log: Where every command's output is appended.
        project: The compose project's name (``-p``); the file's ``name`` if None.
        env: Variables the compose file interpolates, on top of this process's environment.
    """

    def __init__(self, directory: Path, file: str, log: Path, project: str | None = None,
                 env: dict[str, str] | None = None):
        self.directory = directory
        self.file = file
        self.log = log
        self.project = project
        self.env = env or {}

    def run(self, *args: str, capture: bool = False) -> str:
        """``docker compose -f FILE ARGS``; its output when ``capture``.

        Raises:
            StackError: It failed; the message has the end of its output.
        """
        argv = ["docker", "compose", "-f", self.file, *(("-p", self.project) if self.project else ()), *args]
        with open(self.log, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            result = subprocess.run(argv, cwd=self.directory, stdout=subprocess.PIPE if capture else log,
                                    stderr=log, timeout=COMMAND_TIMEOUT_S, env={**os.environ, **self.env})
        if result.returncode != 0:
            raise StackError(f"{' '.join(argv)} exited {result.returncode}; last lines of {self.log}:\n{tail(self.log)}")
        return result.stdout.decode() if capture else ""

    def start(self, *args: str) -> subprocess.Popen:
        """``docker compose -f FILE ARGS`` left running (``up`` in the foreground), its output in the log."""
        argv = ["docker", "compose", "-f", self.file, *(("-p", self.project) if self.project else ()), *args]
        with open(self.log, "ab") as log:
            log.write(f"$ {' '.join(argv)} &\n".encode())
            log.flush()
            return subprocess.Popen(argv, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **self.env})

    def containers(self) -> dict[str, str]:
        """``{service: container id}`` of the running containers."""
        return parse_ps(self.run("ps", "--format", "json", capture=True))

    def down(self) -> list[str]:
        """Remove containers, networks and volumes; the problems met, if any."""
        try:
            self.run("down", "-v", "--timeout", "10")
        except (StackError, subprocess.TimeoutExpired) as error:
            return [str(error)]
        return []


def container_pid(container_id: str) -> int:
    """The host PID of a running container's main process."""
    return int(subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", container_id],
                              capture_output=True, text=True, check=True).stdout.strip())


def container_cgroups(container_id: str) -> dict[str, str]:
    """The cgroup directories of a running container (from its main process)."""
    return parse_proc_cgroup(Path(f"/proc/{container_pid(container_id)}/cgroup").read_text())


def shared_dir_of(container_id: str) -> str:
    """bruto's shared directory as the host reaches it: through the container's root (its tmpfs volume)."""
    return f"/proc/{container_pid(container_id)}/root{SHM_DIR}"


def build(directory: Path, log: Path) -> None:
    """Build both images the way this machine can (tools/build_images.sh: local base images, pip's CA as secrets).

    Raises:
        StackError: The build failed.
    """
    with open(log, "ab") as out:
        code = subprocess.run(["bash", BUILD_SCRIPT], cwd=directory, stdout=out, stderr=subprocess.STDOUT,
                              timeout=COMMAND_TIMEOUT_S).returncode
    if code != 0:
        raise StackError(f"{BUILD_SCRIPT} exited {code}; last lines of {log}:\n{tail(log)}")


def summary_answers(url: str, timeout_s: float = JUDGE_TRY_TIMEOUT_S) -> bool:
    """One try of the judge's ``curl -f``: GET /payments-summary answers below 400 within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url + "/payments-summary", timeout=timeout_s) as answer:
            return answer.status < 400
    except (OSError, urllib.error.URLError):
        return False


def poll_like_the_judge(answers: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
                        tries: int = JUDGE_TRIES, interval_s: float = JUDGE_INTERVAL_S) -> int:
    """Try ``answers`` until it says yes, sleeping ``interval_s`` after each try that did not.

    The judge's loop also sleeps after the try that answered; that last sleep
    is the caller's (it reads the containers' cgroups meanwhile).

    Returns:
        The number of the try that answered (1 = at once).

    Raises:
        StackError: No try answered (the judge aborts the test then).
    """
    for attempt in range(1, tries + 1):
        if answers():
            return attempt
        sleep(interval_s)
    raise StackError(f"GET /payments-summary did not answer in {tries} tries {interval_s:g} s apart")


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Wait until the stack answers a summary and carries out a purge; seconds it took.

    Raises:
        StackError: It did not within ``timeout_s``.
    """
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < timeout_s:
        try:
            for method, path in (("GET", "/payments-summary"), ("POST", "/purge-payments")):
                with urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=6) as answer:
                    if answer.status != 200:
                        raise urllib.error.URLError(f"{method} {path}: HTTP {answer.status}")
            return round(time.monotonic() - started, 1)
        except (OSError, urllib.error.URLError) as error:
            last = str(error)
        time.sleep(0.25)
    raise StackError(f"the compose stack did not answer at {url} within {timeout_s:.0f} s: {last}")


class ContainerResources:
    """Per-container CPU, throttling and peak memory during a test, from the containers' cgroups.

    Args:
        product: ``{service: cgroup paths}`` of docker-compose.yml's containers
            (bruto: what the challenge's limits confine).
        outside: ``{name: cgroup paths}`` of other containers (the processors).
        proxy_port: The published port whose docker-proxy CPU is counted.
    """

    def __init__(self, product: dict[str, dict[str, str]], outside: dict[str, dict[str, str]],
                 proxy_port: int = PORT):
        self.product = product
        self.outside = outside
        self.proxy_port = proxy_port
        self._before: dict[str, dict[str, float]] = {}
        self._proxy_before: dict[int, float] = {}

    def _read(self) -> dict[str, dict[str, float]]:
        return {name: cgroups.usage(paths) for name, paths in {**self.product, **self.outside}.items()}

    def groups(self) -> list[Group]:
        """Every container, and the port's docker-proxy processes, for the per-second sampler."""
        proxies = proxy_pids(self.proxy_port)
        return [*(in_cgroup(name, paths) for name, paths in {**self.product, **self.outside}.items()),
                Group("docker-proxy", lambda _: proxies)]

    def start(self) -> None:
        self._before = self._read()
        self._proxy_before = {pid: cpu_seconds(pid) for pid in proxy_pids(self.proxy_port)}

    def stop(self) -> dict:
        """The figures since :meth:`start` (see :func:`summarize`)."""
        after = self._read()
        proxy = sum(cpu_seconds(pid) - before for pid, before in self._proxy_before.items())
        return summarize(self._before, after, set(self.product), proxy, len(self._proxy_before))


def summarize(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]],
              product: set[str], proxy_cpu_seconds: float, proxies: int) -> dict:
    """The resources part of a compose run's result.

    Args:
        before: ``cgroups.usage`` per container at the start of the test.
        after: The same at its end.
        product: Which containers are bruto's (the rest ran outside its limits).
        proxy_cpu_seconds: docker-proxy's CPU during the test.
        proxies: How many docker-proxy processes carried the port (0: Docker
            runs without its userland proxy).

    Returns:
        Totals over bruto's containers (peak: the sum of their peaks),
        ``per_service`` for bruto's, ``outside_limits`` for the rest.
    """
    per_container = {name: counters_delta(before[name], after[name]) for name in after}
    ours = {name: v for name, v in per_container.items() if name in product}
    return {
        "peak_memory_mb": round(sum(v["peak_memory_mb"] for v in ours.values()), 1),
        "cpu_seconds": round(sum(v["cpu_seconds"] for v in ours.values()), 2),
        "throttled_periods": sum(v["throttled_periods"] for v in ours.values()),
        "throttled_seconds": round(sum(v["throttled_seconds"] for v in ours.values()), 3),
        "per_service": ours,
        "outside_limits": {
            **{name: {"cpu_seconds": v["cpu_seconds"]} for name, v in per_container.items() if name not in product},
            "docker-proxy": {"cpu_seconds": round(proxy_cpu_seconds, 2), "processes": proxies},
        },
        "measured_by": "cgroup v1 of each container: memory.max_usage_in_bytes (lifelong), "
                       "cpuacct.usage and cpu.stat (during the test); docker-proxy from /proc",
    }


class ComposeBench:
    """The two compose projects of one ``bruto-bench --compose`` invocation.

    Args:
        directory: The checkout with the compose files.
        log: Where docker's and the build's output go.
        fees: The emulators' fees (default, fallback), as docker-compose.processors.yml reads them.
    """

    def __init__(self, directory: Path, log: Path, fees: tuple[str, str] = ("0.05", "0.15")):
        if not (directory / PRODUCT_FILE).exists():
            raise StackError(f"no {PRODUCT_FILE} in {directory}: give --compose-dir")
        self.directory = directory
        self.log = log
        self.processors = Compose(directory, PROCESSORS_FILE, log,
                                  env={"PROCESSOR_DEFAULT_FEE": fees[0], "PROCESSOR_FALLBACK_FEE": fees[1]})
        self.product = Compose(directory, PRODUCT_FILE, log)
        self.foreground: subprocess.Popen | None = None
        # bruto's shared directory while its containers run (see shared_dir_of).
        self.shm_dir: str | None = None

    def processors_up(self, *up_options: str) -> None:
        """Start the emulators (the network ``payment-processor`` with them) and wait until they answer."""
        self.processors.run("up", "-d", *up_options)
        self.wait_processors()

    def wait_processors(self) -> None:
        """Wait until both emulators answer their admin API."""
        for port in PROCESSOR_PORTS:
            started = time.monotonic()
            url = f"http://127.0.0.1:{port}/admin/payments-summary"
            while True:
                try:
                    urllib.request.urlopen(urllib.request.Request(url, headers={"X-Rinha-Token": "123"}), timeout=2)
                    break
                except (OSError, urllib.error.URLError) as error:
                    if time.monotonic() - started > READY_TIMEOUT_S:
                        raise StackError(f"processor on :{port} did not answer: {error}") from None
                    time.sleep(0.25)

    def _cgroups(self) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """Both projects' containers' cgroups; notes bruto's shared directory."""
        containers = self.product.containers()
        if "dispatcher" in containers:
            self.shm_dir = shared_dir_of(containers["dispatcher"])
        product = {name: container_cgroups(cid) for name, cid in containers.items()}
        outside = {name: container_cgroups(cid) for name, cid in self.processors.containers().items()}
        return product, outside

    def product_up(self) -> tuple[ContainerResources, dict]:
        """Start bruto's containers, wait until the stack answers; its resources meter and start-up facts."""
        started = time.monotonic()
        self.product.run("up", "-d")
        ready_after = wait_ready(f"http://127.0.0.1:{PORT}")
        product, outside = self._cgroups()
        startup = {"up_and_ready_s": round(time.monotonic() - started, 1), "ready_after_up_s": ready_after}
        return ContainerResources(product, outside), startup

    def cold_up(self) -> tuple[ContainerResources, dict]:
        """Start the processors, then bruto, as the judge does (the module's ``--cold``); when k6 may start.

        Raises:
            StackError: A compose command failed, the foreground ``up`` ended,
                or the summary never answered.
        """
        started = time.monotonic()
        self.processors.run("up", "--build", "-d")
        foreground = self.foreground = self.product.start("up", "--build")

        def answers() -> bool:
            if foreground.poll() is not None:
                raise StackError(f"docker compose up --build exited {foreground.returncode}; "
                                 f"last lines of {self.log}:\n{tail(self.log)}")
            return summary_answers(f"http://127.0.0.1:{PORT}")

        tries = poll_like_the_judge(answers)
        answered = time.monotonic()
        product, outside = self._cgroups()
        time.sleep(max(0.0, JUDGE_INTERVAL_S - (time.monotonic() - answered)))
        startup = {"mode": "cold, as run-tests.sh", "tries": tries,
                   "answered_after_s": round(answered - started, 1),
                   "k6_after_s": round(time.monotonic() - started, 1)}
        return ContainerResources(product, outside), startup

    def cold_down(self) -> list[str]:
        """Remove both projects of a cold run; the foreground ``up`` ends with its containers."""
        problems = self.product.down()
        foreground = self.foreground
        if foreground is not None:
            try:
                foreground.wait(timeout=FOREGROUND_EXIT_S)
            except subprocess.TimeoutExpired:
                foreground.kill()
                foreground.wait()
                problems.append(f"docker compose up did not end within {FOREGROUND_EXIT_S} s of down: killed")
            self.foreground = None
        return problems + self.processors.down()

    def down(self) -> list[str]:
        """Remove both projects, bruto's first (it joins the processors' network); the problems met.

        A foreground ``up`` (a cold run's) ends with its containers.
        """
        problems = self.product.down()
        if self.foreground is not None:
            try:
                self.foreground.wait(timeout=FOREGROUND_EXIT_S)
            except subprocess.TimeoutExpired:
                self.foreground.kill()
                self.foreground.wait()
                problems.append(f"docker compose up did not end within {FOREGROUND_EXIT_S} s of down: killed")
            self.foreground = None
        return problems + self.processors.down()
