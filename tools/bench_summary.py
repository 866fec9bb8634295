"""Benchmark: GET /payments-summary math over a full ledger.

    python tools/bench_summary.py [--records 1000000] [--repeat 50]

Fills a ledger region (in a temporary directory under /dev/shm) with N
confirmed payments spread over one hour, then times `ledger.totals` for the
whole ledger and for a 14-second window (the official probe's), printing the
median and the worst of the repeats in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from bruto.shm.layout import LEDGER
from bruto.shm.ledger import totals
from bruto.shm.region import Region


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm_dir:
        region = Region.open(f"{shm_dir}/ledger.bin", LEDGER, 1 << 20)
        n = args.records
        rng = np.random.default_rng(7)
        start_us = 1_752_580_800_000_000
        region.columns["requested_at"][:n] = np.sort(rng.integers(start_us, start_us + 3_600_000_000, n))
        region.columns["amount_cents"][:n] = 1990
        region.columns["processor"][:n] = rng.random(n) < 0.1
        region.counters["count"] = n

        def timed(since, until):
            samples = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                totals(region, since, until)
                samples.append((time.perf_counter() - t) * 1000)
            return statistics.median(samples), max(samples)

        for label, since, until in [
            ("whole ledger, no bounds", None, None),
            ("whole ledger, both bounds", start_us, start_us + 3_600_000_000),
            ("14 s window", start_us + 1_800_000_000, start_us + 1_814_000_000),
        ]:
            median, worst = timed(since, until)
            print(f"{n} records, {label}: median {median:.2f} ms, max {worst:.2f} ms")


if __name__ == "__main__":
    main()
