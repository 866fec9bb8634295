"""bruto's every statement to PostgreSQL, over a small psycopg_pool.

One :class:`Database` per process (the dispatcher; each web worker). It
reaches the database lazily: the first call creates or upgrades the schema
(bruto.cluster.schema) and registers this host, so a host starts, accepts and
queues payments while PostgreSQL is down, and catches up once it is back.
Every failure to reach or use the database comes out as :class:`Unavailable`.
"""

from __future__ import annotations

import logging
import typing
import uuid

from bruto.cluster import schema
from bruto.cluster.client import psycopg
from bruto.cluster.client import psycopg_pool
from bruto.timefmt import now_us

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
WITH me AS (SELECT host_id FROM bruto_hosts WHERE host_id = %(host)s AND epoch = %(epoch)s FOR KEY SHARE),
wanted AS (SELECT * FROM unnest(%(ids)s::uuid[], %(amounts)s::bigint[]) AS w (correlation_id, amount_cents)),
new AS (
    INSERT INTO bruto_claims (correlation_id, host_id, amount_cents)
    SELECT correlation_id, me.host_id, amount_cents FROM wanted, me
    ON CONFLICT (correlation_id) DO NOTHING
    RETURNING correlation_id
)
SELECT correlation_id, true FROM new
UNION ALL
SELECT c.correlation_id, false FROM bruto_claims c JOIN wanted USING (correlation_id)
WHERE c.host_id = %(host)s AND c.resolve_after IS NULL AND EXISTS (SELECT 1 FROM me)
UNION ALL
SELECT NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM me)
"""
# The second branch reads the statement's snapshot, which does not hold the
# rows the first inserts: it finds this host's claims made before (a batch
# claimed just before a crash), never a row twice; not those a takeover gave
# this host that its outbox does not hold yet (they come in as lookups first).
# ``me`` is the fence: a claim names the epoch this host's lease holds, and
# its key-share lock makes a takeover (which locks the row for update) wait
# for the claim to commit, so the takeover moves what the claim inserted; a
# claim after a takeover finds the epoch moved on and claims nothing (the
# last branch says so).

_PUBLISH = """
INSERT INTO bruto_payments (correlation_id, processor, amount_cents, requested_at, host_id)
SELECT id, processor, amount_cents, requested_at, %(host)s
FROM unnest(%(ids)s::uuid[], %(processors)s::smallint[], %(amounts)s::bigint[], %(requested_at)s::bigint[])
     AS confirmed (id, processor, amount_cents, requested_at)
ON CONFLICT (correlation_id) DO NOTHING
"""

# One statement, one snapshot: the sums and this host's position agree (the
# publisher commits rows and position together); and whether this host is
# behind on a purge asked elsewhere, with that purge's moment and the
# database's clock (to map the moment to this host's).
_SUMMARY = """
SELECT -1, (SELECT published FROM bruto_hosts WHERE host_id = %(host)s),
       (SELECT (h.purge_epoch < c.epoch)::int FROM bruto_hosts h, bruto_purge_epoch c WHERE h.host_id = %(host)s),
       (SELECT (extract(epoch FROM purged_at) * 1e6)::bigint FROM bruto_purge_epoch),
       (extract(epoch FROM clock_timestamp()) * 1e6)::bigint
