"""Benchmark: what one GET /metrics costs the worker that answers it.

    python tools/bench_metrics.py [--ledger 16750 1048576] [--scrapes 50]

For each ledger size, fills a fresh shared directory (8 intake slabs, a
ledger of that many confirmed payments, counters with values in them) and
renders the metrics body as the endpoint does (bruto.gateway.metrics: read
every region, render with prometheus_client), ``--scrapes`` times. Prints the
median and the 90th percentile of the CPU time per scrape, and the body's
size. The CPU time is the answering worker's, taken from its share of the
challenge's limits once per scrape interval. Run it under ``bruto-quiet``.
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

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from bruto.config import Settings  # noqa: E402
from bruto.dispatcher.metrics import DispatcherMetrics  # noqa: E402
from bruto.dispatcher.processor import Outcome  # noqa: E402
from bruto.gateway.metrics import SharedMemoryCollector  # noqa: E402
from bruto.shm.layout import create_all  # noqa: E402
from bruto.shm.layout import open_intake  # noqa: E402
from bruto.shm.layout import open_ledger  # noqa: E402
from bruto.shm.layout import open_metrics  # noqa: E402


def fill(settings: Settings, payments: int) -> None:
    """A ledger of ``payments`` confirmations and counters as a run would leave them."""
    create_all(settings)
    ledger = open_ledger(settings)
    columns = ledger.columns
    rng = np.random.default_rng(1)
    columns["correlation_id"][:payments] = rng.bytes(16 * payments)
    columns["requested_at"][:payments] = 1_750_000_000_000_000 + np.arange(payments) * 3_000
    columns["amount_cents"][:payments] = 1990
    columns["processor"][:payments] = rng.random(payments) < 0.1
    ledger.counters["count"] = payments
    for slot in range(settings.intake_slots):
        open_intake(settings, slot).counters["written"] = payments // settings.intake_slots
    metrics = DispatcherMetrics(open_metrics(settings))
    for n in range(2000):
        metrics.attempt(n % 2, 0)
        metrics.answered(n % 2, Outcome.STORED, 1000 + n * 50)
        metrics.confirmed(n % 2, 1990, 20_000 + n * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", type=int, nargs="+", default=[16_750, 1 << 20])
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    for payments in args.ledger:
        with tempfile.TemporaryDirectory(prefix="bruto-bm-", dir="/dev/shm") as shm_dir:
            settings = Settings(shm_dir=shm_dir, ledger_capacity=max(payments, 1 << 10))
            fill(settings, payments)
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SharedMemoryCollector(shm_dir))
            body = generate_latest(registry)  # first scrape attaches the regions
            cpu = []
            for _ in range(args.scrapes):
                started = time.process_time()
                generate_latest(registry)
                cpu.append(time.process_time() - started)
            cpu.sort()
            print(f"ledger {payments:>9,} payments: cpu per scrape median {statistics.median(cpu) * 1e3:.2f} ms, "
                  f"p90 {cpu[int(len(cpu) * 0.9)] * 1e3:.2f} ms; body {len(body):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
