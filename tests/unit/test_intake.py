"""Intake slabs: slot claiming, takeover after a worker dies, refusing when full."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from bruto.config import Settings
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.intake import NoFreeSlot
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake


@pytest.fixture
def settings(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=2, intake_capacity=4)
    create_all(settings)
    return settings


def test_each_writer_gets_its_own_slot(settings):
    first, second = IntakeWriter.claim(settings), IntakeWriter.claim(settings)
    assert {first.slot, second.slot} == {0, 1}
    with pytest.raises(NoFreeSlot, match="BRUTO_INTAKE_SLOTS"):
        IntakeWriter.claim(settings)


def _hold_slot_and_append(shm_dir, ready):
    writer = IntakeWriter.claim(Settings(shm_dir=shm_dir, intake_slots=2, intake_capacity=4))
    writer.append(b"\x01" * 16, 1990, 1)
    ready.set()
    signal.pause()


def test_a_killed_workers_slot_is_taken_over_with_its_records(settings):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    worker = ctx.Process(target=_hold_slot_and_append, args=(settings.shm_dir, ready))
    worker.start()
    assert ready.wait(10)
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()

    replacement = IntakeWriter.claim(settings)
    assert replacement.slot == 0
    replacement.append(b"\x02" * 16, 500, 2)
    slab = open_intake(settings, 0)
    assert int(slab.counters["written"]) == 2
    assert slab.records[0]["correlation_id"].tobytes() == b"\x01" * 16
    assert slab.records[1]["correlation_id"].tobytes() == b"\x02" * 16


def test_a_full_slab_refuses_and_keeps_what_it_has(settings):
    writer = IntakeWriter.claim(settings)
    for i in range(4):
        writer.append(bytes([i]) * 16, 100 + i, i)
    with pytest.raises(IntakeFull):
        writer.append(b"\x09" * 16, 999, 9)
    slab = open_intake(settings, writer.slot)
    assert int(slab.counters["written"]) == 4
    assert list(slab.records["amount_cents"]) == [100, 101, 102, 103]

    open_dispatch(settings).records[writer.slot]["drained"] = 1  # the dispatcher took one
    writer.append(b"\x09" * 16, 999, 9)
    assert int(slab.records[0]["amount_cents"]) == 999  # the ring wrapped into the drained slot
