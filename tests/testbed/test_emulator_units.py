"""The emulator's pieces without a network: parsing, the store, the limiters (dotnet.py: test_emulator_dotnet.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiohttp import HttpVersion10
from aiohttp import HttpVersion11
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from bruto.testbed.emulator import limits as emulator_limits
from bruto.testbed.emulator import server as emulator
from bruto.testbed.emulator.limits import ConcurrencyLimiter
from bruto.testbed.emulator.limits import FixedWindowLimiter
from bruto.testbed.emulator.store import PaymentStore


def test_summary_bounds_are_read_to_the_microsecond_as_utc():
    assert emulator.parse_bound_us("2025-07-15T12:34:56.123456Z") == 1752582896123456
    assert emulator.parse_bound_us("2025-07-15T12:34:56") == 1752582896000000
    assert emulator.parse_bound_us("2025-07-15T09:34:56-03:00") == 1752582896000000
    with pytest.raises(emulator.BadRequest):
        emulator.parse_bound_us("soon")


def test_the_health_429_says_the_whole_window():
    assert emulator.Processor("0.05", "123", 5.0).retry_after == "5"
    assert emulator.Processor("0.05", "123", 0.2).retry_after == "1"  # never 0 seconds


def test_the_host_rule_holds_where_aiohttp_passes_a_request_through():
    """Older aiohttp parsers accept an HTTP/1.1 request without Host: the middleware refuses it."""
    async def endpoint(request):
        return web.Response(status=200)

    async def answer(version, headers):
        request = make_mocked_request("GET", "/payments/service-health", headers=headers,
                                      version=version)
        return (await emulator.require_host(request, endpoint)).status

    async def scenario():
        assert await answer(HttpVersion11, {}) == 400
        assert await answer(HttpVersion11, CIMultiDict([("Host", "a"), ("Host", "b")])) == 400
        assert await answer(HttpVersion11, {"Host": "a"}) == 200
        assert await answer(HttpVersion10, {}) == 200

    asyncio.run(scenario())


def test_store_grows_past_its_capacity_and_sums_in_cents():
    store = PaymentStore(capacity=4)
    for row in range(10_000):
        assert store.insert(f"id-{row}", 1990, 1 if row == 15 else 2, row)
    assert len(store) == 10_000
    assert store.summary(None, None) == (10_000, 19_900_000, 2)
    assert store.summary(10, 19) == (10, 19_900, 2)  # both bounds inclusive
    assert store.summary(15, 15) == (1, 1990, 1)  # the largest scale of the rows summed
    assert store.summary(20, 10) == (0, 0, 0)
    assert store.get("id-9999") == (1990, 2, 9999)
    assert store.get("id-15") == (1990, 1, 15)
    assert not store.insert("id-5", 1, 0, 1)
    store.purge()
    assert store.summary(None, None) == (0, 0, 0)
    assert store.get("id-5") is None


def test_store_summary_matches_a_plain_loop():
    rng = np.random.default_rng(7)
    store = PaymentStore()
    rows = [(int(at), int(cents), int(scale)) for at, cents, scale in
            zip(rng.integers(0, 1000, 5000), rng.integers(1, 100_000, 5000), rng.integers(0, 3, 5000))]
    for index, (at, cents, scale) in enumerate(rows):
        store.insert(str(index), cents, scale, at)
    for low, high in ((0, 999), (100, 100), (250, 740), (900, 100)):
        inside = [(cents, scale) for at, cents, scale in rows if low <= at <= high]
        assert store.summary(low, high) == (len(inside), sum(cents for cents, _ in inside),
                                            max((scale for _, scale in inside), default=0))


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
    clock[0] += 5.0  # window 1: its permit is the first waiter's
    assert limiter.claim() == pytest.approx(9.0)  # window 3
    clock[0] += 20.0  # window 5: every booking is in the past
    assert limiter.claim() == 0.0