UNION ALL
SELECT processor, count(*), sum(amount_cents), NULL, NULL FROM bruto_payments
WHERE requested_at >= %(since)s AND requested_at <= %(until)s
GROUP BY processor
"""

EARLIEST = -(2**63)
LATEST = 2**63 - 1


def local_moment(moment: int, db_now: int, asked: int) -> int:
    """A moment of the database's clock (epoch µs) in this host's, by the database's ``db_now`` read by a
    statement asked at ``asked`` here: taken as read as early as it could have been.

    The answer may reach a busy dispatcher's greenlet milliseconds after the
    database read its clock; any later guess could place the moment after
    confirmations the processors made after the purge, and a purge applied
    on that moment would drop them. The earliest guess can only keep a
    little more: confirmations concurrent with the purge, which the
    processors hold too.
    """
    return moment + asked - db_now


class Confirmations(typing.NamedTuple):
    """Ledger records as the record takes them: one list per column."""

    ids: list[bytes]
    processors: list[int]
    amounts: list[int]
    requested_at: list[int]


NOTHING = Confirmations([], [], [], [])


class Unavailable(RuntimeError):
    """The database could not be reached, or failed the statement."""


class Fenced(RuntimeError):
    """Another host took this host's lease over: nothing is claimed until it reconciles."""


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

    def claim(self, ids: list[bytes], amounts: list[int], epoch: int) -> tuple[set[bytes], set[bytes]]:
        """Claim ``ids`` for this host in one statement: (claimed now, claimed by this host before).

        An id in neither set is claimed by another host. ``epoch``: what this
        host's lease holds (:meth:`reconcile`); raises :class:`Fenced` when the
        lease was taken over since.
        """
        params = {"ids": [uuid.UUID(bytes=raw) for raw in ids], "amounts": amounts, "host": self.host,
                  "epoch": epoch}

        def work(conn):
            return conn.execute(_CLAIM, params).fetchall()

        new: set[bytes] = set()
        before: set[bytes] = set()
        for correlation_id, is_new in self._run(work):
            if correlation_id is None:
                raise Fenced("this host's lease was taken over: it claims nothing until it has reconciled")
            (new if is_new else before).add(correlation_id.bytes)
        return new, before

    # -- the lease, and takeovers ---------------------------------------------------

    def renew(self, epoch: int, lease_ms: int) -> bool:
        """Renew this host's lease for ``lease_ms`` from now; False: another host took it over since ``epoch``."""
        def work(conn):
            return conn.execute("UPDATE bruto_hosts SET lease_until = clock_timestamp() + %s * interval '1 ms' "
                                "WHERE host_id = %s AND epoch = %s RETURNING 1",
                                (lease_ms, self.host, epoch)).fetchone()

        return self._run(work) is not None

    def reconcile(self, held: list[bytes], lease_ms: int) -> tuple[int, set[bytes]]:
        """Take the lease at whatever epoch it is now: (that epoch, the ids among ``held`` another host claims).

        One transaction, holding this host's row: no takeover can run
        between the answer and the renewal. The caller drops what another
        host claims before it sends anything.
        """
        params = {"host": self.host, "held": [uuid.UUID(bytes=raw) for raw in held], "lease_ms": lease_ms}

        def work(conn):
            with conn.transaction():
                epoch = conn.execute("SELECT epoch FROM bruto_hosts WHERE host_id = %(host)s FOR UPDATE",
                                     params).fetchone()[0]
                others = conn.execute("SELECT correlation_id FROM bruto_claims WHERE correlation_id = "
                                      "ANY(%(held)s::uuid[]) AND host_id <> %(host)s", params).fetchall()
                conn.execute("UPDATE bruto_hosts SET lease_until = clock_timestamp() + %(lease_ms)s * "
                             "interval '1 ms' WHERE host_id = %(host)s", params)
            return epoch, {row[0].bytes for row in others}

        return self._run(work)

    def take_over(self, grace_ms: int) -> tuple[uuid.UUID, int] | None:
        """Take over one host whose lease lapsed more than ``grace_ms`` ago: (that host, claims moved), or None.

        One transaction: the lost host's row locked (a claim of its in
        progress commits first; a host another taker holds is skipped), its
        unconfirmed claims moved to this host with the moment its lease
        lapsed (``resolve_after``: until this host's outbox holds them), its
        epoch moved on, so its renewals and claims fail from now on.
        """
        params = {"host": self.host, "grace_ms": grace_ms}

        def work(conn):
            with conn.transaction():
                lost = conn.execute(
                    "SELECT host_id, lease_until FROM bruto_hosts WHERE host_id <> %(host)s "
                    "AND lease_until < clock_timestamp() - %(grace_ms)s * interval '1 ms' "
                    "AND taken_lease IS DISTINCT FROM lease_until LIMIT 1 FOR UPDATE SKIP LOCKED",
                    params).fetchone()
                if lost is None:
                    return None
                params["lost"], params["lapsed"] = lost
                moved = conn.execute(
                    "UPDATE bruto_claims c SET host_id = %(host)s, resolve_after = %(lapsed)s "
                    "WHERE c.host_id = %(lost)s AND c.amount_cents > 0 "
                    "AND NOT EXISTS (SELECT 1 FROM bruto_payments p WHERE p.correlation_id = c.correlation_id)",
                    params).rowcount
                conn.execute("UPDATE bruto_hosts SET epoch = epoch + 1, taken_lease = lease_until "
                             "WHERE host_id = %(lost)s", params)
            return lost[0], moved

        return self._run(work)

    def taken(self, limit: int) -> tuple[list[tuple[bytes, int, int]], int]:
        """Payments taken over by this host that its outbox does not hold yet: ([(id, cents, lapsed at)], now),
        the moments in epoch µs of the database's clock."""
        def work(conn):
            return conn.execute(
                "SELECT correlation_id, amount_cents, "
                "(extract(epoch FROM resolve_after) * 1e6)::bigint, (extract(epoch FROM clock_timestamp()) * 1e6)::bigint "
                "FROM bruto_claims WHERE host_id = %s AND resolve_after IS NOT NULL LIMIT %s",
                (self.host, limit)).fetchall()

        rows = self._run(work)
        now = rows[0][3] if rows else 0
        return [(row[0].bytes, int(row[1]), int(row[2])) for row in rows], now

    def adopted(self, ids: list[bytes]) -> None:
        """This host's outbox holds these taken-over payments now: they are its claims like any other."""
        def work(conn):
            conn.execute("UPDATE bruto_claims SET resolve_after = NULL WHERE host_id = %s "
                         "AND correlation_id = ANY(%s::uuid[])", (self.host, [uuid.UUID(bytes=raw) for raw in ids]))

        self._run(work)

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
                # The cluster's purge epoch moves on: every other host's shared memory applies it
                # (apply_purge). This host applied it already (the local part came first), unless it
                # was behind on an earlier one: then it applies them at its next check, as the others.
                params["epoch"] = conn.execute("UPDATE bruto_purge_epoch SET epoch = epoch + 1 "
                                               "RETURNING epoch").fetchone()[0]
                conn.execute("UPDATE bruto_purges SET epoch = %(epoch)s WHERE host_id = %(host)s "
                             "AND slot = %(slot)s AND ticket = %(ticket)s", params)
                conn.execute("UPDATE bruto_hosts SET purge_epoch = %(epoch)s WHERE host_id = %(host)s "
                             "AND purge_epoch = %(epoch)s - 1", params)
                conn.execute("DELETE FROM bruto_claims c USING bruto_payments p "
                             "WHERE c.correlation_id = p.correlation_id AND c.host_id <> %(host)s", params)
                conn.execute("DELETE FROM bruto_claims WHERE host_id = %(host)s AND resolve_after IS NULL "
                             "AND NOT (correlation_id = ANY(%(held)s::uuid[]))", params)
                conn.execute("DELETE FROM bruto_payments")
                conn.execute("UPDATE bruto_hosts SET published = %(kept_from)s WHERE host_id = %(host)s", params)
                # The moment every other host drops what it confirmed up to, and keeps what came after:
                # after the deletes, so a confirmation after it was published after them too, and
                # neither they nor the claims' delete saw it (docs/SCALING.md, "Purges").
                conn.execute("UPDATE bruto_purge_epoch SET purged_at = clock_timestamp()")
            return True

        return self._run(work)

    def purge_reached(self, slot: int, ticket: int) -> bool:
        """Whether this host's purge ``(slot, ticket)`` is applied by every other live host.

        Live: its lease holds now. A host whose lease has lapsed is not
        waited for; it applies the purge before its shared memory answers
        again (docs/SCALING.md, "Purges"). A purge recorded before schema
        version 5 has no epoch: reached.
        """
        params = {"host": self.host, "slot": slot, "ticket": ticket}

        def work(conn):
            return conn.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM bruto_purges p JOIN bruto_hosts h ON h.purge_epoch < p.epoch "
                "WHERE p.host_id = %(host)s AND p.slot = %(slot)s AND p.ticket = %(ticket)s "
                "AND h.host_id <> %(host)s AND h.lease_until > clock_timestamp())", params).fetchone()[0]

        return self._run(work)

    def purge_epoch(self) -> tuple[int, int, int]:
        """(the cluster's purge epoch, the epoch this host has applied, when the latest purge committed as
        epoch µs of this host's clock, mapped through the database's)."""
        def work(conn):
            asked = now_us()
            row = conn.execute(
                "SELECT c.epoch, h.purge_epoch, (extract(epoch FROM c.purged_at) * 1e6)::bigint, "
                "(extract(epoch FROM clock_timestamp()) * 1e6)::bigint "
                "FROM bruto_purge_epoch c, bruto_hosts h WHERE h.host_id = %s", (self.host,)).fetchone()
            return row, asked

        (epoch, applied, purged_at, db_now), asked = self._run(work)
        return int(epoch), int(applied), local_moment(int(purged_at), int(db_now), asked)

    def apply_purge(self, epoch: int, upto: int, held: list[bytes], kept: Confirmations = NOTHING) -> None:
        """This host's shared memory applied the cluster's purges up to ``epoch``, keeping what it confirmed
        after the latest one committed (``kept``, its ledger up to index ``upto``): its claims go but those
        of the ids it still holds (``held``, the kept ones among them), its rows go but the kept ones, and
        the kept ones are in the record with their claims once this commits; it publishes from ``upto``.

        ``kept`` is written again rather than trusted to be there: a confirmation this host made just
        after the purge's moment, as its clock maps it, may have been published before the purge's
        deletes ran (ON CONFLICT: a row or claim there stays as it is).
        """
        params = {"host": self.host, "epoch": epoch, "upto": upto,
                  "held": [uuid.UUID(bytes=raw) for raw in held], "ids": [uuid.UUID(bytes=raw) for raw in kept.ids],
                  "processors": kept.processors, "amounts": kept.amounts, "requested_at": kept.requested_at}

        def work(conn):
            with conn.transaction():
                conn.execute("SELECT epoch FROM bruto_purge_epoch FOR SHARE")  # no purge commits meanwhile
                conn.execute("DELETE FROM bruto_claims WHERE host_id = %(host)s AND resolve_after IS NULL "
                             "AND NOT (correlation_id = ANY(%(held)s::uuid[]))", params)
                # What this host published of what it confirmed up to the purge goes, as those ledger
                # records did; what it confirmed after stays, and is there.
                conn.execute("DELETE FROM bruto_payments WHERE host_id = %(host)s "
                             "AND NOT (correlation_id = ANY(%(ids)s::uuid[]))", params)
                conn.execute(_PUBLISH, params)
                conn.execute("INSERT INTO bruto_claims (correlation_id, host_id, amount_cents) "
                             "SELECT id, %(host)s, amount FROM unnest(%(ids)s::uuid[], %(amounts)s::bigint[]) "
                             "AS kept (id, amount) ON CONFLICT (correlation_id) DO NOTHING", params)
                conn.execute("UPDATE bruto_hosts SET published = %(upto)s, "
                             "purge_epoch = greatest(purge_epoch, %(epoch)s) WHERE host_id = %(host)s", params)

        self._run(work)

    def summary(self, since: int | None, until: int | None) -> tuple[int, int | None, list[int], list[int]]:
        """(this host's position, the moment of the purge this host is behind on or None, requests per processor,
        cents per processor) in [since, until], inclusive; the moment in epoch µs of this host's clock."""
        params = {"host": self.host, "since": EARLIEST if since is None else since,
                  "until": LATEST if until is None else until}

        def work(conn):
            asked = now_us()
            rows = conn.execute(_SUMMARY, params).fetchall()
            return rows, asked

        published, behind, requests, cents = 0, None, [0, 0], [0, 0]
        rows, asked = self._run(work)
        for processor, count, total, purged_at, db_now in rows:
            if processor == -1:
                published = count or 0
                if total:
                    # Behind on a purge asked elsewhere: what this host's ledger holds from up to its
                    # moment goes when it applies it (bruto.shm.purge drop_before), so none of that counts.
                    behind = local_moment(int(purged_at), int(db_now), asked)
            else:
                requests[processor], cents[processor] = int(count), int(total)
        return published, behind, requests, cents
