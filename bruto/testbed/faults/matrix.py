"""The fault matrix: one fault at a time, under load, on the supervised process stack.

    bruto-faults                      # every row, CI's compressed timings
    bruto-faults --soak               # every row, longer phases, more load
    bruto-faults --rows dispatcher-kill,processor-hang --json out.json

The world: two processor emulators, each behind a misbehaving-processor proxy
(bruto.testbed.faults.processor), and ``bruto-stack up`` (its supervisor, the
standby dispatcher) with the proxies as its processors. For each row:

1. the load runs (bruto.testbed.faults.load: keep-alive clients, 1.5 s
   timeout, fresh ids) and the official consistency probe asks every second;
2. after ``warm_s``, the fault is injected; ``fault_s`` later it is healed
   (a SIGCONT, the processor back to ``pass``; a killed process is brought
   back by the supervisor, nothing is done for it);
3. ``after_s`` later the load stops; the row waits, at most ``settle_s``, until
   every payment answered 202 is in bruto's ledger, bruto's summary equals
   both processors' own and ``bruto-stack status`` finds nothing wrong;
4. every id sent is looked up on both processors.

Meanwhile a watcher samples, every 100 ms, ``bruto-stack status`` and the
payments waiting (intake backlog plus outbox): the service is whole again
from the first sample after the fault's end from which every sample finds
the status clean and no more payments waiting than the most seen before the
fault (what is normally in flight at that load).

The row's figures: attempts and their outcomes, accepted (202), stored per
processor, doubled (stored by both), lost (accepted, stored by neither),
extra (stored, though its client got no 202), the probes' inconsistency sum,
and ``whole_after_s``: from the end of the fault (the kill, or the heal) to a
whole service (see above).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bruto.shm import snapshot
from bruto.testbed.emulator.control import Emulator
from bruto.testbed.faults.load import Load
from bruto.testbed.faults.load import Probe
from bruto.testbed.stack import cli
from bruto.testbed.stack import runner

LATE_S = 9.0  # past bruto's 7 s timeout floor (bruto.dispatcher.routing)


@dataclasses.dataclass(frozen=True)
class Timing:
    """One row's phases, in seconds."""

    warm_s: float = 2.0
    fault_s: float = 3.0
    stop_s: float = 10.0  # how long SIGSTOP holds the dispatcher
    after_s: float = 2.0
    settle_s: float = 90.0
    rate: float = 150.0
    clients: int = 30


