"""What the dispatcher counts of its work with the cluster: ``cluster.bin`` in the shared directory.

Only a dispatcher with ``BRUTO_DATABASE_URL`` creates and writes it (one
writer, as every region); the metrics endpoint and the inspector read it when
it exists. Counts only grow, but ``unpublished`` (confirmations in the ledger
not yet in PostgreSQL), ``db_up`` (1 while the last statement succeeded) and
``poller`` (1 while this host polls service-health for the cluster).
"""

from __future__ import annotations

import os

import numpy as np

from bruto.shm.region import Layout
from bruto.shm.region import Region

CLUSTER = Layout(
    kind=b"cluster",
    version=3,
    counters=np.dtype([
        ("claims", "<i8"),                 # claim statements that succeeded
        ("claimed", "<i8"),                # ids claimed for the first time
        ("resumed", "<i8"),                # ids found claimed by this host already (after a crash)
        ("cross_host_duplicates", "<i8"),  # ids another host had claimed: dropped
        ("claim_errors", "<i8"),           # claim statements that failed (database unreachable or failing)
        ("published", "<i8"),              # confirmations newly written to bruto_payments
        ("publish_errors", "<i8"),
        ("unpublished", "<i8"),            # gauge: ledger records not yet published
        ("db_up", "<i8"),                  # gauge: 1 while the last statement succeeded
        ("poller", "<i8"),                 # gauge: 1 while this host polls service-health for the cluster
        ("lease_held", "<i8"),             # gauge: 1 while this host's lease lets it send
        ("renewals", "<i8"),               # lease renewals that succeeded
        ("lease_errors", "<i8"),           # lease renewals (or takeovers) the database did not answer
        ("takeovers", "<i8"),              # lost hosts this host took over
        ("taken_over", "<i8"),             # their payments this host's outbox took in (as lookups)
        ("fenced", "<i8"),                 # payments dropped here because another host had taken them over
        # Until when (epoch µs) this host's shared memory may answer without asking the database whether
        # a purge asked on another host is still to be applied here (bruto.cluster.link keep_current).
        ("purges_current_until", "<i8"),
    ]),
    record=np.dtype([("unused", "<i8")]),
)


def cluster_path(shm_dir: str) -> str:
    return os.path.join(shm_dir, "cluster.bin")


def open_cluster(shm_dir: str) -> Region:
    """The region, created if missing (the dispatcher's side)."""
    return Region.open(cluster_path(shm_dir), CLUSTER, 1)


def attach_cluster(shm_dir: str):
    """The counters, read-only, or None when no dispatcher has created them yet (a reader's side)."""
    path = cluster_path(shm_dir)
    if not os.path.exists(path):
        return None
    return Region.attach(path, CLUSTER, 1, writable=False).counters


def read_cluster(shm_dir: str) -> dict[str, int] | None:
    """The counters as a dict, or None when this directory's host is not in a cluster."""
    path = cluster_path(shm_dir)
    if not os.path.exists(path):
        return None
    region = Region.attach(path, CLUSTER, 1, writable=False)
    counters = region.counters
    assert CLUSTER.counters.names is not None  # a structured dtype
    return {name: int(counters[name]) for name in CLUSTER.counters.names}
