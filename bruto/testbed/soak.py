"""``bruto-soak``: the real dispatcher through a million payments, watching its memory.

    bruto-soak [--payments 1000000] [--memory-mb 120]

Starts two processor emulators (delay 0) and one ``bruto-dispatcher`` process
over a fresh shared directory with the default region sizes (a ledger of
2^20 payments), then feeds intake directly, as fast as the dispatcher drains
it: time is compressed, the official test's 17,000 payments become a
million in minutes. As root, the dispatcher runs in a cgroup with the memory
limit its container has (``--memory-mb``, 120 MB in docker-compose.yml), so
going over is an OOM kill, not a number to read; the cgroup's peak counts
the shared-memory pages the dispatcher writes (ledger, outbox), as the
container's would. Where no cgroup can be had (v1 or v2: not root, neither
mounted writable), it stops at once with the reason, unless ``--no-limits``
(then it measures RSS only, and the limit is not enforced).

Prints progress every few seconds, then the dispatcher's peak RSS (VmHWM)
and the cgroup's peak against the limit, and checks that the processors
hold exactly the payments fed and the ledger counts each once.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bruto.config import Settings
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_ledger
from bruto.shm.ledger import totals
from bruto.testbed.emulator.control import Processors
from bruto.testbed.stack import cgroups
from bruto.timefmt import now_us

MB = 1 << 20


def status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            found[name] = int(value.split()[0]) * 1024
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-soak", description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1_000_000)
    parser.add_argument("--memory-mb", type=int, default=120, help="the dispatcher's memory limit (cgroup, as root)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--no-limits", action="store_true",
                        help="run the dispatcher without its memory limit where no cgroup can be had (RSS only)")
    args = parser.parse_args(argv)
    reason = cgroups.unavailable_reason()
    if reason and not args.no_limits:
        print(f"bruto-soak: cannot set the dispatcher's {args.memory_mb} MB limit: {reason} "
              "(--no-limits measures without it)", file=sys.stderr)
        return 1

    shm_dir = tempfile.mkdtemp(prefix="bruto-soak-", dir="/dev/shm")
    processors = Processors.start()
    settings = Settings(shm_dir=shm_dir, default_url=processors.default.url, fallback_url=processors.fallback.url)
    create_all(settings)
    groups = {}
    command = [sys.executable, "-m", "bruto.dispatcher"]
    if reason is None:
        groups = cgroups.create(f"bruto-soak-{os.getpid()}", {"dispatcher": (2.0, args.memory_mb)},
                                (2.0, args.memory_mb))
        joins = " && ".join(f"echo $$ > {shlex.quote(str(Path(p, 'cgroup.procs')))}"
                            for p in dict.fromkeys(groups["dispatcher"].values()))
        command = ["sh", "-c", f'{joins} && exec "$@"', "dispatcher"] + command
    else:
        print(f"bruto-soak: no memory limit ({reason}; --no-limits); measuring only", flush=True)
    env = dict(os.environ, BRUTO_SHM_DIR=shm_dir, BRUTO_DEFAULT_URL=settings.default_url,
               BRUTO_FALLBACK_URL=settings.fallback_url, BRUTO_LOG_LEVEL="warning")
    dispatcher = subprocess.Popen(command, env=env)
    try:
        return _soak(args, settings, dispatcher, groups, processors)
    finally:
        if dispatcher.poll() is None:
            dispatcher.terminate()
            dispatcher.wait(10)
        processors.stop()
        if groups:
            cgroups.remove(groups)
        shutil.rmtree(shm_dir, ignore_errors=True)


def _soak(args, settings: Settings, dispatcher: subprocess.Popen, groups: dict, processors) -> int:
    writer = IntakeWriter.claim(settings)
    stats = open_dispatch(settings).counters
    ledger = open_ledger(settings)
    started = time.monotonic()
    fed, next_report = 0, started + args.every
    peak: dict[str, float] = {}
    print(f"bruto-soak: {args.payments:,} payments through dispatcher pid {dispatcher.pid}"
          f"{f', memory limit {args.memory_mb} MB' if groups else ''}", flush=True)
    while True:
        while fed < args.payments:
            try:
                writer.append(uuid.uuid4().bytes, 1990, now_us())
            except IntakeFull:
                break
            fed += 1
        stored = int(stats["stored"])
        if dispatcher.poll() is not None:
            print(f"bruto-soak: the dispatcher exited with {dispatcher.returncode} after {stored:,} payments"
                  + (" (killed: over its memory limit?)" if dispatcher.returncode < 0 else ""), flush=True)
            return 1
        memory = status(dispatcher.pid)  # ``sh -c ... exec`` keeps the PID: it is the dispatcher
        peak = {name: max(value, peak.get(name, 0)) for name, value in memory.items()}
        now = time.monotonic()
        if now >= next_report or stored >= args.payments:
            group = cgroups.usage(groups["dispatcher"]) if groups else None
            print(f"{now - started:7.0f} s  stored {stored:>9,}  {stored / (now - started):6.0f}/s  "
                  f"RSS {memory['VmRSS'] / MB:5.1f} MB (anon {memory['RssAnon'] / MB:.1f}, "
                  f"shmem {memory['RssShmem'] / MB:.1f})"
                  + (f"  cgroup {group['memory_mb']:5.1f} MB" if group else ""), flush=True)
            next_report = now + args.every
        if stored >= args.payments:
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    group = cgroups.usage(groups["dispatcher"]) if groups else None
    found = totals(ledger, None, None)
    at_processors = (processors.default.admin_summary()["totalRequests"]
                     + processors.fallback.admin_summary()["totalRequests"])
    print(f"bruto-soak: {stored:,} payments in {elapsed:.0f} s ({stored / elapsed:.0f}/s); "
          f"ledger counts {sum(found.requests):,}, the processors hold {at_processors:,}")
    print(f"bruto-soak: dispatcher peak RSS {peak['VmHWM'] / MB:.1f} MB (anon {peak['RssAnon'] / MB:.1f}, "
          f"shared memory {peak['RssShmem'] / MB:.1f}, files {peak['RssFile'] / MB:.1f})"
          + (f"; cgroup peak {group['peak_memory_mb']:.1f} MB of its {args.memory_mb} MB limit" if group else
             f" against a {args.memory_mb} MB limit"))
    ok = sum(found.requests) == at_processors == args.payments
    if not ok:
        print("bruto-soak: MISMATCH between what was fed, the ledger and the processors")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