CI = Timing()
SOAK = Timing(warm_s=10.0, fault_s=20.0, after_s=10.0, settle_s=180.0, rate=400.0, clients=200)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class World:
    """Emulators, their faulty proxies, and a supervised bruto stack between the load and them.

    Args:
        work_dir: Logs, the stack's run directory; the shared directory goes
            under /dev/shm unless ``shm_dir`` is given.
        stack_args: More arguments of ``bruto-stack up`` (``--limits``).
        env: ``BRUTO_*`` settings of the stack's processes (e.g. ``BRUTO_SHED_BACKLOG``).
    """

    def __init__(self, work_dir: Path, shm_dir: str | None = None, stack_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None):
        self.work_dir = Path(work_dir)
        self.stack_args = list(stack_args)
        self.env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.shm_dir = shm_dir or f"/dev/shm/bruto-faults-{os.getpid()}-{self.port}"
        self.run_dir = self.work_dir / "stack"
        self.emulators: dict[str, Emulator] = {}
        self.proxies: dict[str, tuple[subprocess.Popen, str, str]] = {}  # name: (process, url, control url)
        self.args: list[str] = []

    def start(self) -> "World":
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, fee in (("default", "0.05"), ("fallback", "0.15")):
                self.emulators[name] = Emulator.start(fee)
                port, control = free_port(), free_port()
                log = open(self.work_dir / f"proxy-{name}.log", "ab")
                process = subprocess.Popen(
                    [sys.executable, "-m", "bruto.testbed.faults.processor", "--port", str(port),
                     "--upstream", self.emulators[name].url, "--control-port", str(control), "--late-s", str(LATE_S)],
                    stdout=subprocess.PIPE, stderr=log, text=True)
                assert process.stdout is not None  # stdout=PIPE
                process.stdout.readline()  # it says where it listens once it does
                self.proxies[name] = (process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}")
            self.args = ["--run-dir", str(self.run_dir), "--shm-dir", self.shm_dir, "--port", str(self.port),
                         "--default-url", self.proxies["default"][1], "--fallback-url", self.proxies["fallback"][1]]
            saved = {name: os.environ.get(name) for name in self.env}
            os.environ.update(self.env)  # the supervisor, and so every process it starts, inherits them
            try:
                code = cli.main(["up"] + self.args + self.stack_args)
            finally:
                for name, value in saved.items():
                    if value is None:
                        os.environ.pop(name)
                    else:
                        os.environ[name] = value
            if code != 0:
                raise RuntimeError(f"bruto-stack up failed; see {self.run_dir}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.args:
            cli.main(["down", "--force"] + self.args)
        for process, _, _ in self.proxies.values():
            process.terminate()
            process.wait(10)
        for emulator in self.emulators.values():
            emulator.stop()

    # -- faults ----------------------------------------------------------------

    def set_mode(self, mode: str, processor: str = "default") -> None:
        requests.put(f"{self.proxies[processor][2]}/mode/{mode}", timeout=5).raise_for_status()

    def record(self, name: str) -> dict:
        return next(p for p in runner.Stack(self.run_dir).load_state()["processes"] if p["name"] == name)

    def active_dispatcher(self) -> int:
        return snapshot.read(self.shm_dir)["dispatcher"]["pid"]

    def restarts(self) -> dict[str, int]:
        return {p["name"]: p.get("restarts", 0) for p in runner.Stack(self.run_dir).load_state()["processes"]}

    # -- whole? ----------------------------------------------------------------

    def problems(self, accepted: int) -> list[str]:
        """What keeps the service from being whole, ``accepted`` payments past the baseline (nothing: it is)."""
        try:
            _, found = cli.inspect(runner.Stack(self.run_dir))
        except (runner.StackError, ValueError, OSError) as error:
            return [f"status: {error}"]
        if found:
            return found
        return summary_problems(self.url, self.emulators, self.baseline + accepted)

    baseline = 0  # payments confirmed before the row began


def summary_problems(bruto_url: str, processors: dict[str, Emulator], expected: int) -> list[str]:
    """Why bruto's summary is not whole: it differs from the processors' own, or counts fewer than ``expected``."""
    try:
        ours = requests.get(f"{bruto_url}/payments-summary", timeout=2).json()
        theirs = {name: emulator.admin_summary()["totalRequests"] for name, emulator in processors.items()}
    except (requests.RequestException, ValueError) as error:
        return [f"summary: {error}"]
    counted = ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"]
    if (ours["default"]["totalRequests"], ours["fallback"]["totalRequests"]) != (theirs["default"], theirs["fallback"]):
        return [f"bruto counts {ours['default']['totalRequests']}+{ours['fallback']['totalRequests']}, "
                f"the processors hold {theirs['default']}+{theirs['fallback']}"]
    if counted < expected:
        return [f"{expected - counted} accepted payments not confirmed yet"]
    return []


@dataclasses.dataclass(frozen=True)
class Row:
    """One fault: how to cause it and end it, and what its figures may show beside zeros.

    Attributes:
        name: Its id in the matrix.
        fault: What happens, in words.
        documented: What may be non-zero, and why; empty: every figure but
            accepted and stored is zero.
    """

    name: str
    fault: str
    documented: str = ""

    def inject(self, world: World, timing: Timing) -> float:
        """Cause the fault, wait out its window, end it; returns when it ended (time.monotonic())."""
        kind, _, target = self.name.partition("-")
        if kind == "processor":
            world.set_mode(target)
            time.sleep(timing.fault_s)
            world.set_mode("pass")
            return time.monotonic()
        if self.name == "dispatcher-stop":
            pid = world.active_dispatcher()
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(timing.stop_s)
            finally:
                os.kill(pid, signal.SIGCONT)
            return time.monotonic()
        if self.name == "dispatcher-kill":
            os.kill(world.active_dispatcher(), signal.SIGKILL)
        elif self.name == "worker-kill":
            master = world.record("api1")["pid"]
            workers = [pid for pid in runner.group_members(master) if pid != master]
            os.kill(workers[0], signal.SIGKILL)
        elif self.name == "master-kill":
            os.kill(world.record("api1")["pid"], signal.SIGKILL)
        elif self.name == "instance-kill":
            os.killpg(world.record("api1")["pid"], signal.SIGKILL)
        elif self.name == "balancer-kill":
            os.kill(world.record("balancer")["pid"], signal.SIGKILL)
        elif self.name != "none":
            raise ValueError(self.name)
        return time.monotonic()


ROWS = [
    Row("none", "no fault (the control row)"),
    Row("worker-kill", "SIGKILL of one gunicorn worker of api1 (its master starts another)",
        "failed: the requests that worker held (their connections reset)"),
    Row("master-kill", "SIGKILL of api1's gunicorn master alone (its workers leave; the supervisor starts api1)",
        "failed: requests on connections to api1 as its workers leave"),
    Row("instance-kill", "SIGKILL of api1's master and workers at once (the supervisor starts api1)",
        "failed: the requests held by api1 and its clients' connections"),
    Row("dispatcher-kill", "SIGKILL of the active dispatcher (the standby takes over; the supervisor starts a "
        "new standby)", "inconsistency: payments in flight at the kill, stored by the processor, are in bruto's "
        "ledger only once the new dispatcher has resolved them"),
    Row("dispatcher-stop", "SIGSTOP of the active dispatcher for 10 s, then SIGCONT (nothing restarts a "
        "stopped process: it holds the lock)", "inconsistency: payments in flight when it stopped, stored by the "
        "processor, are recorded once it runs again"),
    Row("balancer-kill", "SIGKILL of the balancer (the supervisor starts it; connections already handed over "
        "go on, they do not pass through it)", "failed: new connections refused until it is back"),
    Row("processor-hang", "default accepts every request and never answers (3 s), then answers again",
        "nothing stored while it hangs; the payments caught in it wait for their timeout and a lookup"),
    Row("processor-close", "default stores each payment and closes mid-answer (3 s)",
        "inconsistency: stored payments whose answer was cut are in the ledger once a lookup confirms them"),
    Row("processor-garbage", "default stores each payment and answers bytes that are not HTTP (3 s)",
        "inconsistency: as for close"),
    Row("processor-late", f"default stores each payment and answers 200 {LATE_S:g} s later, past bruto's "
        "timeout (3 s of requests)", "inconsistency: as for close, for longer (the timeout comes first)"),
    Row("processor-down", "default refuses connections (3 s), then accepts them again",
        "nothing stored while it is down: refused attempts are retried; inconsistency: payments whose "
        "connection was cut as it went down, after it stored them, are in the ledger once a lookup confirms them"),
]
ROW_NAMES = [row.name for row in ROWS]


class Watch:
    """Samples, every ``interval_s``, whether the stack is whole and how many payments wait (a thread).

    ``whole_since(t)``: the first sample at or after ``t`` from which every
    later sample found the stack whole (status clean, no more payments
    waiting than ``normal``); None if the last sample did not.
    """

    def __init__(self, world: World, interval_s: float = 0.1):
        self.world = world
        self.interval_s = interval_s
        self.samples: list[tuple[float, bool, int]] = []  # (monotonic time, status clean, payments waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Watch":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, after one last sample: the row stops the watch the moment it finds the
        service whole, and that moment must be in the samples whatever the period."""
        self._stop.set()
        self._thread.join()
        self._sample()

    def measure(self) -> tuple[bool, int]:
        """Now: whether ``bruto-stack status`` is clean, and how many payments wait."""
        try:
            clean = not cli.inspect(runner.Stack(self.world.run_dir))[1]
        except (runner.StackError, ValueError, OSError):
            clean = False
        return clean, cli.unsent_payments(self.world.shm_dir)

    def _sample(self) -> None:
        self.samples.append((time.monotonic(), *self.measure()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def waiting_before(self, t: float) -> int:
        return max((waiting for at, _, waiting in self.samples if at < t), default=0)

    def whole_since(self, t: float, normal: int) -> float | None:
        since = None
        for at, clean, waiting in self.samples:
            if at < t:
                continue
            if clean and waiting <= normal:
                since = at if since is None else since
            else:
                since = None
        return since


def run_row(world: World, row: Row, timing: Timing) -> dict:
    """Run one row on a world that is whole; its figures (see the module)."""
    world.baseline = sum(e.admin_summary()["totalRequests"] for e in world.emulators.values())
    restarts_before = world.restarts()
    default, fallback = world.emulators["default"].url, world.emulators["fallback"].url
    watch = Watch(world).start()
    probe = Probe(world.url, default, fallback).start()
    load = Load(world.url, timing.rate, timing.clients).start()
    try:
        time.sleep(timing.warm_s)
        injected = time.monotonic()
        ended = row.inject(world, timing)
        time.sleep(timing.after_s)
    finally:
        load.stop()
    accepted = load.accepted()
    deadline = ended + timing.settle_s
    while (problems := world.problems(len(accepted))) and time.monotonic() < deadline:
        time.sleep(0.2)
    watch.stop()
    settled = snapshot.read(world.shm_dir)
    # Whole again: clean status, and no more payments waiting than the most seen before the fault
    # (what is normally in flight at this load).
    normal = max(watch.waiting_before(injected), 1)
    since = watch.whole_since(ended, normal)
    whole_after_s = None if problems or since is None else round(max(0.0, since - ended), 1)
    for _ in range(2):  # the probe's last windows cover the end of the load
        time.sleep(1.0)
    probe.stop()
    stored = lookup_all(world, [a.correlation_id for a in load.attempts])
    restarts = {name: n - restarts_before.get(name, 0) for name, n in world.restarts().items()
                if n - restarts_before.get(name, 0)}
    return {
        "row": row.name,
        "fault": row.fault,
        "documented": row.documented,
        "attempts": len(load.attempts),
        "outcomes": load.outcomes(),
        **accounting(stored, set(accepted)),
        "inconsistency": sum(probe.values),
        "probes": len(probe.values),
        "probes_failed": probe.failures,
        "whole_after_s": whole_after_s,
        "not_whole": problems or ([] if since is not None else
                                  [f"sampled after the fault's end (s, status clean, payments waiting; normal "
                                   f"{normal}): {[(round(at - ended, 1), c, w) for at, c, w in watch.samples[-5:]]}; "
                                   f"then outbox {settled['outbox']}, intake backlog {settled['gateway']['backlog']}, "
                                   f"ledger {settled['ledger']['count']}"]),
        "restarts": restarts,
    }


def accounting(stored: dict[str, set[str]], accepted: set[str]) -> dict[str, int]:
    """From where each id is stored (:func:`lookup_ids`) and which were answered 202: accepted, stored
    per processor, doubled (by both), lost (accepted, stored by neither), extra (stored, not accepted)."""
    on = {name: {cid for cid, where in stored.items() if name in where} for name in ("default", "fallback")}
    return {
        "accepted": len(accepted),
        "stored_default": len(on["default"]),
        "stored_fallback": len(on["fallback"]),
        "doubled": len(on["default"] & on["fallback"]),
        "lost": len(accepted - on["default"] - on["fallback"]),
        "extra": len((on["default"] | on["fallback"]) - accepted),
    }


def lookup_all(world: World, ids: list[str]) -> dict[str, set[str]]:
    """Which processors (asked directly, not through the proxies) hold each id."""
    return lookup_ids(world.emulators, ids)


def lookup_ids(processors: dict[str, Emulator], ids: list[str]) -> dict[str, set[str]]:
    """Which of ``processors`` hold each id."""
    def where(correlation_id: str) -> tuple[str, set[str]]:
        return correlation_id, {name for name, emulator in processors.items()
                                if emulator.get_payment(correlation_id) is not None}

    with ThreadPoolExecutor(16) as pool:
        return dict(pool.map(where, ids))


def table(results: list[dict]) -> str:
    """The matrix as a Markdown table."""
    lines = ["| fault | attempts | accepted | failed | stored default | stored fallback | doubled | lost | extra "
             "| inconsistency (probes) | whole after (s) | restarted |",
             "| -- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | -- |"]
    for r in results:
        failed = r["attempts"] - r["accepted"]
        restarted = ", ".join(f"{name} {n}" for name, n in r["restarts"].items()) or "-"
        whole = r["whole_after_s"] if r["whole_after_s"] is not None else "not whole"
        lines.append(f"| {r['row']} | {r['attempts']} | {r['accepted']} | {failed} | {r['stored_default']} "
                     f"| {r['stored_fallback']} | {r['doubled']} | {r['lost']} | {r['extra']} "
                     f"| {r['inconsistency']} ({r['probes']}, {r['probes_failed']} failed) | {whole} | {restarted} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-faults", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROW_NAMES), help=f"comma-separated, of: {', '.join(ROW_NAMES)}")
    parser.add_argument("--soak", action="store_true", help="longer phases and more load (the testbed's soak)")
    parser.add_argument("--repeat", type=int, default=1, help="run the rows this many times")
    parser.add_argument("--json", help="write every row's figures here")
    parser.add_argument("--work-dir", help="logs and the stack's run directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    names = args.rows.split(",")
    unknown = [name for name in names if name not in ROW_NAMES]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    timing = SOAK if args.soak else CI
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bruto-faults-"))
    world = World(work_dir).start()
    results = []
    try:
        for _ in range(args.repeat):
            for name in names:
                result = run_row(world, ROWS[ROW_NAMES.index(name)], timing)
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    finally:
        world.stop()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"timing": dataclasses.asdict(timing), "rows": results}, indent=1))
    return 0 if all(r["lost"] == 0 and r["doubled"] == 0 and r["whole_after_s"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
