"""Faults on the compose stack: a container dies under light load; what Docker's restart policy brings back.

    bruto-quiet bruto-compose-faults --json out.json          # every row
    bruto-compose-faults --rows dispatcher-crash,api1-crash

docker-compose.yml runs every container with ``restart: unless-stopped`` and
nothing else watches them (no health checks, no standby dispatcher). The
world: docker-compose.processors.yml (two emulators on 127.0.0.1:8001/8002)
and docker-compose.yml as project ``-p bruto13`` (bruto.testbed.bench.compose
brings both up and down), bruto on :9999 (the compose file publishes it: run
this alone, under ``bruto-quiet``). Two ways a container dies, per service:

- ``<service>-crash``: SIGKILL of the container's main process, from the
  host, as an out-of-memory kill or a crash would end it;
- ``<service>-docker-kill``: ``docker kill`` (SIGKILL through Docker). Docker
  counts that as stopped by hand: if it does not restart the container
  within ``back_s``, the row says so and starts it (``docker start``) to go on.

For each row, under the fault matrix's paced load and its consistency probe:
accepted, stored per processor, doubled, lost, extra (per id, on the
processors), the probe's inconsistency, whether Docker restarted the
container and after how long, ``whole_after_s``: from the kill until the
container runs again and every payment answered 202 while it was down has
reached a processor (the requestedAt the processor holds is when bruto sent
it), and ``settled_after_load_s``: from the end of the load until bruto's
summary equals both processors' and counts every payment answered 202.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bruto.testbed.bench.compose import PRODUCT_FILE
from bruto.testbed.bench.compose import Compose
from bruto.testbed.bench.compose import ComposeBench
from bruto.testbed.bench.compose import default_compose_dir
from bruto.testbed.bench.compose import wait_ready
from bruto.testbed.emulator.control import FALLBACK_FEE
from bruto.testbed.emulator.control import Emulator
from bruto.testbed.faults.load import Load
from bruto.testbed.faults.load import Probe
from bruto.testbed.faults.matrix import accounting
from bruto.testbed.faults.matrix import lookup_ids
from bruto.testbed.faults.matrix import summary_problems
from bruto.timefmt import parse_iso

PROJECT = "bruto13"
URL = "http://127.0.0.1:9999"
SERVICES = ("dispatcher", "api1", "balancer")
ROW_NAMES = [f"{service}-{how}" for service in SERVICES for how in ("crash", "docker-kill")]


@dataclasses.dataclass(frozen=True)
class Timing:
    """One row's phases, in seconds, and its load."""

    warm_s: float = 3.0
    back_s: float = 30.0  # how long Docker may take to restart the container
    after_s: float = 5.0  # load after the container is back
    settle_s: float = 90.0
    rate: float = 100.0
    clients: int = 20


def inspect(container: str, template: str) -> str:
    return subprocess.run(["docker", "inspect", "--format", template, container], capture_output=True, text=True,
                          check=True).stdout.strip()


def state(container: str) -> tuple[bool, int, int]:
    """(running, restart count, main process's PID on the host)."""
    running, restarts, pid = inspect(container, "{{.State.Running}} {{.RestartCount}} {{.State.Pid}}").split()
    return running == "true", int(restarts), int(pid)


class ComposeWorld:
    """The processors' compose project and bruto's (``-p bruto13``), up; admin clients for the processors."""

    def __init__(self, log: Path, directory: Path | None = None):
        self.bench = ComposeBench(directory or default_compose_dir(), log)
        self.bench.product = Compose(self.bench.directory, PRODUCT_FILE, log, project=PROJECT)
        self.processors = {"default": Emulator.at("http://127.0.0.1:8001"),
                           "fallback": Emulator.at("http://127.0.0.1:8002", FALLBACK_FEE)}
        self.containers: dict[str, str] = {}

    def start(self) -> "ComposeWorld":
        try:
            self.bench.processors_up()
            for processor in self.processors.values():
                processor.purge()
            self.bench.product.run("up", "-d")
            wait_ready(URL)
            self.containers = self.bench.product.containers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> list[str]:
        return self.bench.down()


def kill(container: str, how: str) -> None:
    if how == "docker-kill":
        subprocess.run(["docker", "kill", container], capture_output=True, check=True)
    else:
        os.kill(state(container)[2], signal.SIGKILL)


