"""The cluster's purge epoch in PostgreSQL (schema version 5): the statements a purge on any host rests on.

A purge of the cluster's record moves the epoch on; the purging host has applied it, every other host is
behind until its shared memory applies it; the purging host's purge is reached once every live host (lease
holding) has. docs/SCALING.md ("Purges") has the protocol these statements serve and what is not wired yet.
"""

from __future__ import annotations

import uuid

import psycopg

from bruto.cluster.database import Database
from bruto.cluster.host import host_id
from bruto.timefmt import now_us

LEASE_MS = 60_000


def a_host(tmp_path, name: str, url: str) -> Database:
    shm = tmp_path / name
    shm.mkdir()
    return Database(url, host_id(str(shm)), name)


def claims(url: str) -> set[bytes]:
    with psycopg.connect(url) as conn:
        return {row[0].bytes for row in conn.execute("SELECT correlation_id FROM bruto_claims")}


def test_a_purge_is_reached_only_once_every_live_host_has_applied_it(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)  # both leases hold
    assert a.purge_epoch()[:2] == (0, 0) and b.purge_epoch()[:2] == (0, 0)
    before = now_us()
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    epoch, applied, purged_at = b.purge_epoch()
    assert (epoch, applied) == (1, 0)  # b's shared memory is behind the cluster's record
    assert before - 1_000_000 <= purged_at <= now_us() + 1_000_000  # the moment, in b's clock
    assert a.purge_epoch()[:2] == (1, 1)  # a applied it first (the local part comes before the record's)
    assert a.purge_reached(slot=0, ticket=1) is False  # b is live: a's purge waits for it
    b.apply_purge(epoch, kept_from=0, held=[])
    assert b.purge_epoch()[:2] == (1, 1)
    assert a.purge_reached(slot=0, ticket=1) is True


def test_a_host_whose_lease_lapsed_is_not_waited_for_and_finds_itself_behind(tmp_path, database_url):
    a, dead = a_host(tmp_path, "a", database_url), a_host(tmp_path, "dead", database_url)
    assert dead.renew(0, 1) and a.renew(0, LEASE_MS)  # dead's lease lapses a millisecond later
    with psycopg.connect(database_url) as conn:
        conn.execute("SELECT pg_sleep(0.01)")
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert a.purge_reached(slot=0, ticket=1) is True  # not waited for ...
    assert dead.purge_epoch()[:2] == (1, 0)  # ... and once back it is behind: it applies before it answers
    dead.apply_purge(1, kept_from=0, held=[])
    assert dead.purge_epoch()[:2] == (1, 1)


def test_applying_a_purge_drops_this_hosts_claims_but_what_it_still_holds(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)
    queued, out = uuid.uuid4().bytes, uuid.uuid4().bytes
    b.claim([queued, out], [100, 200], epoch=0)
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert claims(database_url) == {queued, out}  # a leaves b's unconfirmed claims to b
    b.apply_purge(1, kept_from=5, held=[out])  # b's purge freed the queued one; the other is out
    assert claims(database_url) == {out}
    assert b.published() == 5
    assert b.claim([queued], [100], epoch=0) == ({queued}, set())  # its id is new again


def test_two_purges_in_turn_leave_a_host_behind_on_the_other_ones(tmp_path, database_url):
    a, b = a_host(tmp_path, "a", database_url), a_host(tmp_path, "b", database_url)
    assert a.renew(0, LEASE_MS) and b.renew(0, LEASE_MS)
    assert a.purge(slot=0, ticket=1, kept_from=0, held=[]) is True
    assert b.purge(slot=0, ticket=1, kept_from=0, held=[]) is True  # before it applied a's
    assert b.purge_epoch()[:2] == (2, 0)  # its own does not make it current: it still applies a's
    assert a.purge_epoch()[:2] == (2, 1)
    assert not a.purge_reached(0, 1) and not b.purge_reached(0, 1)
    a.apply_purge(2, kept_from=0, held=[])
    b.apply_purge(2, kept_from=0, held=[])
    assert a.purge_reached(0, 1) and b.purge_reached(0, 1)
