"""Load shedding (BRUTO_SHED_BACKLOG): 503 + Retry-After once too many payments wait, 202 again once fewer do."""

from __future__ import annotations

import uuid

import falcon.testing
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bruto.config import Settings
from bruto.gateway.app import create_app
from bruto.shm import snapshot
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.intake import Overloaded
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_outbox


def payment() -> dict:
    return {"correlationId": str(uuid.uuid4()), "amount": 19.90}


@pytest.fixture
def settings(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=8, ledger_capacity=4, shed_backlog=5)
    create_all(settings)
    return settings


def test_past_the_backlog_limit_payments_get_503_retry_after_and_nothing_is_kept(settings):
    client = falcon.testing.TestClient(create_app(settings))
    outbox = open_outbox(settings)
    outbox.counters["in_use"] = 3  # as the dispatcher counts what it holds
    assert [client.simulate_post("/payments", json=payment()).status_code for _ in range(2)] == [202, 202]
    shed = client.simulate_post("/payments", json=payment())
    assert shed.status_code == 503
    assert shed.headers["Retry-After"] == "1"
    assert shed.json == {"error": "too many payments are waiting, retry later"}
    snap = snapshot.read(settings.shm_dir)
    assert snap["gateway"]["accepted"] == 2
    assert snap["gateway"]["rejections"]["overloaded"] == 1
    assert snap["gateway"]["rejections"]["intake_full"] == 0

    # The dispatcher catches up (drains intake, confirms): payments are accepted again, unprompted.
    open_dispatch(settings).records[0]["drained"] = 2
    outbox.counters["in_use"] = 0
    assert client.simulate_post("/payments", json=payment()).status_code == 202


def test_a_full_slab_is_still_intake_full_whatever_the_shedding_limit(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=4, shed_backlog=1000)
    create_all(settings)
    writer = IntakeWriter.claim(settings)
    for n in range(4):
        writer.append(bytes([n]) * 16, 1, 1)
    with pytest.raises(IntakeFull) as raised:
        writer.append(b"\xff" * 16, 1, 1)
    assert type(raised.value) is IntakeFull


@hypothesis_settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 12), capacity=st.integers(1, 8),
       steps=st.lists(st.tuples(st.sampled_from(["pay", "drain", "confirm"]), st.integers(0, 4)), max_size=60))
def test_a_payment_is_accepted_exactly_while_fewer_than_the_limit_wait(tmp_path_factory, limit, capacity, steps):
    """Against a model of the dispatcher: accepted iff backlog + outbox < min(limit, capacity); never beyond room."""
    settings = Settings(shm_dir=str(tmp_path_factory.mktemp("shed")), intake_slots=1, intake_capacity=capacity,
                        shed_backlog=limit)
    create_all(settings)
    writer = IntakeWriter.claim(settings)
    cursor = open_dispatch(settings).records[0]
    outbox = open_outbox(settings).counters
    written = drained = held = 0
    for action, n in steps:
        if action == "pay":
            waiting = written - drained + held
            try:
                writer.append(written.to_bytes(16, "big"), 1, 1)
                accepted = True
            except Overloaded:
                accepted = False
                assert written - drained < capacity
            except IntakeFull:
                accepted = False
                assert written - drained == capacity
            assert accepted == (waiting < min(limit, capacity))
            written += accepted
        elif action == "drain":
            moved = min(n, written - drained)
            drained += moved
            held += moved
            cursor["drained"], outbox["in_use"] = drained, held
        else:
            held -= min(n, held)
            outbox["in_use"] = held
        assert written - drained <= capacity