def run_row(world: ComposeWorld, name: str, timing: Timing) -> dict:
    """One container killed under load; its figures (see the module)."""
    service, _, how = name.partition("-")
    container = world.containers[service]
    baseline = sum(p.admin_summary()["totalRequests"] for p in world.processors.values())
    restarts_before = state(container)[1]
    probe = Probe(URL, world.processors["default"].url, world.processors["fallback"].url).start()
    load = Load(URL, timing.rate, timing.clients).start()
    started_by_hand = False
    try:
        time.sleep(timing.warm_s)
        killed = time.monotonic()
        kill(container, how)
        while True:
            running, restarts, _ = state(container)
            if running and restarts > restarts_before:
                back = time.monotonic()
                break
            if time.monotonic() - killed > timing.back_s:
                subprocess.run(["docker", "start", container], capture_output=True, check=True)
                started_by_hand, back = True, time.monotonic()
                break
            time.sleep(0.1)
        time.sleep(timing.after_s)
    finally:
        load.stop()
    load_ended = time.monotonic()
    accepted = load.accepted()
    deadline = time.monotonic() + timing.settle_s
    while (problems := summary_problems(URL, world.processors, baseline + len(accepted))) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    whole = time.monotonic()
    time.sleep(2.0)  # the probe's last windows cover the end of the load
    probe.stop()
    stored = lookup_ids(world.processors, [a.correlation_id for a in load.attempts])
    # Whole: the container runs again and every payment accepted while it was down has reached a
    # processor (its requestedAt there is when bruto sent it, on this host's clock).
    kill_at = time.time() - (time.monotonic() - killed)
    back_at = kill_at + (back - killed)
    meanwhile = [a for a in load.attempts if a.outcome == "202" and kill_at <= a.sent_at <= back_at]
    forwarded = [forwarded_at(world, a.correlation_id, stored) for a in meanwhile if stored.get(a.correlation_id)]
    whole_at = max([back - killed, *(at - kill_at for at in forwarded)])
    return {
        "row": name,
        "attempts": len(load.attempts),
        "outcomes": load.outcomes(),
        **accounting(stored, set(accepted)),
        "inconsistency": sum(probe.values),
        "probes": len(probe.values),
        "probes_failed": probe.failures,
        "restarted_by_docker": not started_by_hand,
        "back_after_s": round(back - killed, 1),
        "whole_after_s": None if problems else round(whole_at, 1),
        "settled_after_load_s": round(whole - load_ended, 1),
        "not_whole": problems,
        "docker_restart_count": state(container)[1] - restarts_before,
    }


def forwarded_at(world: ComposeWorld, correlation_id: str, stored: dict[str, set[str]]) -> float:
    """When bruto sent a stored payment: the requestedAt its processor holds, in epoch seconds."""
    processor = world.processors[next(iter(stored[correlation_id]))]
    payment = processor.get_payment(correlation_id)
    if payment is None:
        raise LookupError(f"{correlation_id} is stored, but its processor does not have it")
    return parse_iso(payment["requestedAt"]) / 1e6


def table(results: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = ["| fault | attempts | accepted | failed | stored default | stored fallback | doubled | lost | extra "
             "| inconsistency (probes) | restarted by Docker | back after (s) | whole after (s) | settled after the load (s) |",
             "| -- | --: | --: | --: | --: | --: | --: | --: | --: | --: | -- | --: | --: | --: |"]
    for r in results:
        restarted = "yes" if r["restarted_by_docker"] else "no (docker start)"
        whole = r["whole_after_s"] if r["whole_after_s"] is not None else "not whole"
        lines.append(f"| {r['row']} | {r['attempts']} | {r['accepted']} | {r['attempts'] - r['accepted']} "
                     f"| {r['stored_default']} | {r['stored_fallback']} | {r['doubled']} | {r['lost']} "
                     f"| {r['extra']} | {r['inconsistency']} ({r['probes']}) | {restarted} "
                     f"| {r['back_after_s']} | {whole} | {r['settled_after_load_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-compose-faults", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help=f"comma-separated, of: {', '.join(ROW_NAMES)}")
    parser.add_argument("--json", help="write every row's figures here")
    parser.add_argument("--work-dir", help="docker's output (default: a new temporary directory)")
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    if unknown := [name for name in names if name not in ROW_NAMES]:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bruto-compose-faults-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    world = ComposeWorld(work_dir / "docker.log").start()
    results = []
    try:
        for name in names:
            results.append(run_row(world, name, Timing()))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    finally:
        for problem in world.stop():
            print(f"compose: {problem}", file=sys.stderr)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"timing": dataclasses.asdict(Timing()), "rows": results}, indent=1))
    return 0 if all(r["lost"] == r["doubled"] == 0 and r["whole_after_s"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
