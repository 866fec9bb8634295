"""bruto's every statement to PostgreSQL, over a small psycopg_pool.

One :class:`Database` per process (the dispatcher; each web worker). It
reaches the database lazily: the first call creates or upgrades the schema
(bruto.cluster.schema) and registers this host, so a host starts, accepts and
queues payments while PostgreSQL is down, and catches up once it is back.
Every failure to reach or use the database comes out as :class:`Unavailable`.
"""

from __future__ import annotations

import logging
import uuid

from bruto.cluster import schema
from bruto.cluster.client import psycopg
from bruto.cluster.client import psycopg_pool

log = logging.getLogger("bruto.cluster")

# A connection attempt or a statement that takes longer than this fails: the
# dispatcher's loop and a summary wait at most this long for a database that
# hangs, instead of for ever.
CONNECT_TIMEOUT_S = 2
STATEMENT_TIMEOUT_MS = 5000
# How long a caller waits for a connection from the pool: while the database
# is down, a summary answers 503 this late.
POOL_TIMEOUT_S = 1.5

_CLAIM = """
WITH wanted AS (SELECT unnest(%(ids)s::uuid[]) AS correlation_id),
new AS (
    INSERT INTO bruto_claims (correlation_id, host_id)
    SELECT correlation_id, %(host)s FROM wanted
    ON CONFLICT (correlation_id) DO NOTHING
    RETURNING correlation_id
)
SELECT correlation_id, true FROM new
UNION ALL
SELECT c.correlation_id, false FROM bruto_claims c JOIN wanted USING (correlation_id) WHERE c.host_id = %(host)s
"""
# The second branch reads the statement's snapshot, which does not hold the
# rows the first inserts: it finds this host's claims made before (a batch
# claimed just before a crash), never a row twice.

_PUBLISH = """
INSERT INTO bruto_payments (correlation_id, processor, amount_cents, requested_at, host_id)
SELECT id, processor, amount_cents, requested_at, %(host)s
FROM unnest(%(ids)s::uuid[], %(processors)s::smallint[], %(amounts)s::bigint[], %(requested_at)s::bigint[])
     AS confirmed (id, processor, amount_cents, requested_at)
ON CONFLICT (correlation_id) DO NOTHING
"""

# One statement, one snapshot: the sums and this host's position agree (the
# publisher commits rows and position together).
_SUMMARY = """
SELECT -1, (SELECT published FROM bruto_hosts WHERE host_id = %(host)s), 0
UNION ALL
SELECT processor, count(*), sum(amount_cents) FROM bruto_payments
WHERE requested_at >= %(since)s AND requested_at <= %(until)s
GROUP BY processor
"""

EARLIEST = -(2**63)
LATEST = 2**63 - 1


class Unavailable(RuntimeError):
    """The database could not be reached, or failed the statement."""


