"""``bruto-shm``: print what the shared-memory regions hold right now.

Read-only: it attaches to existing regions (never creates them) and reads the
same counters the gateway and the dispatcher publish. ``--json`` prints one
JSON object instead of the table, for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys

import numpy as np

from bruto.config import Settings
from bruto.dispatcher import breaker
from bruto.shm.layout import DISPATCH
from bruto.shm.layout import HEALTH
from bruto.shm.layout import INTAKE
from bruto.shm.layout import LEDGER
from bruto.shm.layout import OUTBOX
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import STATE_NAMES
from bruto.shm.layout import UNRESOLVED
from bruto.shm.layout import intake_path
from bruto.shm.ledger import totals
from bruto.shm.region import Region
from bruto.shm.region import RegionError


def _lock_held(path: str) -> bool:
    """Whether a live process holds the flock on ``path`` (slot owners, the dispatcher).

    The lock says more than a PID: it works across containers (PIDs there
    belong to other namespaces) and cannot be fooled by a reused PID. The probe
    takes a shared lock for an instant; a worker claiming that very slot at
    that instant moves on to the next free one.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got one
    return False


def snapshot(settings: Settings) -> dict:
    """Everything worth showing, as plain numbers."""
    path = lambda name: os.path.join(settings.shm_dir, name)  # noqa: E731
    dispatch = Region.attach(path("dispatch.bin"), DISPATCH)
    outbox = Region.attach(path("outbox.bin"), OUTBOX)
    ledger = Region.attach(path("ledger.bin"), LEDGER)
    health = Region.attach(path("health.bin"), HEALTH)
    intake = []
    for slot in range(dispatch.capacity):
        try:
            slab = Region.attach(intake_path(settings, slot), INTAKE)
        except RegionError:
            continue
        written = int(slab.counters["written"])
        drained = int(dispatch.records[slot]["drained"])
        intake.append({"slot": slot, "written": written, "backlog": written - drained,
                       "owner_pid": int(slab.counters["owner_pid"]),
                       "owner_alive": _lock_held(intake_path(settings, slot))})
    states = outbox.records["state"]
    found = totals(ledger, None, None)
    stats = {name: int(dispatch.counters[name]) for name in DISPATCH.counters.names}
    stats["dispatcher_alive"] = _lock_held(path("dispatcher.lock"))
    return {
        "shm_dir": settings.shm_dir,
        "intake": intake,
        "outbox": {"capacity": outbox.capacity,
                   **{STATE_NAMES[state]: int(np.count_nonzero(states == state)) for state in (QUEUED, SENT, UNRESOLVED)}},
        "ledger": {"capacity": ledger.capacity, "count": int(ledger.counters["count"]),
                   "start": int(ledger.counters["start"]), "truncated": found.truncated,
                   **{name: {"totalRequests": found.requests[i], "totalCents": found.amount_cents[i]}
                      for i, name in enumerate(PROCESSOR_NAMES)}},
        "health": {name: {field: int(health.records[i][field]) for field in HEALTH.record.names
                          if not HEALTH.record.fields[field][0].shape}
                   | {"breaker_state": breaker.NAMES.get(int(health.records[i]["breaker"]), "?")}
                   for i, name in enumerate(PROCESSOR_NAMES)},
        "dispatcher": stats,
    }


def _print_table(snap: dict) -> None:
    print(f"shared directory {snap['shm_dir']}")
    d = snap["dispatcher"]
    print(f"dispatcher pid {d['dispatcher_pid']} ({'alive' if d['dispatcher_alive'] else 'not running'}): "
          + ", ".join(f"{k} {d[k]}" for k in ("attempts", "stored", "failed", "unknown", "lookups",
                                               "duplicates_dropped", "rejected", "purges")))
    for slab in snap["intake"]:
        if slab["written"] or slab["owner_alive"]:
            owner = f"pid {slab['owner_pid']} {'alive' if slab['owner_alive'] else 'gone'}"
            print(f"intake slot {slab['slot']:2d}: written {slab['written']}, backlog {slab['backlog']} ({owner})")
    o = snap["outbox"]
    print(f"outbox: {o['queued']} queued, {o['sent']} sent, {o['unresolved']} unresolved (capacity {o['capacity']})")
    led = snap["ledger"]
    print(f"ledger: {led['count'] - led['start']} counted of {led['count']} appended (capacity {led['capacity']}"
          f"{', wrapped' if led['truncated'] else ''})")
    for name in PROCESSOR_NAMES:
        cents = led[name]["totalCents"]
        h = snap["health"][name]
        print(f"  {name:8s}: {led[name]['totalRequests']} payments, {cents // 100}.{cents % 100:02d}; "
              f"breaker {h['breaker_state']}, failing {h['failing']}, delay {h['min_response_ms']} ms, "
              f"p90 {h['latency_p90_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bruto-shm", description=__doc__.splitlines()[0])
    parser.add_argument("--shm-dir", help="shared directory (default: BRUTO_SHM_DIR or /dev/shm/bruto)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.shm_dir:
        settings = dataclasses.replace(settings, shm_dir=args.shm_dir)
    try:
        snap = snapshot(settings)
    except RegionError as error:
        print(f"bruto-shm: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        _print_table(snap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
