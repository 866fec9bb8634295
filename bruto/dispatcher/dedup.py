"""Which correlationIds the dispatcher already holds: a fixed-size hash table.

Every id in the ledger or in the outbox is in the index, so a payment accepted
twice is sent once. The table holds no ids, only where each id lives: a ledger
slot ``r`` (``0 <= r < ledger capacity``) or an outbox entry (``ledger
capacity + entry``), 4 bytes per table slot; the id itself is read from the
ledger's or the outbox's own column when a probe compares keys. Open
addressing with linear probing, a load factor of at most ``MAX_LOAD``, and
deletion by backward shift (no tombstones), so the table never degrades.

The table lives in shared memory (``index.bin``, bruto.shm.layout.INDEX), the
dispatcher its only writer, so a web worker can find a payment by its id
without scanning the ledger (GET /payments/{id}, bruto.shm.lookup). Readers
take no lock: a store of one reference is atomic, and the two changes that
move or drop references a reader may be stepping over (a removal's backward
shift, a rebuild) are bracketed by the ``changes`` sequence (odd while under
way), which a reader checks around its probe. Inserts and moves, one store
each, cost the POST path and the dispatcher nothing more than before.

Memory is fixed when the dispatcher starts and never grows: with the default
capacities (ledger 2^20, outbox 2^16) the table has 2^21 slots, 8 MiB, against
about 90 bytes per id (94 MiB at a full ledger) for a Python set of bytes
(docs/DISPATCHER.md). :meth:`rebuild` fills it from the regions with numpy, a
chunk at a time, so a restart over a full ledger needs no more memory than
the running dispatcher did.

Slots are picked by a keyed multiplicative hash of the id's two 64-bit halves,
with keys drawn at random per process: a client cannot craft ids that collide.
"""

from __future__ import annotations

import os

import numpy as np

from bruto.shm.layout import EMPTY_REF
from bruto.shm.layout import INDEX
from bruto.shm.layout import INDEX_MAX_LOAD
from bruto.shm.layout import index_hash_shift
from bruto.shm.layout import index_home_slot
from bruto.shm.layout import index_slots
from bruto.shm.region import Region

EMPTY = EMPTY_REF
MAX_LOAD = INDEX_MAX_LOAD
REBUILD_CHUNK = 1 << 14


def table_slots(ids: int) -> int:
    """Slots of a table for at most ``ids`` ids: a power of two, load at most MAX_LOAD."""
    return index_slots(ids, 0)


