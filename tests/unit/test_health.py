"""The health poller's bookkeeping, with stand-in clients (no sockets)."""

from __future__ import annotations

import gevent
import gevent.event
import numpy as np

from bruto.dispatcher.health import POLL_INTERVAL_US
from bruto.dispatcher.health import HealthPoller
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import RateLimited
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import HEALTH
from bruto.timefmt import now_us


class Answers:
    """A client whose health() returns the given answers in turn."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = 0

    def health(self):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def poller(rows, answers):
    reports = []
    return HealthPoller([answers, None], rows, lambda *report: reports.append(report)), reports


def test_a_report_is_handed_on_with_the_moment_it_was_asked_and_the_next_call_waits_a_window():
    rows = np.zeros(2, dtype=HEALTH.record)
    before = now_us()
    health, reports = poller(rows, Answers(Health(True, 100)))
    health.poll(DEFAULT)
    [(processor, report, asked_at, answered_at)] = reports
    assert (processor, report) == (DEFAULT, Health(True, 100))
    assert before <= asked_at <= answered_at
    assert int(rows[DEFAULT]["next_poll_at"]) == asked_at + POLL_INTERVAL_US


def test_a_429_pushes_the_next_call_past_its_retry_after():
    rows = np.zeros(2, dtype=HEALTH.record)
    before = now_us()
    health, reports = poller(rows, Answers(RateLimited(12.0)))
    health.poll(DEFAULT)
    assert int(rows[DEFAULT]["next_poll_at"]) >= before + 12_000_000
    assert reports == []  # nothing was learned


def test_a_failed_call_still_uses_the_window():
    for failure in (None, RuntimeError("a bug in the client")):
        rows = np.zeros(2, dtype=HEALTH.record)
        before = now_us()
        health, reports = poller(rows, Answers(failure))
        health.poll(DEFAULT)
        assert int(rows[DEFAULT]["next_poll_at"]) >= before + POLL_INTERVAL_US
        assert reports == []


class Hangs:
    """A client whose health() waits until released, as a processor that never answers."""

    def __init__(self):
        self.released = gevent.event.Event()
        self.calls = 0

    def health(self):
        self.calls += 1
        self.released.wait()
        return None


class Healthy:
    def health(self):
        return Health(False, 0)


def test_a_processor_whose_health_call_hangs_holds_back_no_report_of_the_other():
    rows = np.zeros(2, dtype=HEALTH.record)
    hanging = Hangs()
    reports = []
    health = HealthPoller([hanging, Healthy()], rows, lambda *report: reports.append(report), interval_us=10_000)
    running = gevent.spawn(health.run)
    try:
        with gevent.Timeout(30):  # generous: the reports below come every 50 ms
            while len(reports) < 5:
                gevent.sleep(0.01)
        assert hanging.calls == 1  # default's first call still waits for its answer
        assert {processor for processor, *_ in reports} == {1}  # and fallback's reports kept coming
    finally:
        hanging.released.set()
        running.kill()