class Database:
    """This host's statements; see the module docstring.

    Args:
        url: a libpq URI (``BRUTO_DATABASE_URL``).
        host: this host's id (bruto.cluster.host).
        label: what bruto_hosts says this host is.
        max_connections: the pool's size.
    """

    def __init__(self, url: str, host: uuid.UUID, label: str, max_connections: int = 2):
        self.host = host
        self.label = label
        self._ready = False
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, open=False, timeout=POOL_TIMEOUT_S,
            name="bruto", kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                                  "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"})
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def _run(self, work):
        """``work(conn)`` on a pooled connection, once more on a fresh one if the first was broken."""
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn:
                    if not self._ready:
                        applied = schema.migrate(conn)
                        if applied:
                            log.info("bruto schema: applied version(s) %s", applied)
                        conn.execute("INSERT INTO bruto_hosts (host_id, label) VALUES (%s, %s) "
                                     "ON CONFLICT (host_id) DO UPDATE SET label = excluded.label, seen_at = now()",
                                     (self.host, self.label))
                        self._ready = True
                    return work(conn)
            except psycopg_pool.PoolTimeout as error:  # no connection could be made in time: no second try
                raise Unavailable(str(error).strip() or type(error).__name__) from error
            except psycopg.OperationalError as error:
                # A connection the server closed (a restart) fails once; the
                # pool drops it, and a second try gets a new one.
                if attempt == 2:
                    raise Unavailable(str(error).strip() or type(error).__name__) from error
            except psycopg.Error as error:
                raise Unavailable(str(error).strip() or type(error).__name__) from error

    def claim(self, ids: list[bytes]) -> tuple[set[bytes], set[bytes]]:
        """Claim ``ids`` for this host in one statement: (claimed now, claimed by this host before).

        An id in neither set is claimed by another host.
        """
        wanted = [uuid.UUID(bytes=raw) for raw in ids]

        def work(conn):
            return conn.execute(_CLAIM, {"ids": wanted, "host": self.host}).fetchall()

        new: set[bytes] = set()
        before: set[bytes] = set()
        for correlation_id, is_new in self._run(work):
            (new if is_new else before).add(correlation_id.bytes)
        return new, before

    def published(self) -> int:
        """This host's publication position: its ledger index below which everything is in bruto_payments."""
        def work(conn):
            return conn.execute("SELECT published FROM bruto_hosts WHERE host_id = %s", (self.host,)).fetchone()[0]

        return self._run(work)

    def publish(self, ids: list[bytes], processors: list[int], amounts: list[int], requested_at: list[int],
                upto: int) -> int:
        """Publish confirmations and move the position to ``upto``, in one transaction; returns rows new."""
        params = {"ids": [uuid.UUID(bytes=raw) for raw in ids], "processors": processors, "amounts": amounts,
                  "requested_at": requested_at, "host": self.host}

        def work(conn):
            with conn.transaction():
                inserted = conn.execute(_PUBLISH, params).rowcount
                conn.execute("UPDATE bruto_hosts SET published = greatest(published, %s), seen_at = now() "
                             "WHERE host_id = %s", (upto, self.host))
            return inserted

        return self._run(work)

    def report_health(self, processor: int, failing: bool, min_response_ms: int, asked_at: int) -> None:
        """Keep a service-health report for every host (the poller's); an older one never replaces a newer."""
        def work(conn):
            conn.execute("INSERT INTO bruto_health (processor, failing, min_response_ms, asked_at, host_id) "
                         "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (processor) DO UPDATE SET "
                         "failing = excluded.failing, min_response_ms = excluded.min_response_ms, "
                         "asked_at = excluded.asked_at, host_id = excluded.host_id "
                         "WHERE bruto_health.asked_at < excluded.asked_at",
                         (processor, failing, min(min_response_ms, 2**31 - 1), asked_at, self.host))

        self._run(work)

    def health_reports(self) -> list[tuple[int, bool, int, int]]:
        """The last report of each processor: (processor, failing, min_response_ms, asked_at)."""
        def work(conn):
            return conn.execute("SELECT processor, failing, min_response_ms, asked_at FROM bruto_health").fetchall()

        return self._run(work)

    def purge(self, slot: int, ticket: int, kept_from: int, held: list[bytes]) -> bool:
        """Empty the cluster's record for this host's purge ``(slot, ticket)``; False if it was done before.

        In one transaction: every confirmation goes; the claims of confirmed
        payments go, and this host's claims but those of the ids it still
        holds (``held``: out to a processor, or accepted after the purge was
        asked); other hosts' claims of payments they have not confirmed stay,
        so no id they hold can be claimed twice; this host publishes its
        ledger again from ``kept_from`` (what it confirmed after the request).
        """
        params = {"host": self.host, "slot": slot, "ticket": ticket, "kept_from": kept_from,
                  "held": [uuid.UUID(bytes=raw) for raw in held]}

        def work(conn):
            with conn.transaction():
                if conn.execute("INSERT INTO bruto_purges (host_id, slot, ticket) VALUES (%(host)s, %(slot)s, "
                                "%(ticket)s) ON CONFLICT DO NOTHING RETURNING 1", params).fetchone() is None:
                    return False
                conn.execute("DELETE FROM bruto_claims c USING bruto_payments p "
                             "WHERE c.correlation_id = p.correlation_id AND c.host_id <> %(host)s", params)
                conn.execute("DELETE FROM bruto_claims WHERE host_id = %(host)s "
                             "AND NOT (correlation_id = ANY(%(held)s::uuid[]))", params)
                conn.execute("DELETE FROM bruto_payments")
                conn.execute("UPDATE bruto_hosts SET published = %(kept_from)s WHERE host_id = %(host)s", params)
            return True

        return self._run(work)

    def summary(self, since: int | None, until: int | None) -> tuple[int, list[int], list[int]]:
        """(this host's position, requests per processor, cents per processor) in [since, until], inclusive."""
        params = {"host": self.host, "since": EARLIEST if since is None else since,
                  "until": LATEST if until is None else until}

        def work(conn):
            return conn.execute(_SUMMARY, params).fetchall()

        published, requests, cents = 0, [0, 0], [0, 0]
        for processor, count, total in self._run(work):
            if processor == -1:
                published = count or 0
            else:
                requests[processor], cents[processor] = int(count), int(total)
        return published, requests, cents
