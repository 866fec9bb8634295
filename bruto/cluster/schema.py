"""bruto's tables in PostgreSQL, created and upgraded by bruto itself.

Each migration runs once, in order, recorded in ``bruto_schema``. Every host
runs :func:`migrate` when it first reaches the database; all of it happens in
one transaction under a transaction-level advisory lock, so hosts starting at
once take turns, the first does the work and the others find it done. A
database whose schema is newer than this bruto knows is refused rather than
misread.
"""

from __future__ import annotations

# Any fixed 64-bit number, the same in every bruto: the key of the lock.
MIGRATION_LOCK = 0x62727574_6f000001

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
        CREATE TABLE bruto_hosts (
            host_id    uuid PRIMARY KEY,
            label      text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            seen_at    timestamptz NOT NULL DEFAULT now(),
            -- the host's ledger index below which its confirmations are in bruto_payments
            published  bigint NOT NULL DEFAULT 0
        );
        -- The claim made before a payment is sent: one row per correlationId, cluster-wide.
        CREATE TABLE bruto_claims (
            correlation_id uuid PRIMARY KEY,
            host_id        uuid NOT NULL REFERENCES bruto_hosts,
            claimed_at     timestamptz NOT NULL DEFAULT now()
        );
        -- What a processor confirmed: exactly what the host's ledger holds.
        CREATE TABLE bruto_payments (
            correlation_id uuid PRIMARY KEY,
            processor      smallint NOT NULL CHECK (processor IN (0, 1)),
            amount_cents   bigint NOT NULL,
            requested_at   bigint NOT NULL,  -- epoch microseconds, whole milliseconds: what was sent
            host_id        uuid NOT NULL
        );
        -- GET /payments-summary: a window of requested_at, answered from the index alone.
        CREATE INDEX bruto_payments_by_time ON bruto_payments (requested_at) INCLUDE (processor, amount_cents);
    """),
    (2, """
        -- The last service-health report of each processor, written by the one host that polls
        -- (bruto.cluster.health), read by the others.
        CREATE TABLE bruto_health (
            processor       smallint PRIMARY KEY CHECK (processor IN (0, 1)),
            failing         boolean NOT NULL,
            min_response_ms integer NOT NULL,
            asked_at        bigint NOT NULL,  -- epoch microseconds: when the call behind the report was made
            host_id         uuid NOT NULL
        );
    """),
    (3, """
        -- Purges carried out in the cluster's record: one row per purge ticket of a host's intake
        -- slot, so a host that carries a purge out again after a crash does it once.
        CREATE TABLE bruto_purges (
            host_id   uuid NOT NULL,
            slot      integer NOT NULL,
            ticket    bigint NOT NULL,
            purged_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (host_id, slot, ticket)
        );
    """),
    (4, """
        -- Host leases (bruto.cluster.link): a host sends only while its lease holds. Another host
        -- takes a lost host's unconfirmed claims over once the lease has lapsed long enough, and
        -- moves its epoch on: the fence a returning host finds (its renewals and claims name the
        -- epoch they hold). taken_lease: the lease_until a takeover was done for (once per lapse).
        ALTER TABLE bruto_hosts ADD COLUMN lease_until timestamptz NOT NULL DEFAULT now(),
                                ADD COLUMN epoch bigint NOT NULL DEFAULT 0,
                                ADD COLUMN taken_lease timestamptz;
        -- What a taker needs to send a payment again: its amount (0 in claims made before this
        -- version: those cannot be sent again by another host); and, from a takeover until the
        -- taker holds the payment in its outbox, the moment the lost host's lease lapsed.
        ALTER TABLE bruto_claims ADD COLUMN amount_cents bigint NOT NULL DEFAULT 0,
                                 ADD COLUMN resolve_after timestamptz;
        CREATE INDEX bruto_claims_taken ON bruto_claims (host_id) WHERE resolve_after IS NOT NULL;
    """),
    (5, """
        -- A purge on any host is a purge of every host's shared memory (docs/SCALING.md, "Purges"):
        -- each purge of the cluster's record moves the cluster's purge epoch on (one row, locked by
        -- the purge for update), and each host says up to which epoch its shared memory has applied.
        CREATE TABLE bruto_purge_epoch (
            only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            epoch     bigint NOT NULL DEFAULT 0,
            purged_at timestamptz NOT NULL DEFAULT now()  -- when the latest purge committed
        );
        INSERT INTO bruto_purge_epoch DEFAULT VALUES;
        ALTER TABLE bruto_hosts ADD COLUMN purge_epoch bigint NOT NULL DEFAULT 0;
        -- The epoch each purge moved the cluster to (NULL: purged before this version).
        ALTER TABLE bruto_purges ADD COLUMN epoch bigint;
    """),
)

LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer bruto than this one."""


def migrate(conn) -> list[int]:
    """Bring the schema to :data:`LATEST`; returns the versions this call applied (none: already there)."""
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS bruto_schema ("
                     "version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {row[0] for row in conn.execute("SELECT version FROM bruto_schema")}
        if done and max(done) > LATEST:
            raise SchemaTooNew(f"the database's bruto schema is version {max(done)}; this bruto knows up to {LATEST}")
        for version, sql in MIGRATIONS:
            if version not in done:
                conn.execute(sql)
                conn.execute("INSERT INTO bruto_schema (version) VALUES (%s)", (version,))
                applied.append(version)
    return applied
