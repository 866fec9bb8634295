"""``bruto-stack up|stop|down|status``: the local bruto stack, as plain processes.

``up`` starts the compose file's topology (bruto.testbed.stack.services),
each service answering before the next starts, under a supervisor that stays
behind and restarts any process that dies, with backoff, plus a standby
dispatcher that takes over through the dispatcher lock the moment the active
one dies (bruto.testbed.stack.supervisor; ``--no-supervise`` for neither).
On a shared directory an earlier stack left, it continues from what that
holds (the ledger, and payments accepted but not sent yet, which it sends).
``stop`` stops exactly what ``up`` started and keeps the shared directory.
``down`` stops the same and deletes the shared directory a stack created
(the ledger with it), unless that still holds accepted payments not sent
yet: then it keeps it, says so and exits 1 (``--force`` deletes it anyway).
``status`` shows what runs, with the dispatchers named by role (the one
holding the dispatcher lock is ``dispatcher``, the other
``dispatcher-standby``), and exits 1 when a process is not running or not
answering, or no dispatcher holds the lock. ``--limits`` confines bruto's
processes as the compose file does.

The processors: ``--default-url`` and ``--fallback-url`` (or
``BRUTO_DEFAULT_URL`` and ``BRUTO_FALLBACK_URL``), both or neither; with
neither, two local emulators are started. The shared directory is
``BRUTO_SHM_DIR`` (``/dev/shm/bruto`` by default), the one ``bruto-shm``
reads without a flag. ``--prometheus`` adds Debian's Prometheus, scraping
bruto's GET /metrics on a free port of 127.0.0.1 (``--prometheus-port``),
outside the limits.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from bruto.config import env_name
from bruto.config import settings_or_exit
from bruto.shm import snapshot
from bruto.shm.region import RegionError
from bruto.testbed.stack import supervisor
from bruto.testbed.stack.runner import SCRATCH_MARK
from bruto.testbed.stack.runner import Stack
from bruto.testbed.stack.runner import StackError
from bruto.testbed.stack.services import BALANCERS
from bruto.testbed.stack.services import SERVICE_LIMITS
from bruto.testbed.stack.services import bruto_services
from bruto.testbed.stack.services import emulator_services
from bruto.testbed.stack.services import prometheus_service

DEFAULT_RUN_DIR = "/tmp/bruto-stack"

# How a message names a command: as bruto-stack's, or as the Makefile's (``--via-make``), whichever the
# reader typed.
COMMANDS = {
    "bruto-stack": {"up": "bruto-stack up", "stop": "bruto-stack stop", "down": "bruto-stack down",
                    "force": "bruto-stack down --force"},
    "make": {"up": "make up", "stop": "make stop", "down": "make down", "force": "make down FORCE=1"},
}


def build_stack(args: argparse.Namespace) -> Stack:
    run_dir = Path(args.run_dir).resolve()
    services = []
    default_url, fallback_url = args.default_url, args.fallback_url
    if not default_url and not fallback_url:
        default_port, fallback_port = args.emulator_ports
        services += emulator_services(default_port, fallback_port)
        default_url = f"http://127.0.0.1:{default_port}"
        fallback_url = f"http://127.0.0.1:{fallback_port}"
    elif not default_url or not fallback_url:
        given, missing = ("default", "fallback") if default_url else ("fallback", "default")
        raise StackError(f"a {given} processor URL was given but no {missing} one: give both "
                         f"(--default-url and --fallback-url, or {env_name('default_url')} and "
                         f"{env_name('fallback_url')}), or neither to start local emulators")
    services += bruto_services(run_dir, args.shm_dir, default_url, fallback_url, args.port, args.workers,
                               args.balancer, standby=not args.no_standby and not args.no_supervise)
    if args.prometheus:
        args.prometheus_port = args.prometheus_port or free_port()
        services.append(prometheus_service(run_dir, args.port, args.prometheus_port, args.prometheus_interval))
    return Stack(run_dir, services, limits=SERVICE_LIMITS if args.limits else None, scratch_dirs=[args.shm_dir],
                 notes={"shm_dir": args.shm_dir})


def up_supervised(stack: Stack, commands: dict[str, str]) -> dict:
    """Start the supervisor (bruto.testbed.stack.supervisor), which starts the stack; its state once up.

    Raises:
        StackError: a stack runs already, or the supervisor could not start
            every service (the message has its log's tail).
    """
    if stack.state_file.exists() and any(stack.alive(p) for p in stack.load_state()["processes"]):
        raise StackError(f"a stack is already running from {stack.run_dir}; `{commands['stop']}` or "
                         f"`{commands['down']}` first")
    supervisor.write_plan(stack)
    log_path = stack.run_dir / f"{supervisor.NAME}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "bruto.testbed.stack.supervisor", str(stack.run_dir)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    while True:
        if process.poll() is not None:
            with open(log_path, "rb") as log:
                log.seek(offset)
                told = log.read().decode(errors="replace").strip()
            raise StackError(f"the supervisor could not start the stack:\n{told}")
        if stack.state_file.exists():
            try:
                state = stack.load_state()
            except ValueError:  # a write in progress elsewhere; os.replace makes that rare
                state = {}
            if state.get("supervised"):
                return state
        time.sleep(0.05)


def unsent_payments(shm_dir: str) -> int:
    """Payments accepted (answered 2XX) and not confirmed yet: intake backlog plus the outbox; 0 if no regions."""
    return (held_payments(shm_dir) or {"unsent": 0})["unsent"]


def annotate_dispatchers(rows: list[dict], shm_dir: str | None) -> str | None:
    """Name the dispatchers by role; why none holds the lock, if so.

    The one holding the dispatcher lock is ``dispatcher`` (``answers=active``),
    the other ``dispatcher-standby`` (``answers=standby``), whichever service
    started it: after a failover the two services' roles are swapped, and a
    row named for where a process was started would call the active one the
    standby.
    """
    dispatchers = [row for row in rows if row["name"].startswith("dispatcher")]
    if not dispatchers or shm_dir is None:
        return None
    try:
        held = snapshot.read(shm_dir)["dispatcher"]
    except RegionError as error:
        return f"cannot read the shared directory: {error}"
    active = [row for row in dispatchers if row["alive"] and held["alive"] and row["pid"] == held["pid"]]
    for row in dispatchers:
        if row["alive"]:
            row["answers"] = "active" if row in active else "standby"
    if active and len(dispatchers) == 2:
        standby = next(row for row in dispatchers if row is not active[0])
        active[0]["name"], standby["name"] = "dispatcher", "dispatcher-standby"
        # The active one first, as the stack starts them.
        first, second = sorted(rows.index(row) for row in dispatchers)
        rows[first], rows[second] = active[0], standby
    return None if held["alive"] else "no dispatcher holds the dispatcher lock"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_ports(text: str) -> tuple[int, int]:
    default, fallback = text.split(",")
    return int(default), int(fallback)


def main(argv: list[str] | None = None) -> int:
    settings = settings_or_exit("bruto-stack")
    parser = argparse.ArgumentParser(prog="bruto-stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "stop", "down", "status"])
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help="logs, sockets, state (default %(default)s)")
    parser.add_argument("--shm-dir", default=settings.shm_dir,
                        help="the shared directory (default: BRUTO_SHM_DIR, or %(default)s)")
    parser.add_argument("--limits", action="store_true", help="confine bruto in cgroups: 1.5 CPU, 350 MB")
    parser.add_argument("--default-url", default=os.environ.get(env_name("default_url")),
                        help="an existing default processor (default: BRUTO_DEFAULT_URL; "
                             "with no processor URL, emulators are started)")
    parser.add_argument("--fallback-url", default=os.environ.get(env_name("fallback_url")),
                        help="an existing fallback processor (default: BRUTO_FALLBACK_URL)")
    parser.add_argument("--port", type=int, default=9999, help="the balancer's port (default %(default)s)")
    parser.add_argument("--emulator-ports", type=parse_ports, default=(8001, 8002), metavar="D,F",
                        help="ports of the emulators (default 8001,8002)")
    parser.add_argument("--workers", type=int, default=settings.workers,
                        help="gunicorn workers per instance (default: BRUTO_WORKERS, or %(default)s)")
    parser.add_argument("--balancer", choices=BALANCERS, default=BALANCERS[0],
                        help="load balancer on --port (default %(default)s)")
    parser.add_argument("--prometheus", action="store_true",
                        help="also start Prometheus (Debian's package), scraping GET /metrics, outside the limits")
    parser.add_argument("--prometheus-port", type=int, default=0,
                        help="Prometheus' port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--prometheus-interval", type=float, default=5.0, metavar="SECONDS",
                        help="its scrape interval (default %(default)s)")
    parser.add_argument("--no-supervise", action="store_true",
                        help="up: start the services from this command, with no supervisor to restart them "
                             "(and no standby dispatcher)")
    parser.add_argument("--no-standby", action="store_true", help="up: no standby dispatcher")
    parser.add_argument("--force", action="store_true",
                        help="down: remove the shared directory even if it holds accepted payments not yet sent")
    # The Makefile's: messages name `make` commands instead of bruto-stack's.
    parser.add_argument("--via-make", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    commands = COMMANDS["make" if args.via_make else "bruto-stack"]
    try:
        stack = build_stack(args)
        if args.command == "up":
            resumed = held_payments(args.shm_dir)
            state = stack.up() if args.no_supervise else up_supervised(stack, commands)
            for record in state["processes"]:
                confined = " (confined)" if record["limited"] else ""
                print(f"{record['name']:18} pid {record['pid']}{confined}")
            print(f"stack up on http://127.0.0.1:{args.port}; shared directory {args.shm_dir}; "
                  f"logs and state in {stack.run_dir}")
            if args.prometheus:
                print(f"prometheus on http://127.0.0.1:{args.prometheus_port} (scraping /metrics every "
                      f"{args.prometheus_interval:g} s)")
            if resumed:
                print(f"continued from {args.shm_dir}: {describe(resumed)}")
        elif args.command == "stop":
            return stop(stack, args.shm_dir, commands)
        elif args.command == "down":
            return down(stack, args.shm_dir, args.force, commands)
        else:
            return status(stack)
    except StackError as error:
        print(f"bruto-stack {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


def held_payments(shm_dir: str) -> dict[str, int] | None:
    """What a shared directory holds (``confirmed``, ``unsent``), or None if it holds no regions."""
    try:
        snap = snapshot.read(shm_dir)
    except RegionError:
        return None
    return {"confirmed": snap["ledger"]["retained"], "unsent": snap["gateway"]["backlog"] + snap["outbox"]["in_use"]}


def describe(held: dict[str, int]) -> str:
    return f"{held['confirmed']} confirmed payments, {held['unsent']} accepted and not sent to a processor yet"


def stop_recorded(stack: Stack, shm_dir: str) -> tuple[bool, str]:
    """Stop what the run directory records, keeping every directory.

    Returns:
        Whether a stack was recorded, and its shared directory (``shm_dir``
        when none was: a stopped stack's is the default's or the one given).
    """
    if not stack.state_file.exists():
        return False, shm_dir
    shm_dir = stack.load_state().get("notes", {}).get("shm_dir", shm_dir)
    for problem in stack.down(may_remove=lambda path: False):
        print(problem, file=sys.stderr)
    return True, shm_dir


def stop(stack: Stack, shm_dir: str, commands: dict[str, str]) -> int:
    """Stop the stack and keep its shared directory, for ``up`` to continue from."""
    stopped, shm_dir = stop_recorded(stack, shm_dir)
    print("stack stopped" if stopped else f"nothing running from {stack.run_dir}")
    held = held_payments(shm_dir)
    if held is not None:
        print(f"kept {shm_dir}: {describe(held)}; `{commands['up']}` continues from it, "
              f"`{commands['down']}` deletes it")
    return 0


def down(stack: Stack, shm_dir: str, force: bool, commands: dict[str, str]) -> int:
    """Stop the stack and delete the shared directory a stack created, unless it holds unsent payments.

    The directory is deleted only if a stack created it (``SCRATCH_MARK``):
    one that was there before ``up`` is someone else's. Unsent payments keep
    it unless ``force``, and then the exit status is 1.
    """
    stopped, shm_dir = stop_recorded(stack, shm_dir)
    print("stack stopped" if stopped else f"nothing running from {stack.run_dir}")
    if not os.path.isdir(shm_dir):
        return 0
    if not os.path.exists(os.path.join(shm_dir, SCRATCH_MARK)):
        print(f"left {shm_dir} as it is: no stack created it")
        return 0
    held = held_payments(shm_dir) or {"confirmed": 0, "unsent": 0}
    if held["unsent"] and not force:
        print(f"bruto-stack down: kept {shm_dir}: it holds {held['unsent']} accepted payments not sent to a "
              f"processor yet; `{commands['up']}` sends them, `{commands['force']}` drops them", file=sys.stderr)
        return 1
    shutil.rmtree(shm_dir, ignore_errors=True)
    print(f"deleted {shm_dir}: {describe(held)}")
    return 0


def status(stack: Stack) -> int:
    """Print one row per process; 1 if something is not running, not answering, or no dispatcher is active."""
    rows, problems = inspect(stack)
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    for problem in problems:
        print(f"bruto-stack status: {problem}", file=sys.stderr)
    return 1 if problems else 0


def inspect(stack: Stack) -> tuple[list[dict], list[str]]:
    """The status rows of a recorded stack, and what is wrong with it (nothing: it is whole)."""
    rows = stack.status()
    problems = []
    # First: the rows' names say roles from here on.
    dispatchers = annotate_dispatchers(rows, stack.load_state().get("notes", {}).get("shm_dir"))
    down = [row["name"] for row in rows if row.get("alive") is False]
    mute = [row["name"] for row in rows if row.get("alive") and row["answers"] not in ("ok", "-", "active", "standby")]
    for names, what in ((down, "not running"), (mute, "not answering")):
        if names:
            problems.append(f"{what}: {', '.join(names)}")
    if dispatchers:
        problems.append(dispatchers)
    return rows, problems


if __name__ == "__main__":
    sys.exit(main())
