"""bruto.cluster.lookup.decide: every row of the module's table, including those two real hosts reach only by chance.

(tests/cluster/test_cluster_lookup.py reaches the common rows on two real
hosts; here each row is one case, the database's answer given as a Record.)
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from bruto.cluster.lookup import Claim
from bruto.cluster.lookup import Record
from bruto.cluster.lookup import decide
from bruto.shm.lookup import AGED_OUT
from bruto.shm.lookup import PURGED
from bruto.shm.lookup import NotHeld
from bruto.shm.lookup import Payment

HERE, THERE = uuid.uuid4(), uuid.uuid4()
ID = uuid.uuid4().bytes
WAITING = Payment(ID, "waiting", 1234)
STORED = Payment(ID, "confirmed", 1234, "fallback", 1_752_582_896_123_000)
CLAIMED_THERE = Claim(THERE, "there:/dev/shm/bruto", 1_752_582_896_000_000)
CLAIMED_HERE = Claim(HERE, "here:/dev/shm/bruto", 1_752_582_896_000_000)
NEVER = NotHeld("never_accepted", "bruto never accepted a payment with this correlationId")


def answer(local, record):
    found = decide(ID, local, record, HERE, "here:/dev/shm/bruto")
    assert found.retry_after is None
    return found.status, orjson.loads(found.body)


@pytest.mark.parametrize("local", [WAITING, NEVER, NotHeld("aged_out", AGED_OUT)])
def test_a_confirmation_in_the_record_is_the_answer_whatever_this_host_holds_unsent(local):
    status, body = answer(local, Record(CLAIMED_THERE, STORED, "there:/dev/shm/bruto"))
    assert (status, body) == (200, {"correlationId": str(uuid.UUID(bytes=ID)), "state": "confirmed", "amount": 12.34,
                                    "processor": "fallback", "requestedAt": "2025-07-15T12:34:56.123Z",
                                    "host": "there:/dev/shm/bruto"})


def test_a_confirmation_published_after_a_purge_dropped_its_claim_is_still_the_answer():
    assert answer(NEVER, Record(None, STORED, "there:/dev/shm/bruto"))[1]["state"] == "confirmed"


@pytest.mark.parametrize("local", [WAITING, NEVER])
def test_another_hosts_claim_is_claimed_by_that_host(local):
    assert answer(local, Record(CLAIMED_THERE, None)) == (200, {
        "correlationId": str(uuid.UUID(bytes=ID)), "state": "claimed", "host": "there:/dev/shm/bruto",
        "claimedAt": "2025-07-15T12:34:56.000Z"})


@pytest.mark.parametrize("claim", [CLAIMED_HERE, None])
def test_a_copy_waiting_here_that_no_other_host_claimed_is_waiting_here(claim):
    assert answer(WAITING, Record(claim, None)) == (200, {"correlationId": str(uuid.UUID(bytes=ID)),
                                                          "state": "waiting", "amount": 12.34,
                                                          "host": "here:/dev/shm/bruto"})


@pytest.mark.parametrize("local", [NotHeld("aged_out", AGED_OUT), NotHeld("purged", PURGED)])
def test_what_this_host_claimed_and_no_longer_holds_is_its_own_404(local):
    """E.g. a payment rejected here and aged out of the ring: its claim stays, this host's reason is the answer."""
    assert answer(local, Record(CLAIMED_HERE, None)) == (404, orjson.loads(local.json(ID)))


@pytest.mark.parametrize("local, reason", [(NEVER, "unknown"), (NotHeld("aged_out", AGED_OUT), "unknown"),
                                           (NotHeld("purged", PURGED), "purged")])
def test_no_record_anywhere_is_404_and_says_the_cluster_has_none(local, reason):
    status, body = answer(local, Record(None, None))
    assert status == 404 and body["reason"] == reason and body["cluster"] == "no_record"
    assert "The cluster's record has no claim or confirmation of it either" in body["error"]
