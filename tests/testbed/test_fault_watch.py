"""The fault matrix's watch (bruto.testbed.faults.matrix.Watch): when it calls a service whole again."""

from __future__ import annotations

import time

from bruto.testbed.faults.matrix import Watch


class Scripted(Watch):
    """A watch whose samples come from a list (clean, waiting), the last one repeated."""

    def __init__(self, samples: list[tuple[bool, int]], interval_s: float):
        super().__init__(world=None, interval_s=interval_s)
        self.script = list(samples)

    def measure(self) -> tuple[bool, int]:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def test_a_service_whole_when_the_watch_stops_is_whole_though_no_periodic_sample_saw_it():
    # The row stops the watch as soon as the settling loop finds the service whole: that moment
    # must be sampled, whatever the sampling period (a long one here, so no periodic sample comes).
    started = time.monotonic()
    watch = Scripted([(True, 0)], interval_s=3600).start()
    watch.stop()
    assert watch.whole_since(started, normal=1) is not None


def test_whole_from_the_first_of_the_samples_that_all_find_it_whole():
    watch = Scripted([], interval_s=1)
    watch.samples = [(1.0, True, 0), (2.0, False, 0), (3.0, True, 9), (4.0, True, 1), (5.0, True, 0)]
    assert watch.whole_since(0.5, normal=1) == 4.0
    assert watch.whole_since(4.5, normal=1) == 5.0
    watch.samples.append((6.0, True, 2))
    assert watch.whole_since(0.5, normal=1) is None
