"""The stack's supervisor: starts every service, then restarts any that dies.

``bruto-stack up`` writes the services to ``<run dir>/services.json`` and
starts this module as a process of its own session (``bruto-stack-supervisor``
in ``state.json``), which outlives the command:

1. It starts the services in order, each answering before the next (what
   ``Stack.up`` does), so every process of the stack is its child: it learns of
   a death at once (its exit status, never a guess from a reused PID).
2. It then watches them every ``WATCH_S``. A service whose process exited is
   started again after a backoff: ``FIRST_BACKOFF_S``, doubling on each
   restart up to ``MAX_BACKOFF_S``, back to the first once the process has
   stayed up for ``STABLE_S`` (a service that cannot start does not spin).
   ``state.json`` is rewritten with the new PID and the service's restart
   count, so ``status`` and ``down`` always see the processes that run.
3. On SIGTERM (``down`` sends it first) it exits and leaves the services
   running: ``down`` stops them from ``state.json``, whether the supervisor is
   alive or not.

What it does not do: it restarts what exited, not what hangs (a SIGSTOPped or
deadlocked process is alive to it), and nothing restarts the supervisor
itself; ``status`` then reports it not running and exits 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from bruto.testbed.stack.runner import SUPERVISOR as NAME
from bruto.testbed.stack.runner import Service
from bruto.testbed.stack.runner import Stack
from bruto.testbed.stack.runner import StackError
from bruto.testbed.stack.runner import start_time

log = logging.getLogger("bruto.testbed.stack.supervisor")

SERVICES_FILE = "services.json"
WATCH_S = 0.1
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_S = 30.0


def write_plan(stack: Stack) -> None:
    """What the supervisor will start (``stack``'s services, limits, directories), for ``bruto-stack up``."""
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    plan = {"services": [service.to_json() for service in stack.services], "limits": stack.limits,
            "scratch_dirs": stack.scratch_dirs, "notes": stack.notes}
    (stack.run_dir / SERVICES_FILE).write_text(json.dumps(plan, indent=1))


def read_plan(run_dir: Path) -> Stack:
    plan = json.loads((run_dir / SERVICES_FILE).read_text())
    limits = {name: tuple(value) for name, value in plan["limits"].items()} if plan["limits"] else None
    return Stack(run_dir, [Service.from_json(s) for s in plan["services"]], limits=limits,
                 scratch_dirs=plan["scratch_dirs"], notes=plan["notes"])


def backoff(restarts_in_a_row: int) -> float:
    """Seconds to wait before restarting a service that has just died for the n-th time in a row (n >= 1)."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (restarts_in_a_row - 1))


class Supervisor:
    """Keeps every service of ``stack`` running (see the module).

    Args:
        stack: The stack to start and watch; its services in start order.
    """

    def __init__(self, stack: Stack):
        self.stack = stack
        self.services = {service.name: service for service in stack.services}
        self.stopping = False
        self._in_a_row: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def start(self) -> dict:
        """Start every service (``Stack.up``) and record this process; returns the state."""
        state = self.stack.up()
        state["processes"].append({
            "name": NAME, "pid": os.getpid(), "start_time": start_time(os.getpid()),
            "argv": sys.orig_argv, "log": str(self.stack.run_dir / f"{NAME}.log"), "ready": ["alive", 0],
            "limited": False,
        })
        state["supervised"] = True
        self.stack._save(state)
        return state

    def watch(self) -> None:
        """Restart what exits, until SIGTERM."""
        while not self.stopping:
            self.pass_once(time.monotonic())
            time.sleep(WATCH_S)

    def pass_once(self, now: float) -> None:
        """One look at every service: note the deaths, restart those whose backoff is over."""
        state = self.stack.load_state()
        changed = False
        for index, record in enumerate(state["processes"]):
            name = record["name"]
            if name not in self.services or self.stack._exit_status(record["pid"]) is None:
                continue
            if name not in self._due:
                status = self.stack._exit_status(record["pid"])
                lived = time.time() - record.get("started_at", 0)
                self._in_a_row[name] = 1 if lived >= STABLE_S else self._in_a_row.get(name, 0) + 1
                self._due[name] = now + backoff(self._in_a_row[name])
                log.warning("%s (pid %d) exited with status %s after %.1f s; restarting in %.1f s",
                            name, record["pid"], status, lived, self._due[name] - now)
                continue
            if now < self._due[name]:
                continue
            del self._due[name]
            fresh = self.stack._start(self.services[name], state["cgroups"])
            fresh["restarts"] = record.get("restarts", 0) + 1
            state["processes"][index] = fresh
            changed = True
            log.warning("%s restarted: pid %d (restart %d)", name, fresh["pid"], fresh["restarts"])
        if changed:
            self.stack._save(state)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bruto.testbed.stack.supervisor RUN_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    supervisor = Supervisor(read_plan(Path(args[0])))

    def stop(*_):
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        supervisor.start()
    except StackError as error:
        log.error("%s", error)
        return 1
    log.info("every service is up; watching them")
    supervisor.watch()
    log.info("stopping: the services keep running until `bruto-stack down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
