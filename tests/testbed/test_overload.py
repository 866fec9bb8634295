"""Overload in CI (bruto.testbed.faults.overload, compressed): a burst far above what the dispatcher can confirm.

The processors are slowed to 1 s a payment and the shedding limit lowered to
200 waiting payments, so that a burst of unpaced clients is far above
capacity within a second on any machine; the burst ends once 50 payments
were shed. What is asserted holds whatever the timing: bruto sheds with 503
and Retry-After, nothing crashes, every 202 is stored exactly once and no
503 is stored, and once the processors are healed new payments get 202 again.
The figures with the official load at 2,200 VUs: ``bruto-overload``
(docs/RELIABILITY.md).
"""

from __future__ import annotations

import pytest

from bruto.testbed.faults import overload
from bruto.testbed.faults.matrix import World

pytestmark = pytest.mark.slow  # real processes

BURST = overload.Burst(warm_s=2.0, burst_s=60.0, clients=20, delay_ms=1000, recover_s=8.0, settle_s=120.0,
                       sheds_enough=50)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("overload"), env={"BRUTO_SHED_BACKLOG": "200"}).start()
    try:
        yield overload.burst_phase(world, BURST)
    finally:
        world.stop()


def test_past_capacity_bruto_sheds_with_503_and_retry_after(figures):
    flood = figures["flood"]
    assert flood["outcomes"].get("503", 0) >= BURST.sheds_enough, figures
    assert flood["503_with_retry_after"] == flood["outcomes"]["503"], figures
    assert figures["shed"] >= flood["outcomes"]["503"], figures  # bruto counts what it shed


def test_under_overload_nothing_crashes_and_nothing_but_503_is_refused(figures):
    assert figures["restarts"] == {}, figures
    for phase in ("warm", "flood", "after"):
        # A client may give up (1.5 s) on a busy machine; a reset, a refusal or another 5XX is a crash or a bug.
        assert set(figures[phase]["outcomes"]) <= {"202", "503", "timeout"}, figures


def test_every_payment_accepted_under_overload_is_stored_exactly_once_and_no_shed_one_is(figures):
    assert figures["not_whole"] == [], figures
    assert (figures["lost"], figures["doubled"], figures["stored_though_503"]) == (0, 0, 0), figures
    timeouts = sum(figures[phase]["outcomes"].get("timeout", 0) for phase in ("warm", "flood", "after"))
    assert figures["extra"] <= timeouts, figures  # only a client that gave up may not know it was accepted
    assert figures["stored_default"] + figures["stored_fallback"] == figures["accepted"] + figures["extra"], figures


def test_once_the_processors_recover_new_payments_are_accepted_again(figures):
    assert figures["all_202_from_s"] is not None, figures
    assert figures["after"]["outcomes"].get("202", 0) > 0, figures
