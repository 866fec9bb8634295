"""POST /purge-payments, both sides: the gateway that asks, the dispatcher that carries it out.

The promise: **200 only once the purge is carried out; a purge answered 503
is never carried out, not even later.** The two sides meet in shared memory
and under one lock, and in nothing else:

- the request, in the asking worker's own intake slab (``INTAKE.counters``,
  bruto.shm.layout): where every slab's ``written`` and the ledger's
  ``count`` stood when it was asked (``purge_below``, ``purge_ledger_below``:
  the purge drops what was accepted and confirmed before them, nothing after),
  a deadline (``purge_deadline``), then the ticket (``purge_ticket``), and
  the last ticket the gateway gave up on (``purge_cancelled``);
- the dispatcher's answer, in its cursor of that slab (``DISPATCH.record``):
  the last ticket it committed to (``purge_claimed``) and the last one it
  carried out to the end (``purges_done``), and the committed marks
  (``purge_below`` per slab, ``purge_ledger_below``);
- the **purge lock** (bruto.shm.locks ``PURGE_LOCK``, an flock held for an
  instant): the gateway writes a request and cancels one under it, the
  dispatcher commits under it.

The steps, in the order they happen:

1. The gateway (:meth:`PurgeAsker.request`) writes the marks, the deadline,
   then the ticket, under the lock.
2. The dispatcher (:meth:`PurgeCarrier.pending`) sees a ticket above both its
   ``purge_claimed`` and the slab's ``purge_cancelled``, not past its deadline.
   While it is pending it drains no slab past the marks
   (:meth:`PurgeCarrier.drain_limits`), so nothing accepted after the request
   is mistaken for something the purge drops.
3. Under the lock (:func:`commit_pending`), if the ticket is still pending, the
   dispatcher copies the marks into its cursors and writes ``purge_claimed``:
   **the commit** (:meth:`PurgeCarrier.commit`). Then the drops
   (:meth:`PurgeCarrier.drop`, called by bruto.dispatcher.outbox ``Outbox.purge``), and the dispatcher
   writes ``purges_done`` (:meth:`PurgeCarrier.finish`). A dispatcher that
   restarts finishes a committed purge before anything else
   (:meth:`PurgeCarrier.unfinished`; every step of it is idempotent).
4. The gateway (:meth:`PurgeAsker.ask`) polls ``purges_done``. Done in time: 200. Not in
   time: it takes the lock and cancels (:meth:`PurgeAsker.cancel`) unless
   ``purge_claimed`` has reached the ticket: cancelled, 503; committed, it
   waits once more for the end: 200, or 202 if the dispatcher stopped midway
   (the next one finishes it).

**Why a purge answered 503 is never carried out.** The 503 comes only after
the gateway, holding the lock, found ``purge_claimed`` below its ticket and
wrote ``purge_cancelled`` up to it. The dispatcher commits only holding the
same lock, and only a ticket above ``purge_cancelled``. The lock puts the two
writes in an order: if the cancel came first the dispatcher never commits the
ticket; if the commit came first the gateway does not cancel and answers 200
or 202, never 503. A gateway that dies before it cancels leaves a ticket that
its deadline voids (the dispatcher commits nothing past it; the deadline is
the moment the gateway would have answered 503). ``purge_cancelled`` never
moves backwards, so a late cancel of an older ticket does not revive a newer
one, and a newer ticket supersedes an older one of the same slab that was
never committed.

**What a crash at each step leaves.**

- the gateway, in 1: marks written, no new ticket. Nothing follows: the
  ticket is what the dispatcher reads, and it is written last. (Two requests
  of one worker may overlap, a gevent worker serving many at once: one that
  dies mid-write can leave an older pending ticket of its slab beside marks
  between its own and the new ones. That ticket's asker died with the
  worker, a slab having one process, so no one was told anything.)
- the gateway, in 4: a pending ticket no one waits for. It is committed
  before its deadline or voided by it; either is true to no answer at all.
- the dispatcher, in 3 before the commit: marks copied, ``purge_claimed`` as
  it was. The copy is read only once claimed; the ticket stays pending until
  it is committed, cancelled or expired.
- the dispatcher, in 3 after the commit: ``purge_claimed`` above
  ``purges_done``. The next dispatcher's recovery carries it out again, to
  the end, before anything else; a gateway still waiting answers 200, or 202
  if that takes longer than its wait.

The marks are read slab by slab before the ticket is published, so a payment
accepted in another slab after its mark was read may be drained before the
ticket appears (a window of microseconds): it came after the request, and
:meth:`PurgeCarrier.drop` spares the queued entries whose ids lie between a
slab's mark and its drain cursor.

**Why the gateway polls.** It waits for ``purges_done`` by looking every
:data:`POLL_S`, not on a condition: the two sides are separate processes
(separate containers, even) that share this memory and flocks and nothing
else. A gevent worker cannot block in flock without stalling every other
connection of the process, and a wake-up across processes (a pipe, an
eventfd, a futex) would be a new mechanism beside those two, for one rare
request.

Many hosts (BRUTO_DATABASE_URL): the commit and the local part are the
same; the purge is done once the cluster's record is purged too and every
live host has applied it (bruto.cluster.link, docs/SCALING.md).
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from bruto.config import Settings
from bruto.shm import locks
from bruto.shm.layout import FREE
from bruto.shm.ledger import LedgerWriter
from bruto.shm.region import Region
from bruto.shm.rejected import RejectedWriter
from bruto.timefmt import now_us

# How often a waiting gateway looks at ``purges_done`` (time.sleep is
# gevent-patched in the workers: the wait yields to the worker's other
# connections).
POLL_S = 0.005


def lock_path(settings: Settings) -> str:
    return locks.lock_path(settings.shm_dir, locks.PURGE_LOCK)


def _lock(path: str | None, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
    """The purge lock; None: no lock (one process, regions in memory: nothing to order)."""
    return locks.held(path, wait=wait) if path else contextlib.nullcontext(True)


# -- the asking side: a web worker ------------------------------------------------


class Answer(enum.Enum):
    """How a purge ended, as the gateway answers it."""

    PURGED = 200     # carried out to the end
    CANCELLED = 503  # not in time, cancelled: never carried out
    COMMITTED = 202  # committed, but the dispatcher stopped before the end: the next one finishes it


class PurgeAsker:
    """One web worker's purge requests, through its own intake slab.

    Args:
        slot: the worker's intake slot (its slab carries the request).
        slabs: every slot's slab (the request records where each stands).
        ledger: the ledger (the request records its count).
        dispatch: the dispatcher's cursors (its answer).
        lock_path: the purge lock's file; None: no lock (one process).
    """

    def __init__(self, slot: int, slabs: list[Region], ledger: Region, dispatch: Region,
                 lock_path: str | None = None):
        self._asked = slabs[slot].counters
        self._slabs = slabs
        self._ledger = ledger
        self._answer = dispatch.records[slot]
        self._lock_path = lock_path

    def ask(self, timeout_s: float, sleep: Callable[[float], object] = time.sleep) -> Answer:
        """Steps 1 and 4: ask, wait up to ``timeout_s``, and cancel what is not done in time.

        ``sleep`` paces the wait (gevent-patched in the workers: the wait
        yields to the worker's other connections).
        """
        ticket = self.request(deadline=now_us() + int(timeout_s * 1_000_000))
        if self._wait(ticket, timeout_s, sleep):
            return Answer.PURGED
        if self.cancel(ticket):
            return Answer.CANCELLED
        # Committed just now: it ends within moments, unless the dispatcher stopped.
        return Answer.PURGED if self._wait(ticket, timeout_s, sleep) else Answer.COMMITTED

    def request(self, deadline: int) -> int:
        """Step 1: ask for a purge to be committed before ``deadline`` (epoch µs); returns the ticket.

        Under the lock, so the dispatcher, which commits under it, never reads
        a request half written by a second one of this worker.
        """
        asked = self._asked
        with _lock(self._lock_path):
            below = asked["purge_below"]
            for slot, slab in enumerate(self._slabs):
                below[slot] = int(slab.counters["written"])
            asked["purge_ledger_below"] = int(self._ledger.counters["count"])
            asked["purge_deadline"] = deadline
            ticket = int(asked["purge_ticket"]) + 1
            asked["purge_ticket"] = ticket  # last: the request is complete
        return ticket

    def done(self, ticket: int) -> bool:
        """Whether the dispatcher carried the purge out to the end."""
        return int(self._answer["purges_done"]) >= ticket

    def cancel(self, ticket: int) -> bool:
        """Step 4, not in time: give up on the purge; False if too late: the dispatcher committed to it."""
        with _lock(self._lock_path):
            if int(self._answer["purge_claimed"]) >= ticket:
                return False
            # Never backwards: a late cancel of an older ticket must not revive a newer one's.
            self._asked["purge_cancelled"] = max(ticket, int(self._asked["purge_cancelled"]))
            return True

    def _wait(self, ticket: int, timeout_s: float, sleep: Callable[[float], object]) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.done(ticket):
            if time.monotonic() > deadline:
                return False
            sleep(POLL_S)
        return True


# -- the carrying-out side: the dispatcher ----------------------------------------------


class PurgeCarrier:
    """The dispatcher's view of every slab's purge requests, and its answers to them.

    The outbox (bruto.dispatcher.outbox) owns one and carries out what it commits.

    Args:
        slabs: every intake slab (the requests).
        dispatch: the dispatcher's region (its cursors carry the answers and the committed marks).
    """

    def __init__(self, slabs: list[Region], dispatch: Region):
        self._slabs = slabs
        self._cursors = dispatch.records
        self._dispatch = dispatch.counters

    def pending(self, now: int) -> list[int]:
        """Step 2: the slots whose ticket waits to be committed, and still may be."""
        return [slot for slot in range(len(self._slabs)) if self._pending(slot, now)]

    def _pending(self, slot: int, now: int) -> bool:
        asked = self._slabs[slot].counters
        ticket = int(asked["purge_ticket"])
        return (ticket > int(self._cursors[slot]["purge_claimed"]) and ticket > int(asked["purge_cancelled"])
                and now <= int(asked["purge_deadline"]))

    def drain_limits(self, now: int) -> list[int] | None:
        """Step 2: per slot, where draining stops until the pending purges are committed or given up; None: no
        limit."""
        limits = None
        for slot in self.pending(now):
            below = self._slabs[slot].counters["purge_below"]
            marks = [int(below[i]) for i in range(len(self._slabs))]
            limits = marks if limits is None else [min(a, b) for a, b in zip(limits, marks)]
        return limits

    def commit(self, slot: int, now: int) -> bool:
        """Step 3: commit to the purge asked through ``slot``; False if it was cancelled or expired.

        The caller holds the purge lock (:func:`commit_pending`): the marks
        first, then ``purge_claimed``, the commit.
        """
        if not self._pending(slot, now):
            return False
        asked = self._slabs[slot].counters
        for cursor, below in zip(self._cursors, asked["purge_below"]):
            cursor["purge_below"] = below
        self._dispatch["purge_ledger_below"] = asked["purge_ledger_below"]
        self._cursors[slot]["purge_claimed"] = asked["purge_ticket"]  # the commit
        return True

    @property
    def ledger_below(self) -> int:
        """The committed purge's ledger mark: the records below it go."""
        return int(self._dispatch["purge_ledger_below"])

    def drop(self, ledger: LedgerWriter, rejected: RejectedWriter, entries: np.ndarray) -> NDArray[np.bool_]:
        """Step 3's work, the committed purge's drops (again, after a crash: every step is idempotent).

        The ledger below its mark, the rejected ring, intake below the marks;
        of the outbox ``entries``, those accepted before the request are
        marked ``purged``, and returned (a mask) for the outbox to move
        (bruto.dispatcher.transitions: queued ones are freed, those out stay).
        """
        ledger.purge(below=self.ledger_below)
        rejected.purge()
        # The gateway reads the marks slab by slab before it publishes the
        # ticket: a payment accepted past its slab's mark in between may have
        # been drained already. It came after the request, so it stays.
        after = set()
        for cursor, slab in zip(self._cursors, self._slabs):
            for n in range(int(cursor["purge_below"]), int(cursor["drained"])):
                after.add(slab.records[n % slab.capacity]["correlation_id"].tobytes())
        for cursor in self._cursors:
            if int(cursor["drained"]) < int(cursor["purge_below"]):
                cursor["drained"] = cursor["purge_below"]
        # Every other entry was accepted before the purge was asked: draining
        # stopped at the marks while it was pending. Queued ones go. Entries
        # sent or unresolved stay: if a processor stores one, the ledger must
        # say so; if none does, they go when that is known, never sent again
        # (the outbox's transitions read ``purged``).
        states = entries["state"]
        purged: NDArray[np.bool_] = states != FREE
        if after:
            ids = entries["correlation_id"]
            for index in np.flatnonzero(purged):
                if ids[index].tobytes() in after:
                    purged[index] = False
        # Queued ones are marked too, as they are freed: their id stays in the
        # free entry until it is reused, and GET /payments/{id} reads it there.
        entries["purged"][purged] = 1
        return purged

    def drop_before(self, moment: int, ledger: LedgerWriter, rejected: RejectedWriter,
                    entries: np.ndarray) -> NDArray[np.bool_]:
        """A purge asked on another host (many hosts), committed at ``moment`` (epoch µs): drop what this host
        accepted and confirmed up to it, keep what came after; the entries marked ``purged`` are returned as
        in :meth:`drop`.

        The purging host's own rule, with the commit's moment for its marks:
        the ledger records and rejections made up to ``moment`` go (by
        ``confirmed_at``, ``rejected_at``), and the intake records and outbox
        entries accepted up to it (by ``accepted_at``); of those, the ones out
        to a processor stay marked ``purged``, kept only if stored. What this
        host confirmed after ``moment`` stays: the processor stored it after
        the purge, whatever it was accepted. No ticket and no lock here:
        nothing local asked, and nothing local answers. Repeated after a crash
        it drops the same payments (they are chosen by their times).
        """
        ledger.purge(below=ledger.confirmed_after(moment))
        rejected.purge(up_to=moment)
        for cursor, slab in zip(self._cursors, self._slabs):
            drained, written = int(cursor["drained"]), int(slab.counters["written"])
            while drained < written and int(slab.records[drained % slab.capacity]["accepted_at"]) <= moment:
                drained += 1  # accepted before the purge, not drained yet: it goes with it
            cursor["drained"] = drained
        states = entries["state"]
        purged: NDArray[np.bool_] = (states != FREE) & (entries["accepted_at"] <= moment)
        entries["purged"][purged] = 1
        return purged

    def claimed(self, slot: int) -> int:
        """The last ticket of ``slot`` committed to."""
        return int(self._cursors[slot]["purge_claimed"])

    def unfinished(self) -> list[int]:
        """Slots whose committed purge was not carried out to the end (a crash): finished first at a restart."""
        return [slot for slot, cursor in enumerate(self._cursors)
                if int(cursor["purge_claimed"]) > int(cursor["purges_done"])]

    def finish(self, slot: int) -> bool:
        """Step 3's end: the purge of ``slot`` is carried out (the gateway answers 200); True the first time."""
        cursor = self._cursors[slot]
        finished = int(cursor["purges_done"]) < int(cursor["purge_claimed"])
        cursor["purges_done"] = cursor["purge_claimed"]
        return finished


def commit_pending(carrier: PurgeCarrier, lock_path: str | None, clock: Callable[[], int],
                   carry_out: Callable[[int, int], object]) -> None:
    """Step 3 for every pending ticket: under the purge lock, ``carry_out(slot, now)`` (which commits first).

    The lock is tried, not waited for: a gateway holds it for an instant, and
    a ticket skipped now is pending at the next pass.
    """
    for slot in carrier.pending(clock()):
        with _lock(lock_path, wait=False) as held:
            if held:
                carry_out(slot, clock())
