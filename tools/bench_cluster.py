"""Benchmark: what the cluster's statements cost on PostgreSQL (bruto.cluster.database).

    python tools/bench_cluster.py --url postgresql://.../empty_db [--rows 1000000] [--repeat 50]

On an empty database (its schema made by bruto): claims of batches of
several sizes (each a new batch of ids, into a table already holding
``--rows`` claims), publication of a batch, and GET /payments-summary's
statement over ``--rows`` confirmations spread over ``--rows`` ms of
requestedAt (1,000 a second), for a 15-s window as the consistency probe
asks and for no window at all. Prints the median and the largest wall time
per statement, client included (one connection, autocommit, as bruto runs
them). The database is left full: give it a throwaway one.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg

from bruto.cluster.database import Database

T0 = 1_765_000_000_000_000


def timed(work, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3, max(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    db = Database(args.url, uuid.uuid4(), "bench", max_connections=1)
    db.summary(None, None)  # the schema and this host's row
    with psycopg.connect(args.url, autocommit=True) as conn:
        conn.execute("INSERT INTO bruto_claims SELECT gen_random_uuid(), %s FROM generate_series(1, %s)",
                     (db.host, args.rows))
        conn.execute("INSERT INTO bruto_payments SELECT gen_random_uuid(), n %% 2, 1990, %s + n * 1000, %s "
                     "FROM generate_series(1, %s) AS n", (T0, db.host, args.rows))
        conn.execute("VACUUM ANALYZE")
        sizes = {table: conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
                 for table in ("bruto_claims", "bruto_payments")}
    print("on disk, indexes included: " + ", ".join(f"{table} {size / 2**20:.0f} MiB ({size / args.rows:.0f} B a row)"
                                                   for table, size in sizes.items()))
    print(f"{args.rows:,} claims and confirmations in the tables; median / largest of {args.repeat}, ms")
    for size in (16, 64, 512, 4096):
        median, largest = timed(lambda: db.claim([uuid.uuid4().bytes for _ in range(size)], [1990] * size, epoch=0), args.repeat)
        print(f"claim of {size:5d} new ids        {median:8.2f} {largest:8.2f}")
    position = [0]

    def publish(size=64):
        ids = [uuid.uuid4().bytes for _ in range(size)]
        position[0] += size
        db.publish(ids, [0] * size, [1990] * size, [T0] * size, upto=position[0])

    median, largest = timed(publish, args.repeat)
    print(f"publish of    64 confirmations {median:8.2f} {largest:8.2f}")
    middle = T0 + args.rows // 2 * 1000
    median, largest = timed(lambda: db.summary(middle, middle + 15_000_000), args.repeat)
    print(f"summary, a 15-s window         {median:8.2f} {largest:8.2f}")
    median, largest = timed(lambda: db.summary(None, None), max(3, args.repeat // 10))
    print(f"summary, no window             {median:8.2f} {largest:8.2f}")
    db.close()


if __name__ == "__main__":
    main()
