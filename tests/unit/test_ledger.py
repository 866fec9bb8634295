"""Ledger sums: inclusive bounds, exact cents, the ring wrapping, purges (by index, and up to a moment)."""

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


def confirmed_at(region, times):
    """A ledger whose record ``i`` was confirmed at ``times[i]``."""
    writer = LedgerWriter(region)
    for i, moment in enumerate(times):
        writer.append(i.to_bytes(16, "big"), moment, 100, DEFAULT, confirmed_at=moment)
    return writer


@pytest.mark.parametrize(("moment", "index"), [(5, 0), (10, 1), (25, 2), (40, 4), (50, 4)])
def test_the_records_confirmed_after_a_moment_are_the_ledgers_tail_from_that_index(region, moment, index):
    assert confirmed_at(region, [10, 20, 30, 40]).confirmed_after(moment) == index


def test_a_purge_up_to_a_moment_keeps_only_what_was_confirmed_after_it(region):
    writer = confirmed_at(region, [10, 20, 30, 40])
    writer.purge(below=writer.confirmed_after(25))
    assert totals(region, None, None).requests == (2, 0)
    assert writer.counted() == (2, 4)
    assert writer.confirmed_after(25) == 2  # applied again: nothing more goes
    assert writer.confirmed_after(45) == 4 and writer.confirmed_after(1) == 2  # never before the start


def test_a_clock_stepped_back_drops_a_prefix_up_to_the_last_record_confirmed_by_the_moment(region):
    # 30 was confirmed after 25, but before 20's record: what goes is a prefix, up to and with 20.
    assert confirmed_at(region, [10, 30, 20, 40]).confirmed_after(25) == 3


def test_the_bound_reads_only_records_the_ring_still_holds(region):
    writer = confirmed_at(region, list(range(1, 11)))  # 10 in a ring of 8: records 0 and 1 are overwritten
    assert writer.counted() == (2, 10)
    assert writer.confirmed_after(0) == 2 and writer.confirmed_after(5) == 5
