"""The outbox's transition table (bruto.dispatcher.transitions): one source, every row used, nothing else allowed."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import test_outbox
import test_outbox_claims

from bruto.dispatcher import transitions
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.transitions import NEXT
from bruto.dispatcher.transitions import TABLE
from bruto.dispatcher.transitions import Event
from bruto.dispatcher.transitions import IllegalTransition
from bruto.shm.layout import FREE
from bruto.shm.layout import QUEUED
from bruto.shm.layout import SENT
from bruto.shm.layout import UNRESOLVED

DOCS = Path(__file__).resolve().parents[2] / "docs" / "DISPATCHER.md"


def test_the_docs_show_the_table_the_code_holds():
    assert transitions.markdown() in DOCS.read_text()


def test_each_state_and_event_has_one_row():
    assert len(NEXT) == len(TABLE)


def test_a_move_the_table_does_not_hold_is_refused():
    assert transitions.after(QUEUED, Event.ROUTED) == SENT
    for state, event in [(FREE, Event.STORED), (QUEUED, Event.STORED), (UNRESOLVED, Event.ROUTED),
                         (SENT, Event.DRAINED), (FREE, Event.PURGED)]:
        with pytest.raises(IllegalTransition, match=event.value):
            transitions.after(state, event)


def test_the_outbox_refuses_an_answer_that_does_not_fit_the_entrys_state():
    world = test_outbox.World()
    world.accept()
    (send,) = test_outbox.sends(world.step())
    entry = world.regions.outbox.records[send.entry]
    entry["state"] = UNRESOLVED  # as a bug elsewhere would leave it: a 500 cannot make it QUEUED
    with pytest.raises(IllegalTransition):
        world.outbox.attempt_done(send, Outcome.FAILED, world.now, 1000)
    assert int(entry["state"]) == UNRESOLVED


def _unit_tests_without_arguments():
    for module in (test_outbox, test_outbox_claims):
        for name, function in sorted(vars(module).items()):
            if name.startswith("test_") and inspect.isfunction(function) and not inspect.signature(function).parameters:
                yield function


def test_the_outbox_tests_take_every_transition_the_table_allows(monkeypatch):
    taken = set()
    check = transitions.after

    def recording(state, event):
        next_state = check(state, event)
        taken.add((state, event))
        return next_state

    monkeypatch.setattr(transitions, "after", recording)
    for test in _unit_tests_without_arguments():
        test()
    missing = [f"{transitions.STATE_NAMES[state]} {event.value}" for state, event in NEXT if (state, event) not in taken]
    assert missing == []
