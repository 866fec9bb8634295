"""Overload: four times the official load, then a burst far above capacity, on the supervised stack.

    bruto-overload                          # the figures: k6 at 2,200 VUs, then a 30 s burst
    bruto-overload --no-k6 --burst-s 10     # the burst alone
    bruto-overload --slow-clients-s 15      # first, paced load without and beside 320 slow clients

The world is the fault matrix's (bruto.testbed.faults.matrix.World: the
supervised ``bruto-stack``, ``--limits`` by default, its processors the
emulators behind pass-through proxies). Two phases, each checked the same way:

1. **4x the official load**: rinha.js (the official test, through
   bruto.testbed.bench.run.run_k6) with ``MAX_REQUESTS=2200``: its stages
   (delays, failures) and its consistency probe, at four times the virtual
   users the challenge plans for.
2. **A burst**: ``--burst-clients`` keep-alive clients, each sending again as
   soon as it is answered (no pacing), for ``--burst-s``, with both processors
   slowed to ``--burst-delay-ms`` (so the dispatcher confirms far fewer
   payments per second than arrive); then the processors are healed and the
   official-like paced load (the matrix's) runs ``--recover-s`` more.

After each phase the world settles: bruto's summary must equal both
processors' admin summaries, with nothing waiting and ``bruto-stack status``
clean. The figures: outcomes (202, 503 and how many carried Retry-After,
timeouts...), bruto's own count of shed payments, what the processors
stored, the restarts the supervisor made (a crash is one), and for the burst,
per id: lost (202, stored nowhere), doubled, extra (stored without a 202:
its client gave up first, the 1.5 s timeout), stored though answered 503;
for the paced load after it: the first second from which every payment got
202 again, and latency percentiles before the burst and once recovered.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bruto.shm import snapshot
from bruto.testbed.bench.run import machine
from bruto.testbed.bench.run import machine_busy_seconds
from bruto.testbed.bench.run import run_k6
from bruto.testbed.bench.score import score
from bruto.testbed.faults.load import Load
from bruto.testbed.faults.matrix import CI
from bruto.testbed.faults.matrix import World
from bruto.testbed.faults.matrix import accounting
from bruto.testbed.faults.matrix import lookup_all
from bruto.testbed.slowloris import SlowClients


@dataclasses.dataclass(frozen=True)
class Burst:
    """The burst phase, in seconds and clients."""

    warm_s: float = 5.0  # paced load before the burst: latency as normal
    burst_s: float = 30.0
    clients: int = 200
    delay_ms: int = 1000  # both processors' delay during the burst
    recover_s: float = 20.0
    settle_s: float = 300.0
    sheds_enough: int = 0  # > 0: end the burst once this many 503s came back (CI)


FIGURES = Burst()


def shed_count(world: World) -> int:
    """Payments bruto answered 503 because too many waited (its own counter, every worker's slot)."""
    return snapshot.read(world.shm_dir)["gateway"]["rejections"]["overloaded"]


def settle(world: World, accepted: int, deadline_s: float) -> list[str]:
    """Wait until the stack is whole and confirmed ``accepted`` more than its baseline; what is still wrong."""
    deadline = time.monotonic() + deadline_s
    while (problems := world.problems(accepted)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return problems


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    """p50 and p99 in milliseconds (None without samples)."""
    if len(latencies) < 2:
        return {"p50_ms": None, "p99_ms": None}
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1)}


def outcomes(load: Load) -> dict:
    """What came back, and how many 503s said when to retry."""
    shed = [a for a in load.attempts if a.outcome == "503"]
    return {"attempts": len(load.attempts), "outcomes": load.outcomes(),
            "503_with_retry_after": sum(1 for a in shed if a.retry_after)}


def restarts_since(world: World, before: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in world.restarts().items() if n != before.get(name, 0)}


def k6_phase(world: World, out_dir: Path, vus: int, settle_s: float) -> dict:
    """rinha.js at ``vus`` virtual users; its score and the accounting after it."""
    restarts, shed = world.restarts(), shed_count(world)
    emulators = world.emulators
    busy = machine_busy_seconds()
    summary = run_k6(out_dir, f"k6-{vus}", world.url, emulators["default"].url, emulators["fallback"].url, vus)
    result = score(summary)
    # rinha.js purged bruto and both processors first: what they hold is this phase's.
    world.baseline = 0
    problems = settle(world, int(result["payments_ok"]), settle_s)
    stored = {name: emulator.admin_summary()["totalRequests"] for name, emulator in emulators.items()}
    return {
        "vus": vus,
        "accepted": int(result["payments_ok"]),
        "failed": int(result["failures"]),
        "p99_ms": result["p99"],
        "inconsistencies": result["inconsistencies"],
        "lag_at_teardown": result["lag"],
        "shed": shed_count(world) - shed,
        "stored_default": stored["default"],
        "stored_fallback": stored["fallback"],
        "not_whole": problems,
        "restarts": restarts_since(world, restarts),
        "machine_busy_s": round(machine_busy_seconds() - busy, 1),
        "k6_cpu_s": summary["cpu"]["k6_seconds"],
    }


