"""Host leases, takeovers and the fence, statement by statement (bruto.cluster.database, real PostgreSQL)."""

from __future__ import annotations

import time
import uuid

import pytest

from bruto.cluster.database import Database
from bruto.cluster.database import Fenced

T = 1_765_000_000_000_000  # epoch µs


@pytest.fixture
def hosts(database_url):
    made = [Database(database_url, uuid.uuid4(), name) for name in ("a", "b")]
    try:
        yield made
    finally:
        for db in made:
            db.close()


def taken_over(db: Database, grace_ms: int, timeout: float = 30.0):
    """db.take_over, tried until a lease has lapsed long enough (generous: the lease here is 0.2 s)."""
    deadline = time.monotonic() + timeout
    while (found := db.take_over(grace_ms)) is None:
        assert time.monotonic() < deadline, "no lease lapsed"
        time.sleep(0.05)
    return found


def test_a_lapsed_lease_is_taken_over_once_and_the_host_back_is_fenced_until_it_reconciles(hosts):
    a, b = hosts
    epoch_a, others = a.reconcile([], lease_ms=200)
    epoch_b, _ = b.reconcile([], lease_ms=600_000)
    assert others == set()
    out, confirmed, unsent = (uuid.uuid4().bytes for _ in range(3))
    assert a.claim([out, confirmed], [100, 200], epoch_a) == ({out, confirmed}, set())
    a.publish([confirmed], [0], [200], [T], upto=1)
    assert b.take_over(grace_ms=600_000) is None  # a's lease has not lapsed that long

    assert taken_over(b, grace_ms=100) == (a.host, 1)  # what a had not confirmed, only
    assert b.take_over(grace_ms=100) is None  # once per lapse
    [(correlation_id, cents, lapsed)], now = b.taken(10)
    assert (correlation_id, cents) == (out, 100) and lapsed < now
    # Until b's outbox holds it, b's claim does not answer it as b's own (it comes in as a lookup).
    assert b.claim([out], [100], epoch_b) == (set(), set())

    # a, back: its renewal and its claims fail until it has reconciled.
    assert a.renew(epoch_a, 200) is False
    with pytest.raises(Fenced):
        a.claim([unsent], [5], epoch_a)
    epoch_again, others = a.reconcile([out, confirmed], lease_ms=600_000)
    assert epoch_again == epoch_a + 1 and others == {out}  # the payment taken over is dropped there
    assert a.claim([unsent], [5], epoch_again) == ({unsent}, set())
    assert a.renew(epoch_again, 600_000) is True

    b.adopted([out])
    assert b.taken(10) == ([], 0)
    assert b.claim([out], [100], epoch_b) == (set(), {out})  # b's own now, like any claim it made
