"""Ledger sums: inclusive bounds, exact cents, the ring wrapping, purges."""

from __future__ import annotations

import pytest

from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import LEDGER
from bruto.shm.ledger import LedgerWriter
from bruto.shm.ledger import totals
from bruto.shm.region import Region


@pytest.fixture
def region(tmp_path):
    return Region.open(str(tmp_path / "ledger.bin"), LEDGER, 8)


def fill(region, rows):
    writer = LedgerWriter(region)
    for i, (requested_at, cents, processor) in enumerate(rows):
        writer.append(i.to_bytes(16, "big"), requested_at, cents, processor)
    return writer


def test_empty_ledger_sums_to_zero(region):
    assert totals(region, None, None).requests == (0, 0)
    assert totals(region, None, None).amount_cents == (0, 0)


def test_bounds_are_inclusive_on_both_sides(region):
    fill(region, [(100, 1990, DEFAULT), (200, 1990, DEFAULT), (300, 1000, FALLBACK), (400, 1, DEFAULT)])
    found = totals(region, 200, 300)
    assert found.requests == (1, 1)
    assert found.amount_cents == (1990, 1000)
    assert totals(region, 201, 299).requests == (0, 0)
    assert totals(region, None, 200).requests == (2, 0)
    assert totals(region, 300, None).requests == (1, 1)


def test_cents_add_up_exactly(region):
    fill(region, [(1, 10, DEFAULT)] * 3 + [(1, 20, FALLBACK)] * 3)
    # 0.10 + 0.10 + 0.10 is 0.30 exactly here, not 0.30000000000000004
    assert totals(region, None, None).amount_cents == (30, 60)


def test_a_wrapped_ring_keeps_the_newest_and_flags_windows_that_reach_lost_data(region):
    fill(region, [(t, 100, DEFAULT) for t in range(1, 11)])  # 10 records in a ring of 8
    assert totals(region, None, None).requests == (8, 0)
    assert totals(region, 3, 10).requests == (8, 0)
    assert totals(region, None, None).truncated
    assert totals(region, 2, 10).truncated        # records at 1 and 2 were overwritten
    assert not totals(region, 3, 10).truncated


def test_purge_forgets_everything_before_it(region):
    writer = fill(region, [(1, 100, DEFAULT), (2, 100, FALLBACK)])
    writer.purge()
    assert totals(region, None, None).requests == (0, 0)
    writer.append(b"\x07" * 16, 3, 250, FALLBACK)
    assert totals(region, None, None).amount_cents == (0, 250)
    assert [region.columns["correlation_id"][slot].tobytes() for slot in retained_slots(writer)] == [b"\x07" * 16]


def test_a_purge_below_an_index_keeps_what_was_appended_after_it(region):
    writer = fill(region, [(1, 100, DEFAULT), (2, 100, FALLBACK)])
    writer.purge(below=1)
    assert totals(region, None, None).requests == (0, 1)
    writer.purge(below=0)  # a purge never brings records back
    assert totals(region, None, None).requests == (0, 1)


def test_append_reports_the_id_the_ring_overwrote(region):
    writer = fill(region, [(t, 100, DEFAULT) for t in range(8)])  # full ring of 8
    assert writer.next_slot() == 0
    assert writer.append(b"\x09" * 16, 9, 100, DEFAULT) == (0).to_bytes(16, "big")
    ids = {region.columns["correlation_id"][slot].tobytes() for slot in retained_slots(writer)}
    assert b"\x09" * 16 in ids and (0).to_bytes(16, "big") not in ids
    assert len(retained_slots(writer)) == 8


def retained_slots(writer: LedgerWriter) -> list[int]:
    return [slot for part in writer.retained() for slot in range(part.start, part.stop)]
