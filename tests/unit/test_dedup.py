"""The dedup index against a dict: every operation, in any order, with many collisions."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from bruto.dispatcher.dedup import DedupIndex
from bruto.dispatcher.dedup import table_slots
from bruto.shm.layout import OUTBOX

LEDGER, ENTRIES = 16, 8  # 24 ids in a table of 64 slots: probe runs are long


class IndexAgainstADict(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ledger_ids = np.zeros(LEDGER, dtype="V16")
        self.entries = np.zeros(ENTRIES, dtype=OUTBOX.record)
        self.index = DedupIndex(self.ledger_ids, self.entries["correlation_id"])
        self.model: dict[bytes, int] = {}  # key -> ref

    def _free_refs(self):
        used = set(self.model.values())
        return [ref for ref in range(LEDGER + ENTRIES) if ref not in used]

    def _write(self, ref, key):
        if ref < LEDGER:
            self.ledger_ids[ref] = key
        else:
            self.entries[ref - LEDGER]["correlation_id"] = key

    @rule(key=st.binary(min_size=16, max_size=16), pick=st.integers(0, 99))
    def insert(self, key, pick):
        free = self._free_refs()
        if not free:
            return
        ref = free[pick % len(free)]
        if key not in self.model:
            self._write(ref, key)  # as the dispatcher does: the entry is written with its id
        assert self.index.insert(key, ref) == self.model.get(key)
        self.model.setdefault(key, ref)

    @rule(pick=st.integers(0, 99))
    def remove(self, pick):
        if self.model:
            key = sorted(self.model)[pick % len(self.model)]
            self.index.remove(key, self.model.pop(key))

    @rule(pick=st.integers(0, 99), to=st.integers(0, 99))
    def move(self, pick, to):
        free = self._free_refs()
        if self.model and free:
            key = sorted(self.model)[pick % len(self.model)]
            new_ref = free[to % len(free)]
            self._write(new_ref, key)
            self.index.move(key, self.model[key], new_ref)
            self.model[key] = new_ref

    @rule()
    def rebuild(self):
        in_ledger = sorted(ref for ref in self.model.values() if ref < LEDGER)
        entries = np.array(sorted(ref - LEDGER for ref in self.model.values() if ref >= LEDGER), dtype=np.int64)
        assert len(self.index.rebuild([slice(r, r + 1) for r in in_ledger], entries)) == 0

    @rule(key=st.binary(min_size=16, max_size=16))
    def find_a_stranger(self, key):
        assert self.index.find(key) == self.model.get(key)

    @invariant()
    def finds_every_key_where_it_lives(self):
        for key, ref in self.model.items():
            assert self.index.find(key) == ref
        assert self.index.size == len(self.model)


IndexAgainstADict.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_the_index_answers_like_a_dict = IndexAgainstADict.TestCase


def test_a_rebuild_reports_entries_whose_id_the_ledger_has():
    ledger_ids = np.zeros(LEDGER, dtype="V16")
    entries = np.zeros(ENTRIES, dtype=OUTBOX.record)
    ledger_ids[3] = b"a" * 16
    entries[5]["correlation_id"] = b"a" * 16
    entries[6]["correlation_id"] = b"b" * 16
    index = DedupIndex(ledger_ids, entries["correlation_id"])
    assert list(index.rebuild([slice(3, 4)], np.array([5, 6]))) == [5]
    assert index.find(b"a" * 16) == 3 and index.find(b"b" * 16) == LEDGER + 6


def test_the_table_is_sized_once_for_the_load_factor():
    assert table_slots(1_114_112) == 1 << 21  # the default ledger and outbox: 8 MiB of int32
    assert table_slots(24) == 64
