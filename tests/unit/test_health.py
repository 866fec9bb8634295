"""The health poller's bookkeeping, with stand-in clients (no sockets)."""

from __future__ import annotations

import numpy as np

from bruto.dispatcher import breaker
from bruto.dispatcher.health import POLL_INTERVAL_US
from bruto.dispatcher.health import HealthPoller
from bruto.dispatcher.processor import Health
from bruto.dispatcher.processor import RateLimited
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
        return self.answers.pop(0)


def test_a_report_is_stored_and_the_next_call_waits_a_whole_window():
    rows = np.zeros(2, dtype=HEALTH.record)
    before = now_us()
    HealthPoller([Answers(Health(True, 100)), None], rows).poll(DEFAULT)
    row = rows[DEFAULT]
    assert (int(row["failing"]), int(row["min_response_ms"])) == (1, 100)
    assert int(row["polled_at"]) >= before
    assert int(row["next_poll_at"]) >= before + POLL_INTERVAL_US
    assert int(row["breaker"]) == breaker.OPEN  # a failing report opens the breaker


def test_a_429_pushes_the_next_call_past_its_retry_after():
    rows = np.zeros(2, dtype=HEALTH.record)
    before = now_us()
    HealthPoller([Answers(RateLimited(12.0)), None], rows).poll(DEFAULT)
    assert int(rows[DEFAULT]["next_poll_at"]) >= before + 12_000_000
    assert int(rows[DEFAULT]["polled_at"]) == 0  # nothing was learned


def test_a_failed_call_still_uses_the_window():
    rows = np.zeros(2, dtype=HEALTH.record)
    before = now_us()
    HealthPoller([Answers(None), None], rows).poll(DEFAULT)
    assert int(rows[DEFAULT]["next_poll_at"]) >= before + POLL_INTERVAL_US
