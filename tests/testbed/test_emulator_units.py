"""The emulator's pieces without a network: parsing, the store, the limiters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bruto.testbed.emulator import limits as emulator_limits
from bruto.testbed.emulator import server as emulator
from bruto.testbed.emulator.limits import ConcurrencyLimiter
from bruto.testbed.emulator.limits import FixedWindowLimiter
from bruto.testbed.emulator.store import PaymentStore


def test_timestamps_round_trip_at_microsecond_precision():
    micros = emulator.parse_timestamp_us("2025-07-15T12:34:56.123456Z")
    assert micros == 1752582896123456
    assert emulator.format_timestamp_us(micros) == "2025-07-15T12:34:56.123456Z"
    assert emulator.parse_timestamp_us("2025-07-15T12:34:56.000Z") == 1752582896000000
    # No offset: UTC, as the real database column.
    assert emulator.parse_timestamp_us("2025-07-15T12:34:56") == 1752582896000000


def test_amount_parsing_refuses_what_is_not_a_number():
    for value in ("1.0", True, None, float("nan"), float("inf"), 1e30):
        with pytest.raises(emulator.BadRequest):
            emulator.parse_amount_cents(value)
    assert emulator.parse_amount_cents(19.9) == 1990
    assert emulator.format_cents(-5) == "-0.05"


def test_store_grows_past_its_capacity_and_sums_in_cents():
    store = PaymentStore(capacity=4)
    for row in range(10_000):
        assert store.insert(f"id-{row}", 1990, row)
    assert len(store) == 10_000
    assert store.summary(None, None) == (10_000, 19_900_000)
    assert store.summary(10, 19) == (10, 19_900)  # both bounds inclusive
    assert store.get("id-9999") == (1990, 9999)
    assert not store.insert("id-5", 1, 1)
    store.purge()
    assert store.summary(None, None) == (0, 0)
    assert store.get("id-5") is None


def test_store_summary_matches_a_plain_loop():
    rng = np.random.default_rng(7)
    store = PaymentStore()
    rows = [(int(at), int(cents)) for at, cents in
            zip(rng.integers(0, 1000, 5000), rng.integers(1, 100_000, 5000))]
    for index, (at, cents) in enumerate(rows):
        store.insert(str(index), cents, at)
    for low, high in ((0, 999), (100, 100), (250, 740), (900, 100)):
        inside = [cents for at, cents in rows if low <= at <= high]
        assert store.summary(low, high) == (len(inside), sum(inside))


def test_concurrency_limiter_hands_permits_to_the_oldest_waiter():
    async def scenario():
        limiter = ConcurrencyLimiter(1, 2)
        assert await limiter.acquire()
        order = []

        async def wait(name):
            assert await limiter.acquire()
            order.append(name)

        first = asyncio.create_task(wait("first"))
        await asyncio.sleep(0)
        second = asyncio.create_task(wait("second"))
        await asyncio.sleep(0)
        assert not await limiter.acquire()  # 1 held, 2 queued: full
        limiter.release()
        await first
        limiter.release()
        await second
        assert order == ["first", "second"]
        limiter.release()
        assert await limiter.acquire()  # the permit is back

    asyncio.run(scenario())


def test_concurrency_limiter_survives_a_cancelled_waiter():
    async def scenario():
        limiter = ConcurrencyLimiter(1, 1)
        assert await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # Its queue place is free again, and the permit is not lost.
        queued = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        limiter.release()
        assert await queued

    asyncio.run(scenario())


def test_fixed_window_limiter_books_following_windows(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(emulator_limits.time, "monotonic", lambda: clock[0])
    limiter = FixedWindowLimiter(5.0, 2)
    clock[0] += 1.0  # 1 s into window 0
    assert limiter.claim() == 0.0
    assert limiter.claim() == pytest.approx(4.0)  # start of window 1
    assert limiter.claim() == pytest.approx(9.0)  # start of window 2
    assert limiter.claim() is None
    assert limiter.retry_after() == 14  # window 3 starts at 15 s
    clock[0] += 5.0  # window 1: its permit is the first waiter's
    assert limiter.claim() == pytest.approx(9.0)  # window 3
    clock[0] += 20.0  # window 5: every booking is in the past
    assert limiter.claim() == 0.0
