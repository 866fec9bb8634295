"""What moves an outbox entry from one state to another: the transition table, as data.

An entry of the outbox (bruto.shm.layout.OUTBOX) is FREE, QUEUED, SENT or
UNRESOLVED. :data:`TABLE` says which event may move an entry in which state,
and to what; bruto.dispatcher.outbox makes every change of an entry's state
through :func:`after` (``Outbox._move``), so a move the table does not hold
raises :class:`IllegalTransition`: a bug, never expected at run time (the
dispatcher exits, and its restart recovers from the shared regions). A few
events leave the state as it is: they are rows all the same, because they are
legal in one state only (a lookup is made of an UNRESOLVED entry, never of
another).

docs/DISPATCHER.md shows the table as :func:`markdown` renders it;
tests/unit/test_transitions.py checks that the two agree, that the outbox's
tests take every row, and that a move not in the table is refused.
"""

from __future__ import annotations

import dataclasses
import enum

from bruto.shm.layout import FREE
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import UNRESOLVED

STATE_NAMES = {FREE: "FREE", QUEUED: "QUEUED", SENT: "SENT", UNRESOLVED: "UNRESOLVED"}


class Event(enum.StrEnum):
    """What happened to an entry. A str: hashed in C, so the table's lookup costs one dict probe."""

    DRAINED = "drained"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    ROUTED = "routed"
    WITHHELD = "withheld"
    STORED = "stored"
    FAILED = "failed"
    FAILED_PURGED = "failed_purged"
    DUPLICATE = "duplicate"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    CRASHED = "crashed"
    LOOKUP_DUE = "lookup_due"
    FOUND = "found"
    ABSENT = "absent"
    ABSENT_PURGED = "absent_purged"
    ABSENT_LOOK_UP_OTHER = "absent_look_up_other"
    UNSETTLED = "unsettled"
    CONFIRMED_BEFORE_CRASH = "confirmed_before_crash"
    ADOPTED = "adopted"
    FENCED = "fenced"
    PURGED = "purged"


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """One row: ``event`` moves an entry in ``state`` to ``to``; ``when`` and ``what`` say it in words."""

    state: int
    event: Event
    to: int
    when: str
    what: str


TABLE = (
    Transition(FREE, Event.DRAINED, QUEUED, "drained from intake",
               "in the ready queue; many hosts (`BRUTO_DATABASE_URL`): waiting for its claim "
               "([SCALING.md](SCALING.md)), claimed by this host (now or before a crash) → the ready queue"),
    Transition(QUEUED, Event.CLAIMED_ELSEWHERE, FREE, "many hosts: claimed by another host",
               "dropped (`duplicates_dropped`)"),
    Transition(QUEUED, Event.ROUTED, SENT, "routing picks P",
               "to P: requestedAt = now in whole ms, written before the request leaves; action Send"),
    Transition(SENT, Event.WITHHELD, QUEUED, "many hosts: the lease lapsed before the request left",
               "ready again at once; never left, so stored nowhere"),
    Transition(SENT, Event.STORED, FREE, "200",
               "ledger += (id, requestedAt sent, amount, P)"),
    Transition(SENT, Event.FAILED, QUEUED, "500, 429, no connection",
               "ready again after 50 ms (surely not stored)"),
    Transition(SENT, Event.FAILED_PURGED, FREE, "the same, purged since it went out",
               "gone: stored nowhere"),
    Transition(SENT, Event.DUPLICATE, UNRESOLVED, "422",
               "on P; lookup at once"),
    Transition(SENT, Event.TIMED_OUT, UNRESOLVED, "timeout, dropped connection, other 5XX, exception in the client",
               "on P; lookup once absence is provable"),
    Transition(SENT, Event.REJECTED, FREE, "another 4XX",
               "rejected, logged, kept for GET /payments/{id}"),
    Transition(SENT, Event.CRASHED, UNRESOLVED, "crash",
               "on P (recovery); lookup once absence is provable"),
    Transition(UNRESOLVED, Event.LOOKUP_DUE, UNRESOLVED, "lookup due",
               "action Lookup on P"),
    Transition(UNRESOLVED, Event.FOUND, FREE, "lookup: stored",
               "ledger += what P stored (its requestedAt and amount)"),
    Transition(UNRESOLVED, Event.ABSENT, QUEUED, "lookup: 404, absence proven",
               "ready at once: may go anywhere, with a fresh requestedAt"),
    Transition(UNRESOLVED, Event.ABSENT_PURGED, FREE, "the same, purged since it went out",
               "gone: stored by no one"),
    Transition(UNRESOLVED, Event.ABSENT_LOOK_UP_OTHER, UNRESOLVED, "the same, taken over (`look_up_other`)",
               "on the other processor; lookup once absence is provable there"),
    Transition(UNRESOLVED, Event.UNSETTLED, UNRESOLVED, "lookup: 404 not proven, or lookup failed",
               "lookup again at the provable moment or after a backoff (0.25 s × 2^n, n the payment's sends and "
               "lookups so far; at most 30 s), whichever is later"),
    Transition(UNRESOLVED, Event.CONFIRMED_BEFORE_CRASH, FREE, "recovery: its id is in the ledger",
               "the crash came between the ledger and the outbox: counted once"),
    Transition(FREE, Event.ADOPTED, UNRESOLVED, "many hosts: taken over from a lost host",
               "on default, `look_up_other`: looked up on both before it may go anywhere"),
    Transition(QUEUED, Event.ADOPTED, UNRESOLVED, "the same, accepted here too and waiting for its claim",
               "on default, `look_up_other`"),
    Transition(QUEUED, Event.FENCED, FREE, "many hosts: taken over by another host while this host's lease lapsed",
               "dropped, never sent from here again"),
    Transition(SENT, Event.FENCED, FREE, "the same",
               "dropped; the answer still out is ignored"),
    Transition(UNRESOLVED, Event.FENCED, FREE, "the same",
               "dropped"),
    Transition(QUEUED, Event.PURGED, FREE, "purge carried out",
               "gone"),
    Transition(SENT, Event.PURGED, SENT, "purge carried out",
               "marked `purged`: kept only if the processor stored it"),
    Transition(UNRESOLVED, Event.PURGED, UNRESOLVED, "purge carried out",
               "marked `purged`: kept only if the processor stored it"),
)

# (state, event) -> the next state: what the outbox looks up on every move.
NEXT = {(row.state, row.event): row.to for row in TABLE}


class IllegalTransition(RuntimeError):
    """A move the table does not hold: a bug in the outbox."""

    def __init__(self, state: int, event: Event):
        super().__init__(f"no transition from {STATE_NAMES.get(state, state)} on {event.value}")
        self.state = state
        self.event = event


def after(state: int, event: Event) -> int:
    """The state ``event`` moves an entry in ``state`` to; IllegalTransition if the table has no such move."""
    to = NEXT.get((state, event))
    if to is None:
        raise IllegalTransition(state, event)
    return to


def markdown() -> str:
    """The table as docs/DISPATCHER.md shows it."""
    lines = ["| from | event | to | and what happens |", "| -- | -- | -- | -- |"]
    lines += [f"| {STATE_NAMES[row.state]} | {row.when} | {STATE_NAMES[row.to]} | {row.what} |" for row in TABLE]
    return "\n".join(lines)
