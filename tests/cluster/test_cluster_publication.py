"""Confirmations published to PostgreSQL, replay-safe, and the summary over them (real PostgreSQL).

The ledger here is an in-memory region laid out as the dispatcher's; the
database is a real one on the session's throwaway server.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from bruto.cluster.counters import read_cluster
from bruto.cluster.database import Database
from bruto.cluster.database import Unavailable
from bruto.cluster.link import ClusterLink
from bruto.cluster.summary import ClusterSummary
from bruto.config import Settings
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import LEDGER
from bruto.shm.ledger import LedgerWriter
from bruto.shm.region import Region

T = 1_765_000_000_000_000  # epoch µs, whole milliseconds


class Host:
    """One host's ledger, publisher and summary over a database."""

    def __init__(self, tmp_path, name: str, url: str):
        shm = tmp_path / name
        shm.mkdir()
        self.settings = Settings(shm_dir=str(shm), database_url=url)
        self.ledger = Region.in_memory(LEDGER, 64)
        self.writer = LedgerWriter(self.ledger)
        self.link = ClusterLink(self.settings, self.ledger)
        self.summary = ClusterSummary(self.settings, self.ledger)

    def confirm(self, requested_at: int, cents: int, processor: int = DEFAULT) -> bytes:
        correlation_id = uuid.uuid4().bytes
        self.writer.append(correlation_id, requested_at, cents, processor)
        return correlation_id

    def crash(self) -> None:
        """A dispatcher's restart: a new link, whose position comes from the database."""
        self.link = ClusterLink(self.settings, self.ledger)


def rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT correlation_id, processor, amount_cents, requested_at FROM bruto_payments "
                            "ORDER BY requested_at").fetchall()


def test_what_is_published_is_exactly_what_the_ledger_holds(tmp_path, database_url):
    host = Host(tmp_path, "a", database_url)
    first = host.confirm(T, 1990)
    second = host.confirm(T + 1000, 1, FALLBACK)
    assert host.link.publish_once() == 2
    assert rows(database_url) == [(uuid.UUID(bytes=first), DEFAULT, 1990, T),
                                  (uuid.UUID(bytes=second), FALLBACK, 1, T + 1000)]
    assert host.link.publish_once() == 0
    assert read_cluster(host.settings.shm_dir)["unpublished"] == 0


def test_a_crash_before_the_position_moved_republishes_without_doubling(tmp_path, database_url):
    host = Host(tmp_path, "a", database_url)
    for n in range(5):
        host.confirm(T + n * 1000, 100)
    host.link.publish_once()
    # As if the dispatcher died between inserting and keeping the position:
    # the position is back at 0, the rows are there.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE bruto_hosts SET published = 0")
    host.confirm(T + 9000, 100)
    host.crash()
    assert host.link.publish_once() == 6  # read from the ledger again ...
    assert len(rows(database_url)) == 6  # ... stored once each
    assert host.summary.totals(None, None).requests == (6, 0)


def test_this_hosts_summary_counts_its_unpublished_confirmations_once(tmp_path, database_url):
    a, b = Host(tmp_path, "a", database_url), Host(tmp_path, "b", database_url)
    for n in range(3):
        a.confirm(T + n * 1000, 1000)
    a.link.publish_once()
    a.confirm(T + 5000, 50, FALLBACK)  # confirmed on a, not published yet
    b.confirm(T + 6000, 7)
    b.link.publish_once()
    found = a.summary.totals(None, None)
    assert (found.requests, found.amount_cents) == ((4, 1), (3007, 50))
    # b does not see a's unpublished one until a publishes it; then both agree.
    assert b.summary.totals(None, None).requests == (4, 0)
    a.link.publish_once()
    assert a.summary.totals(None, None) == b.summary.totals(None, None)
    assert b.summary.totals(None, None).requests == (4, 1)


def test_summary_bounds_are_inclusive_in_the_database_and_in_the_unpublished_part(tmp_path, database_url):
    host = Host(tmp_path, "a", database_url)
    for at in (T - 1000, T, T + 1000, T + 2000):
        host.confirm(at, 100)
    host.link.publish_once()
    for at in (T - 1000, T, T + 1000, T + 2000):
        host.confirm(at, 10, FALLBACK)
    found = host.summary.totals(T, T + 1000)
    assert (found.requests, found.amount_cents) == ((2, 2), (200, 20))
    assert host.summary.totals(None, T).requests == (2, 2)
    assert host.summary.totals(T + 2000, None).requests == (1, 1)


def test_an_unreachable_database_gives_no_figure(tmp_path):
    from gateway import free_port

    host = Host(tmp_path, "a", f"postgresql://postgres@127.0.0.1:{free_port()}/none")
    host.confirm(T, 100)
    with pytest.raises(Unavailable):
        host.summary.totals(None, None)
    with pytest.raises(Unavailable):
        host.link.publish_once()


def test_a_window_of_the_summary_is_read_from_its_index(database_url):
    db = Database(database_url, uuid.uuid4(), "test")
    try:
        db.summary(None, None)  # creates the schema
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("INSERT INTO bruto_payments SELECT gen_random_uuid(), n %% 2, 1990, %s + n * 1000, %s "
                         "FROM generate_series(1, 100000) AS n", (T, db.host))
            conn.execute("VACUUM ANALYZE bruto_payments")
            plan = "\n".join(row[0] for row in conn.execute(
                "EXPLAIN SELECT processor, count(*), sum(amount_cents) FROM bruto_payments "
                "WHERE requested_at >= %s AND requested_at <= %s GROUP BY processor", (T, T + 15_000_000)))
        assert "Index Only Scan using bruto_payments_by_time" in plan, plan
    finally:
        db.close()


def test_a_purge_of_the_record_keeps_what_another_host_holds_unconfirmed_and_happens_once(tmp_path, database_url):
    a, b = Host(tmp_path, "a", database_url), Host(tmp_path, "b", database_url)
    confirmed_a = [a.confirm(T + n * 1000, 100) for n in range(3)]
    a.link.db.claim(confirmed_a, [100] * 3, epoch=0)
    a.link.publish_once()
    b.link.db.claim([b.confirm(T, 5)], [5], epoch=0)
    b.link.publish_once()
    in_flight_on_b = uuid.uuid4().bytes
    b.link.db.claim([in_flight_on_b], [9], epoch=0)  # claimed by b, not confirmed yet
    assert a.link.db.purge(slot=0, ticket=1, kept_from=3, held=[]) is True
    with psycopg.connect(database_url) as conn:
        claims = conn.execute("SELECT correlation_id FROM bruto_claims").fetchall()
    assert rows(database_url) == [] and claims == [(uuid.UUID(bytes=in_flight_on_b),)]
    after = b.confirm(T + 7000, 9)
    b.link.publish_once()
    assert a.link.db.purge(slot=0, ticket=1, kept_from=3, held=[]) is False  # carried out again after a crash
    assert [row[0] for row in rows(database_url)] == [uuid.UUID(bytes=after)]
    assert a.summary.totals(None, None).requests == (1, 0)