def burst_phase(world: World, burst: Burst) -> dict:
    """The burst on slowed processors, then paced load on healed ones; the accounting per id."""
    restarts, shed = world.restarts(), shed_count(world)
    world.baseline = sum(e.admin_summary()["totalRequests"] for e in world.emulators.values())
    warm = Load(world.url, CI.rate, CI.clients).start()
    time.sleep(burst.warm_s)
    warm.stop()
    for emulator in world.emulators.values():
        emulator.set_delay(burst.delay_ms)
    flood = Load(world.url, math.inf, burst.clients).start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < burst.burst_s:
            time.sleep(0.2)
            if burst.sheds_enough and flood.outcomes().get("503", 0) >= burst.sheds_enough:
                break
    finally:
        flood.stop()
        for emulator in world.emulators.values():
            emulator.set_delay(0)
    burst_ended = time.monotonic()
    after = Load(world.url, CI.rate, CI.clients).start()
    time.sleep(burst.recover_s)
    after.stop()
    loads = (warm, flood, after)
    accepted = {cid for load in loads for cid in load.accepted()}
    refused = {a.correlation_id for load in loads for a in load.attempts if a.outcome == "503"}
    problems = settle(world, len(accepted), burst.settle_s)
    stored = lookup_all(world, [a.correlation_id for load in loads for a in load.attempts])
    recovered_s = all_accepted_since(after)
    recovered = [a.latency_s for a in after.attempts if recovered_s is not None
                 and a.sent_at >= after.attempts[0].sent_at + recovered_s]
    return {
        "burst": dataclasses.asdict(burst),
        "burst_s_run": round(burst_ended - started, 1),
        "warm": outcomes(warm) | percentiles([a.latency_s for a in warm.attempts]),
        "flood": outcomes(flood) | percentiles([a.latency_s for a in flood.attempts]),
        "after": outcomes(after) | percentiles([a.latency_s for a in after.attempts]),
        "recovered": percentiles(recovered),
        "all_202_from_s": recovered_s,
        "shed": shed_count(world) - shed,
        **accounting(stored, accepted),
        "stored_though_503": sum(1 for cid in refused if stored.get(cid)),
        "not_whole": problems,
        "restarts": restarts_since(world, restarts),
    }


def slow_clients_phase(world: World, seconds: float) -> dict:
    """The paced load alone, then beside 320 slow connections (bruto.testbed.slowloris): its latency both ways."""
    restarts = world.restarts()
    world.baseline = sum(e.admin_summary()["totalRequests"] for e in world.emulators.values())
    alone = Load(world.url, CI.rate, CI.clients).start()
    time.sleep(seconds)
    alone.stop()
    with SlowClients("127.0.0.1", world.port) as slow:
        beside = Load(world.url, CI.rate, CI.clients).start()
        time.sleep(seconds)
        beside.stop()
        held = slow.open
    accepted = {cid for load in (alone, beside) for cid in load.accepted()}
    problems = settle(world, len(accepted), FIGURES.settle_s)
    stored = lookup_all(world, [a.correlation_id for load in (alone, beside) for a in load.attempts])
    return {
        "alone": outcomes(alone) | percentiles([a.latency_s for a in alone.attempts]),
        "beside_slow_clients": outcomes(beside) | percentiles([a.latency_s for a in beside.attempts]),
        "slow_connections": dict(slow.counts),
        "slow_connections_still_open": held,
        **accounting(stored, accepted),
        "not_whole": problems,
        "restarts": restarts_since(world, restarts),
    }


def all_accepted_since(load: Load) -> float | None:
    """Seconds into ``load`` (which starts as the burst ends) from which every payment got 202; None if never."""
    if not load.attempts:
        return None
    first = load.attempts[0].sent_at
    since = None
    for attempt in sorted(load.attempts, key=lambda a: a.sent_at):
        if attempt.outcome != "202":
            since = None
        elif since is None:
            since = attempt.sent_at - first
    return None if since is None else round(since, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-overload", description=__doc__.splitlines()[0])
    parser.add_argument("--vus", type=int, default=2200, help="rinha.js MAX_REQUESTS (default: 4x 550)")
    parser.add_argument("--no-k6", action="store_true", help="skip the rinha.js phase")
    parser.add_argument("--burst-s", type=float, default=FIGURES.burst_s)
    parser.add_argument("--burst-clients", type=int, default=FIGURES.clients)
    parser.add_argument("--burst-delay-ms", type=int, default=FIGURES.delay_ms)
    parser.add_argument("--recover-s", type=float, default=FIGURES.recover_s)
    parser.add_argument("--slow-clients-s", type=float, default=0.0,
                        help="first, this long paced load alone and as long beside 320 slow connections")
    parser.add_argument("--no-limits", action="store_true", help="do not confine the stack (bruto-stack --limits)")
    parser.add_argument("--shed-backlog", type=int, help="BRUTO_SHED_BACKLOG of the stack (default: bruto's)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--work-dir", help="logs, k6's summary, the stack's run directory")
    args = parser.parse_args(argv)
    burst = dataclasses.replace(FIGURES, burst_s=args.burst_s, clients=args.burst_clients,
                                delay_ms=args.burst_delay_ms, recover_s=args.recover_s)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="bruto-overload-"))
    env = {} if args.shed_backlog is None else {"BRUTO_SHED_BACKLOG": str(args.shed_backlog)}
    world = World(work_dir, stack_args=() if args.no_limits else ("--limits",), env=env).start()
    figures: dict = {"limits": not args.no_limits, "env": env}
    try:
        if args.slow_clients_s:
            figures["slow_clients"] = slow_clients_phase(world, args.slow_clients_s)
            print(json.dumps({"slow_clients": figures["slow_clients"]}), flush=True)
        if not args.no_k6:
            figures["k6"] = k6_phase(world, work_dir, args.vus, burst.settle_s)
            print(json.dumps({"k6": figures["k6"]}), flush=True)
        figures["burst"] = burst_phase(world, burst)
    finally:
        world.stop()
    figures["machine"] = machine()
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    phases = [figures[name] for name in ("slow_clients", "k6", "burst") if name in figures]
    kept = all(not p["not_whole"] and not p["restarts"] for p in phases)
    burst_figures = figures["burst"]
    zeros = ("lost", "doubled", "stored_though_503")
    return 0 if kept and not any(burst_figures[name] for name in zeros) else 1


if __name__ == "__main__":
    sys.exit(main())
