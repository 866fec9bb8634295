"""Benchmark: what one GET /payments/{correlationId} lookup costs, at a full ledger and a full outbox.

    python tools/bench_lookup.py [--lookups 2000]

Fills a fresh shared directory under /dev/shm as a dispatcher would leave it
at its limits: 1,048,576 confirmations in the ledger, 65,536 payments in the
outbox (queued, sent and unresolved), the dedup index built over both by the
dispatcher's own code (bruto.dispatcher.dedup), and 8 intake slabs a lap
full, ``--backlog`` payments each not drained yet and the rest drained. Then looks payments up as a web
worker does (bruto.shm.lookup, the regions attached read-only), in each
case below, and prints per case the median and the largest time of one
lookup, and the largest time between two pauses (the longest a worker's
other connections wait behind it: the lookup yields there). Times are wall
time of a single thread on an otherwise quiet machine: run it alone
(through /work/wt/cpu, or under ``bruto-quiet``).

| case                | path                                                       |
| ------------------- | ---------------------------------------------------------- |
| confirmed           | intake scan, one index probe, the ledger slot               |
| in the outbox       | intake scan, one index probe, the entry                     |
| in intake           | intake scan (finds it), one index probe (a miss)            |
| never accepted      | intake scan, a miss, the outbox, the ring, the drained slabs |
| index rebuilt       | as ``confirmed``, but the index is being rebuilt: scans     |
| purged, not held    | a miss after a purge: the purged ledger is scanned for it   |
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bruto.config import Settings  # noqa: E402
from bruto.dispatcher.dedup import DedupIndex  # noqa: E402
from bruto.shm.layout import QUEUED  # noqa: E402
from bruto.shm.layout import SENT  # noqa: E402
from bruto.shm.layout import UNRESOLVED  # noqa: E402
from bruto.shm.layout import DispatcherRegions  # noqa: E402
from bruto.shm.layout import create_all  # noqa: E402
from bruto.shm.ledger import LedgerWriter  # noqa: E402
from bruto.shm.lookup import NotHeld  # noqa: E402
from bruto.shm.lookup import Payment  # noqa: E402
from bruto.shm.snapshot import SharedRegions  # noqa: E402


def fill(settings: Settings, backlog: int, rng: np.random.Generator) -> tuple[DispatcherRegions, DedupIndex]:
    """Every region at its limit, as a dispatcher would leave it; the index built over them."""
    create_all(settings)
    regions = DispatcherRegions.open(settings)
    ledger = regions.ledger
    n = ledger.capacity
    columns = ledger.columns
    columns["correlation_id"][:] = np.frombuffer(rng.bytes(16 * n), dtype="V16")
    columns["requested_at"][:] = 1_750_000_000_000_000 + np.arange(n) * 3_000
    columns["amount_cents"][:] = 1990
    columns["processor"][:] = rng.random(n) < 0.1
    ledger.counters["count"] = n
    entries = regions.outbox.records
    entries["correlation_id"] = np.frombuffer(rng.bytes(16 * len(entries)), dtype="V16")
    entries["amount_cents"] = 1990
    entries["requested_at"] = 1_750_000_000_000_000
    entries["state"] = rng.choice([QUEUED, SENT, UNRESOLVED], len(entries))
    regions.outbox.counters["in_use"] = len(entries)
    for slot, slab in enumerate(regions.intake):
        # Each slab a lap full: ``backlog`` records not drained yet (slots
        # 0..backlog), the rest of the ring drained ones a miss also reads.
        records = slab.records
        records["correlation_id"][:] = np.frombuffer(rng.bytes(16 * slab.capacity), dtype="V16")
        records["amount_cents"][:] = 1990
        slab.counters["written"] = slab.capacity + backlog
        regions.dispatch.records[slot]["drained"] = slab.capacity
    index = DedupIndex(columns["correlation_id"], entries["correlation_id"], regions.index)
    index.rebuild(LedgerWriter(ledger).retained(), np.arange(len(entries)))
    return regions, index


class Timed:
    """A finder whose pauses are timed: the longest stretch between two of them."""

    def __init__(self, shm_dir: str):
        self.finder = SharedRegions(shm_dir).finder(pause=self._pause)
        self.last = 0.0
        self.longest = 0.0

    def _pause(self, seconds: float) -> None:
        now = time.perf_counter()
        self.longest = max(self.longest, now - self.last)
        self.last = now

    def run(self, ids: list[bytes], expect) -> tuple[list[float], float]:
        times, self.longest = [], 0.0
        for correlation_id in ids:
            started = self.last = time.perf_counter()
            found = self.finder.find(correlation_id)
            ended = time.perf_counter()
            self.longest = max(self.longest, ended - self.last)
            times.append(ended - started)
            if not expect(found):
                raise AssertionError(f"{correlation_id.hex()}: {found}")
        return times, self.longest


def report(case: str, times: list[float], longest: float) -> None:
    print(f"{case:18s} lookups {len(times):>5}: median {statistics.median(times) * 1e6:8.1f} µs, "
          f"max {max(times) * 1e6:8.1f} µs; longest without a pause {longest * 1e6:8.1f} µs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=2000, help="lookups per fast case (a tenth for scans)")
    parser.add_argument("--backlog", type=int, default=1000, help="payments not drained yet, per intake slab")
    defaults = Settings()
    parser.add_argument("--ledger-capacity", type=int, default=defaults.ledger_capacity,
                        help="smaller only to check the script itself: the figures are at the default")
    parser.add_argument("--outbox-capacity", type=int, default=defaults.outbox_capacity)
    parser.add_argument("--intake-capacity", type=int, default=defaults.intake_capacity)
    args = parser.parse_args()
    rng = np.random.default_rng(24)
    with tempfile.TemporaryDirectory(prefix="bruto-lookup-", dir="/dev/shm") as shm_dir:
        settings = Settings(shm_dir=shm_dir, ledger_capacity=args.ledger_capacity,
                            outbox_capacity=args.outbox_capacity, intake_capacity=args.intake_capacity)
        started = time.perf_counter()
        regions, index = fill(settings, args.backlog, rng)
        print(f"filled in {time.perf_counter() - started:.1f} s: ledger {regions.ledger.capacity:,}, "
              f"outbox {len(regions.outbox.records):,}, intake backlog {args.backlog:,} x {len(regions.intake)}, "
              f"index {regions.index.capacity:,} slots")
        timed = Timed(shm_dir)
        ledger_ids = regions.ledger.columns["correlation_id"]
        entry_ids = regions.outbox.records["correlation_id"]
        intake_ids = regions.intake[3].records["correlation_id"]
        n, scans = args.lookups, max(1, args.lookups // 10)

        def pick(ids, count):
            return [ids[int(i)].tobytes() for i in rng.integers(0, len(ids), count)]

        def held(state):
            return lambda found: isinstance(found, Payment) and found.state == state

        report("confirmed", *timed.run(pick(ledger_ids, n), held("confirmed")))
        report("in the outbox", *timed.run(pick(entry_ids, n),
                                           lambda found: isinstance(found, Payment) and found.state != "confirmed"))
        report("in intake", *timed.run(pick(intake_ids[:args.backlog], n), held("waiting")))
        report("never accepted", *timed.run([rng.bytes(16) for _ in range(n)],
                                            lambda found: isinstance(found, NotHeld)))
        changes = regions.index.counters
        changes["changes"] += 1  # as while the dispatcher rebuilds it
        report("index rebuilt", *timed.run(pick(ledger_ids, scans), held("confirmed")))
        changes["changes"] += 1
        regions.ledger.counters["start"] = regions.ledger.counters["count"]  # a purge of the whole ledger
        report("purged, not held", *timed.run([rng.bytes(16) for _ in range(scans)],
                                              lambda found: isinstance(found, NotHeld)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