class DedupIndex:
    """Ids held by the ledger or the outbox.

    Args:
        ledger_ids: the ledger's ``correlation_id`` column (V16).
        outbox_ids: the outbox entries' ``correlation_id`` field (V16).
        table: the INDEX region to keep the table in (``index.bin``); an
            in-memory one if None (tests).

    The table is unusable to readers (``changes`` odd) from here until the
    first :meth:`rebuild` ends: it starts empty, whatever the region held.
    """

    def __init__(self, ledger_ids: np.ndarray, outbox_ids: np.ndarray, table: Region | None = None):
        self.ledger_capacity = len(ledger_ids)
        self._ledger_keys = ledger_ids.view("<u8").reshape(-1, 2)
        self._outbox_ids = outbox_ids  # a field of the outbox records: strided, read one entry at a time
        slots = table_slots(len(ledger_ids) + len(outbox_ids))
        if table is None:
            table = Region.in_memory(INDEX, slots)
        if table.capacity != slots:
            raise ValueError(f"{table.path}: {table.capacity} slots, expected {slots}")
        self._mask = slots - 1
        self._shift = index_hash_shift(slots)
        counters = table.counters_array
        self._changes = counters["changes"].data
        self._begin_change()  # readers keep off until the first rebuild is complete
        self._table = table.records["ref"]
        self._table.fill(EMPTY)
        multipliers = np.frombuffer(os.urandom(16), dtype="<u8") | np.uint64(1)
        self._k1, self._k2 = (int(k) for k in multipliers)
        counters["hash_k1"] = self._k1
        counters["hash_k2"] = self._k2
        counters["ledger_capacity"] = self.ledger_capacity
        self.size = 0

    def _begin_change(self) -> bool:
        """Mark the table as changing (``changes`` odd); False if it already was."""
        if self._changes[0] % 2:
            return False
        self._changes[0] += 1
        return True

    def _end_change(self, began: bool) -> None:
        if began:
            self._changes[0] += 1

    def ledger_ref(self, slot: int) -> int:
        return slot

    def outbox_ref(self, entry: int) -> int:
        return self.ledger_capacity + entry

    # -- one id at a time ------------------------------------------------------

    def insert(self, key: bytes, ref: int) -> int | None:
        """Index ``key`` at ``ref`` unless it is indexed already; returns the ref it had, or None."""
        i, found = self._probe(key)
        if found != EMPTY:
            return found
        self._table[i] = ref
        self.size += 1
        return None

    def find(self, key: bytes) -> int | None:
        """Where ``key`` lives (a ref), or None."""
        found = self._probe(key)[1]
        return None if found == EMPTY else found

    def move(self, key: bytes, ref: int, new_ref: int) -> None:
        """``key``, indexed at ``ref``, now lives at ``new_ref`` (outbox entry -> ledger slot)."""
        i = self._slot_of(key, ref)
        if i is None:
            self.insert(key, new_ref)
        else:
            self._table[i] = new_ref

    def remove(self, key: bytes, ref: int) -> None:
        """Forget ``key``, indexed at ``ref`` (found by its ref: the id there may be overwritten)."""
        table, mask = self._table, self._mask
        hole = self._slot_of(key, ref)
        if hole is None:
            return
        began = self._begin_change()  # the shift below may move a key past a reader's probe
        i = hole
        while True:  # backward shift: pull later members of the probe run into the hole
            i = (i + 1) & mask
            moved = int(table[i])
            if moved == EMPTY:
                break
            home = self._home(self._key(moved))
            if (i - home) & mask >= (i - hole) & mask:
                table[hole] = moved
                hole = i
        table[hole] = EMPTY
        self._end_change(began)
        self.size -= 1

    # -- whole regions ---------------------------------------------------------

    def rebuild(self, ledger_parts: list[slice], outbox_entries: np.ndarray) -> np.ndarray:
        """Index the given ranges of ledger slots, then the given outbox entries, from scratch.

        Returns:
            The outbox entries whose id was already indexed (by the ledger, or
            an earlier entry): they are not indexed again.
        """
        self._begin_change()
        self._table.fill(EMPTY)
        self.size = 0
        for part in ledger_parts:
            for start in range(part.start, part.stop, REBUILD_CHUNK):
                slots = np.arange(start, min(start + REBUILD_CHUNK, part.stop))
                self._add_many(self._ledger_keys[slots], slots)
        repeated = []
        for start in range(0, len(outbox_entries), REBUILD_CHUNK):
            entries = outbox_entries[start:start + REBUILD_CHUNK]
            keys = self._outbox_id_keys(entries)
            seen = self._add_many(keys, entries.astype(np.int64) + self.ledger_capacity)
            repeated.append(entries[seen])
        self._changes[0] += 1  # complete: readers may use it
        return np.concatenate(repeated) if repeated else np.zeros(0, dtype=np.int64)

    def _add_many(self, keys: np.ndarray, refs: np.ndarray) -> np.ndarray:
        """Vectorized :meth:`add` that skips keys already present; returns which were skipped."""
        table, mask = self._table, self._mask
        at = self._home_many(keys)
        present = np.zeros(len(refs), dtype=bool)
        todo = np.arange(len(refs))
        while len(todo):
            occupant = table[at[todo]]
            free = occupant == EMPTY
            taken = todo[~free]
            same = (self._keys_of(occupant[~free]) == keys[taken]).all(axis=1)
            present[taken[same]] = True
            onward = taken[~same]
            at[onward] = (at[onward] + 1) & mask
            contenders = todo[free]
            _, first = np.unique(at[contenders], return_index=True)
            winners = contenders[first]
            table[at[winners]] = refs[winners]
            self.size += len(winners)
            # Losers look at the same slot again: now taken, by their own key or another.
            losers = np.setdiff1d(contenders, winners, assume_unique=True)
            todo = np.concatenate([onward, losers])
        return present

    # -- keys and hashes -------------------------------------------------------

    def _key(self, ref: int) -> bytes:
        if ref < self.ledger_capacity:
            key: bytes = self._ledger_keys[ref].tobytes()
        else:
            key = self._outbox_ids[ref - self.ledger_capacity].tobytes()
        return key

    def _keys_of(self, refs: np.ndarray) -> np.ndarray:
        keys = np.empty((len(refs), 2), dtype="<u8")
        in_ledger = refs < self.ledger_capacity
        keys[in_ledger] = self._ledger_keys[refs[in_ledger]]
        keys[~in_ledger] = self._outbox_id_keys(refs[~in_ledger] - self.ledger_capacity)
        return keys

    def _outbox_id_keys(self, entries: np.ndarray) -> np.ndarray:
        return np.frombuffer(self._outbox_ids[entries].tobytes(), dtype="<u8").reshape(-1, 2)

    def _home(self, key: bytes) -> int:
        return index_home_slot(key, self._k1, self._k2, self._shift)

    def _home_many(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            mixed = keys[:, 0] * np.uint64(self._k1) ^ keys[:, 1] * np.uint64(self._k2)
        return (mixed >> np.uint64(self._shift)).astype(np.int64)

    def _probe(self, key: bytes) -> tuple[int, int]:
        """The table slot holding ``key``, or the empty one that ends its probe run; and its ref."""
        table, mask = self._table, self._mask
        i = self._home(key)
        while True:
            found = int(table[i])
            if found == EMPTY or self._key(found) == key:
                return i, found
            i = (i + 1) & mask

    def _slot_of(self, key: bytes, ref: int) -> int | None:
        table, mask = self._table, self._mask
        i = self._home(key)
        while True:
            found = int(table[i])
            if found == ref:
                return i
            if found == EMPTY:
                return None
            i = (i + 1) & mask
