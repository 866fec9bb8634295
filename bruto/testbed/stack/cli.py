"""``bruto-stack up|down|status``: the local bruto stack, as plain processes.

``up`` starts the compose file's topology (bruto.testbed.stack.services),
each service answering before the next starts; ``down`` stops exactly what
``up`` started; ``status`` shows it and exits non-zero when something is not
running. ``--limits`` confines bruto's processes as the compose file does.

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
import socket
import sys
from pathlib import Path

from bruto.config import env_name
from bruto.config import settings_or_exit
from bruto.testbed.stack.runner import Stack
from bruto.testbed.stack.runner import StackError
from bruto.testbed.stack.services import BALANCERS
from bruto.testbed.stack.services import SERVICE_LIMITS
from bruto.testbed.stack.services import bruto_services
from bruto.testbed.stack.services import emulator_services
from bruto.testbed.stack.services import prometheus_service

DEFAULT_RUN_DIR = "/tmp/bruto-stack"


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
                               args.balancer)
    if args.prometheus:
        args.prometheus_port = args.prometheus_port or free_port()
        services.append(prometheus_service(run_dir, args.port, args.prometheus_port, args.prometheus_interval))
    return Stack(run_dir, services, limits=SERVICE_LIMITS if args.limits else None, scratch_dirs=[args.shm_dir])


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
    parser.add_argument("command", choices=["up", "down", "status"])
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
    args = parser.parse_args(argv)
    try:
        stack = build_stack(args)
        if args.command == "up":
            state = stack.up()
            for record in state["processes"]:
                confined = " (confined)" if record["limited"] else ""
                print(f"{record['name']:18} pid {record['pid']}{confined}")
            print(f"stack up on http://127.0.0.1:{args.port}; shared directory {args.shm_dir}; "
                  f"logs and state in {stack.run_dir}")
            if args.prometheus:
                print(f"prometheus on http://127.0.0.1:{args.prometheus_port} (scraping /metrics every "
                      f"{args.prometheus_interval:g} s)")
        elif args.command == "down":
            if not stack.state_file.exists():
                print(f"nothing recorded in {stack.run_dir}")
                return 0
            for problem in stack.down():
                print(problem, file=sys.stderr)
            print("stack down")
        else:
            rows = stack.status()
            for row in rows:
                print("  ".join(f"{k}={v}" for k, v in row.items()))
            down = [row["name"] for row in rows if row.get("alive") is False]
            if down:
                print(f"bruto-stack status: not running: {', '.join(down)}", file=sys.stderr)
                return 1
    except StackError as error:
        print(f"bruto-stack {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
