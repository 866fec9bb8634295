"""GET /payments-summary for the whole cluster: PostgreSQL, plus this host's own unpublished confirmations.

The database answers for every host's published confirmations, and in the
same statement (one snapshot) says up to which ledger index this host's are
among them. This host's ledger records from that index on are added from
shared memory: they are confirmed, counted nowhere else yet. So this host's
summary never lags its own confirmations (the consistency probe's window ends
at now - 2 s in the final, now - 1.5 s in the preview), and other hosts'
confirmations reach it one publication later (bruto.cluster.link:
PUBLISH_INTERVAL_S plus a commit). While this host is behind on a purge asked
on another host, only its confirmations made after that purge's moment are
added: the others go when it applies the purge. No database: :class:`Unavailable`, which
the route answers with 503, never a partial figure.
"""

from __future__ import annotations

import numpy as np

from bruto.cluster.database import Database
from bruto.cluster.database import Unavailable  # noqa: F401 - what totals() raises, for its callers
from bruto.cluster.host import host_id
from bruto.cluster.host import host_label
from bruto.config import Settings
from bruto.shm.ledger import Totals
from bruto.shm.region import Region


def unpublished(ledger: Region, published: int, since: int | None, until: int | None,
                confirmed_after: int | None = None) -> tuple[list[int], list[int]]:
    """(requests, cents) per processor of the ledger's records from index ``published`` on, in the window
    (and, given ``confirmed_after``, confirmed after that moment: the others go with a purge not applied yet)."""
    counters = ledger.counters
    count = int(counters["count"])  # the publication counter first (bruto.shm.region)
    first = max(published, int(counters["start"]), count - ledger.capacity)
    requests, cents = [0, 0], [0, 0]
    if count <= first:
        return requests, cents
    slots = np.arange(first, count) % ledger.capacity
    columns = ledger.columns
    requested_at = columns["requested_at"][slots]
    selected = np.ones(len(slots), dtype=bool)
    if since is not None:
        selected &= requested_at >= since
    if until is not None:
        selected &= requested_at <= until
    if confirmed_after is not None:
        selected &= columns["confirmed_at"][slots] > confirmed_after
    processors = columns["processor"][slots]
    amounts = columns["amount_cents"][slots]
    for processor in (0, 1):
        mask = selected & (processors == processor)
        requests[processor] = int(np.count_nonzero(mask))
        cents[processor] = int(amounts[mask].sum())
    return requests, cents


class ClusterSummary:
    """One web worker's cluster summaries.

    Args:
        settings: the URL and the shared directory (this host).
        ledger: this host's ledger region.
    """

    def __init__(self, settings: Settings, ledger: Region, database: Database | None = None):
        self.db = database or Database(settings.database_url, host_id(settings.shm_dir),
                                       host_label(settings.shm_dir), max_connections=2)
        self._ledger = ledger

    def totals(self, since: int | None, until: int | None) -> Totals:
        """The cluster's totals in [since, until] (inclusive); raises Unavailable without the database."""
        published, behind, requests, cents = self.db.summary(since, until)
        own_requests, own_cents = unpublished(self._ledger, published, since, until, confirmed_after=behind)
        return Totals((requests[0] + own_requests[0], requests[1] + own_requests[1]),
                      (cents[0] + own_cents[0], cents[1] + own_cents[1]), truncated=False)
