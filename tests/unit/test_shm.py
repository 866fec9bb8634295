"""Shared-memory regions: checked headers, atomic creation, publication order."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from bruto.config import Settings
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import INTAKE
from bruto.shm.layout import LEDGER
from bruto.shm.layout import create_all
from bruto.shm.layout import open_dispatch
from bruto.shm.layout import open_intake
from bruto.shm.region import Region
from bruto.shm.region import RegionError


def test_a_created_region_is_attached_with_its_layout(tmp_path):
    path = str(tmp_path / "ledger.bin")
    created = Region.open(path, INTAKE, 1000)
    created.records[3]["amount_cents"] = 1990
    created.counters["written"] = 4
    attached = Region.attach(path, INTAKE, 1000)
    assert attached.capacity == 1000
    assert int(attached.counters["written"]) == 4
    assert int(attached.records[3]["amount_cents"]) == 1990


def test_a_columnar_region_keeps_each_field_contiguous(tmp_path):
    path = str(tmp_path / "ledger.bin")
    created = Region.open(path, LEDGER, 1000)
    created.columns["amount_cents"][999] = 1990
    created.columns["processor"][0] = 1
    attached = Region.attach(path, LEDGER, 1000)
    assert attached.columns["amount_cents"].flags["C_CONTIGUOUS"]
    assert int(attached.columns["amount_cents"][999]) == 1990
    assert int(attached.columns["processor"][0]) == 1
    assert int(attached.columns["requested_at"][999]) == 0  # fields do not overlap


def test_attaching_a_missing_region_fails_clearly(tmp_path):
    with pytest.raises(RegionError, match="does not exist"):
        Region.attach(str(tmp_path / "nope.bin"), LEDGER)


def test_attaching_a_foreign_file_fails_clearly(tmp_path):
    path = tmp_path / "ledger.bin"
    path.write_bytes(b"this is not a region at all, just some bytes" * 4)
    with pytest.raises(RegionError, match="not a bruto region"):
        Region.attach(str(path), LEDGER)


def test_attaching_a_short_file_fails_clearly(tmp_path):
    path = tmp_path / "ledger.bin"
    path.write_bytes(b"BRUTO")
    with pytest.raises(RegionError, match="too short"):
        Region.attach(str(path), LEDGER)


def test_attaching_another_kind_or_capacity_fails_clearly(tmp_path):
    path = str(tmp_path / "region.bin")
    Region.open(path, INTAKE, 64)
    with pytest.raises(RegionError, match="kind b'intake', expected b'ledger'"):
        Region.attach(path, LEDGER)
    with pytest.raises(RegionError, match="capacity 64, expected 128"):
        Region.attach(path, INTAKE, 128)


def test_attaching_another_layout_version_fails_clearly(tmp_path):
    path = str(tmp_path / "ledger.bin")
    Region.open(path, LEDGER, 16)
    newer = LEDGER.__class__(LEDGER.kind, LEDGER.version + 1, LEDGER.counters, LEDGER.record)
    with pytest.raises(RegionError, match=f"layout version {LEDGER.version}, expected {LEDGER.version + 1}"):
        Region.attach(path, newer)


def _create_everything(shm_dir):
    create_all(Settings(shm_dir=shm_dir, intake_slots=4, ledger_capacity=4096))


def test_processes_racing_to_create_share_one_set_of_files(tmp_path):
    shm_dir = str(tmp_path / "shm")
    ctx = multiprocessing.get_context("fork")
    racers = [ctx.Process(target=_create_everything, args=(shm_dir,)) for _ in range(6)]
    for p in racers:
        p.start()
    for p in racers:
        p.join()
        assert p.exitcode == 0
    names = sorted(p.name for p in (tmp_path / "shm").iterdir())
    assert names == ["dispatch.bin", "health.bin", "index.bin", "intake-00.bin", "intake-01.bin", "intake-02.bin",
                     "intake-03.bin", "ledger.bin", "metrics.bin", "outbox.bin", "rejected.bin"]


def _append_many(shm_dir, count):
    writer = IntakeWriter.claim(Settings(shm_dir=shm_dir, intake_slots=1, intake_capacity=1 << 16, shed_backlog=1 << 16))
    for i in range(count):
        writer.append(i.to_bytes(16, "big"), i + 1, i)


def test_a_reader_never_sees_a_published_record_half_written(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=1 << 16, shed_backlog=1 << 16)
    create_all(settings)
    slab = open_intake(settings, 0)
    writer = multiprocessing.get_context("fork").Process(target=_append_many, args=(settings.shm_dir, 60_000))
    writer.start()
    checked = 0
    while writer.is_alive() or checked < int(slab.counters["written"]):
        written = int(slab.counters["written"])  # counter first, then the records below it
        records = slab.records[checked:written]
        expected = np.arange(checked, written)
        assert (records["amount_cents"] == expected + 1).all()
        assert (records["accepted_at"] == expected).all()
        checked = written
    writer.join()
    assert checked == 60_000


def test_dispatch_cursors_are_one_record_per_intake_slot(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=3)
    assert open_dispatch(settings).capacity == 3
