"""Shared-memory regions: numpy arrays over memory-mapped files.

A region is one file laid out as::

    [ header (64 bytes) | counters (padded to 64) | records[capacity] ]

The header says what the file is (magic, kind, layout version, record size,
capacity, where the records start). Attaching checks every one of those
against the layout the caller expects, so a stale file from another version, a
file of another kind or of another capacity is refused with a clear error
instead of being misread.

Publication order (why readers never lock): every region has exactly one
writing process. A writer fills a record's fields first and only then advances
the counter that makes the record visible (e.g. ``written``). Readers load the
counter first and read records below it. On x86-64 (the only target of the
challenge: linux-amd64) stores become visible to other cores in program order
(TSO) and an aligned 8-byte store is atomic, so a reader that sees the new
counter value also sees the record's fields. Each numpy assignment here is a
separate call into C, which the C compiler cannot reorder across. A port to a
weakly ordered CPU (ARM) would need a release fence before the counter store.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import numpy as np

MAGIC = b"BRUTOSHM"
HEADER_SIZE = 64
ALIGN = 64

HEADER = np.dtype([
    ("magic", "S8"),
    ("kind", "S16"),
    ("version", "<u4"),
    ("record_size", "<u4"),
    ("capacity", "<u8"),
    ("records_offset", "<u8"),
    ("counters_size", "<u8"),
    ("reserved", "V8"),
])
assert HEADER.itemsize == HEADER_SIZE


class RegionError(RuntimeError):
    """A region file is missing, foreign, or does not match the expected layout."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """The shape of one kind of region, declared once and imported everywhere.

    Args:
        kind: short name stored in the header (e.g. ``b"ledger"``).
        version: bump whenever ``counters`` or ``record`` change.
        counters: dtype of the single counters row (int64 fields).
        record: dtype of one record.
        columnar: store each field of the records as its own contiguous
            array (``Region.columns``) instead of an array of records
            (``Region.records``): vectorized scans over one field then read
            contiguous memory instead of striding over whole records.
    """

    kind: bytes
    version: int
    counters: np.dtype
    record: np.dtype
    columnar: bool = False

    @property
    def counters_size(self) -> int:
        return _round_up(self.counters.itemsize, ALIGN)

    @property
    def records_offset(self) -> int:
        return HEADER_SIZE + self.counters_size

    def file_size(self, capacity: int) -> int:
        return self.records_offset + capacity * self.record.itemsize


class Region:
    """A mapped region: ``counters`` (one structured row) and ``records``
    (or, for a columnar layout, ``columns``: one array per record field).

    Use :meth:`open` (create if missing, else attach) or :meth:`attach`.
    """

    def __init__(self, path: str, layout: Layout, mapping: np.ndarray):
        self.path = path
        self.layout = layout
        self._mapping = mapping  # keeps the file mapped while the views below live
        # NOTE: views of a plain ndarray, not of the np.memmap subclass, whose
        # Python-level __getitem__ would run on every record access.
        mapping = mapping.view(np.ndarray)
        header = mapping[:HEADER_SIZE].view(HEADER)[0]
        self.capacity = int(header["capacity"])
        counters_end = layout.records_offset
        # The counters row as a 1-element array, whose fields are arrays over
        # shared memory (for writers that keep views of single fields), and
        # as a 0-d view: `counters["written"]` reads and writes shared memory.
        self.counters_array = mapping[HEADER_SIZE:HEADER_SIZE + layout.counters.itemsize].view(layout.counters)
        self.counters = self.counters_array[0]
        self.columns: dict[str, np.ndarray] = {}
        self._records: np.ndarray | None = None
        if layout.columnar:
            offset = counters_end
            fields = fields_of(layout.record)
            for name in fields:
                field = fields[name][0]
                self.columns[name] = mapping[offset:offset + self.capacity * field.itemsize].view(field)
                offset += self.capacity * field.itemsize
        else:
            self._records = mapping[counters_end:counters_end + self.capacity * layout.record.itemsize].view(
                layout.record)

    @property
    def records(self) -> np.ndarray:
        """The records (a layout not ``columnar``: a columnar one has ``columns`` instead)."""
        if self._records is None:
            raise TypeError(f"a {self.layout.kind.decode()} region is columnar: it has columns, not records")
        return self._records

    @classmethod
    def attach(cls, path: str, layout: Layout, capacity: int | None = None, writable: bool = True) -> "Region":
        """Map an existing region, refusing anything that does not match.

        ``writable=False`` maps it read-only (readers such as the inspector:
        a stray write then raises instead of corrupting shared memory).

        Raises:
            RegionError: the file is missing, too short, or its header names
                another kind, version, record size or capacity.
        """
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            raise RegionError(f"{path}: region file does not exist") from None
        except OSError as error:
            raise RegionError(f"{path}: {error.strerror or error}") from None
        if size < HEADER_SIZE:
            raise RegionError(f"{path}: {size} bytes is too short for a region header")
        try:
            mapping = np.memmap(path, dtype=np.uint8, mode="r+" if writable else "r")
        except OSError as error:  # a directory, no permission, ...
            raise RegionError(f"{path}: cannot map it: {error.strerror or error}") from None
        header = mapping[:HEADER_SIZE].view(HEADER)[0]
        problems = []
        if header["magic"] != MAGIC:
            raise RegionError(f"{path}: not a bruto region (magic {bytes(header['magic'])!r})")
        if header["kind"] != layout.kind:
            problems.append(f"kind {bytes(header['kind'])!r}, expected {layout.kind!r}")
        if header["version"] != layout.version:
            problems.append(f"layout version {int(header['version'])}, expected {layout.version}")
        if header["record_size"] != layout.record.itemsize:
            problems.append(f"record size {int(header['record_size'])}, expected {layout.record.itemsize}")
        if header["records_offset"] != layout.records_offset:
            problems.append(f"records offset {int(header['records_offset'])}, expected {layout.records_offset}")
        if capacity is not None and header["capacity"] != capacity:
            problems.append(f"capacity {int(header['capacity'])}, expected {capacity}")
        if not problems and size < layout.file_size(int(header["capacity"])):
            problems.append(f"file is {size} bytes, shorter than its header claims")
        if problems:
            raise RegionError(f"{path}: " + "; ".join(problems)
                              + " (remove the shared directory to start afresh)")
        return cls(path, layout, mapping)

    @classmethod
    def open(cls, path: str, layout: Layout, capacity: int) -> "Region":
        """Attach to ``path``, creating it first if it does not exist.

        Creation is atomic: the file is built under a temporary name and
        hard-linked into place, so two processes racing to create the same
        region end up attached to one file, never to a half-written header.
        """
        if not os.path.exists(path):
            _create(path, layout, capacity)
        return cls.attach(path, layout, capacity)


    @classmethod
    def in_memory(cls, layout: Layout, capacity: int) -> "Region":
        """A region in this process's memory, laid out like its file: for tests."""
        mapping = np.zeros(layout.file_size(capacity), dtype=np.uint8)
        mapping[:HEADER_SIZE] = np.frombuffer(_header(layout, capacity), dtype=np.uint8)
        return cls("<memory>", layout, mapping)


def _header(layout: Layout, capacity: int) -> bytes:
    header = np.zeros(1, dtype=HEADER)
    header["magic"] = MAGIC
    header["kind"] = layout.kind
    header["version"] = layout.version
    header["record_size"] = layout.record.itemsize
    header["capacity"] = capacity
    header["records_offset"] = layout.records_offset
    header["counters_size"] = layout.counters_size
    return header.tobytes()


def _create(path: str, layout: Layout, capacity: int) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".new-", dir=directory)
    try:
        # ftruncate makes a sparse file: pages cost memory only once touched.
        os.ftruncate(fd, layout.file_size(capacity))
        os.pwrite(fd, _header(layout, capacity), 0)
        os.fsync(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race; attach to its file
    finally:
        os.close(fd)
        os.unlink(tmp)


def fields_of(dtype: np.dtype) -> dict[str, tuple[Any, ...]]:
    """A structured dtype's fields, name: (dtype, offset), in the order of its names."""
    assert dtype.names is not None and dtype.fields is not None, f"{dtype} is not a structured dtype"
    return {name: dtype.fields[name] for name in dtype.names}


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to
