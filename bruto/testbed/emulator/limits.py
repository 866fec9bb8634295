"""The two limiters of the real processor, as ASP.NET's rate-limiting middleware has them.

- `ConcurrencyLimiter` (ASP.NET's ConcurrencyLimiter) guards POST /payments and
  GET /payments/{id}: so many requests at once, so many more queued oldest
  first, the rest turned away with 429.
- `FixedWindowLimiter` (ASP.NET's FixedWindowRateLimiter, one permit per
  window) guards GET /payments/service-health: one call per window, a few
  callers queued into the following windows, the rest turned away with 429
  (whose Retry-After the service sets to the window, server.py).

Both are plain single-loop asyncio objects: no locks, since nothing yields
between reading and updating their state.
"""

from __future__ import annotations

import asyncio
import collections
import time


class ConcurrencyLimiter:
    """Admits `limit` holders at once and queues up to `queue_limit` more, oldest first.

    Args:
        limit: Permits held at once.
        queue_limit: Callers allowed to wait for a permit.
    """

    def __init__(self, limit: int, queue_limit: int):
        self._free = limit
        self._queue_limit = queue_limit
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> bool:
        """Takes a permit, waiting in line if needed.

        Returns:
            False at once if every permit is held and the queue is full (the
            caller answers 429); True once the caller holds a permit, which it
            must give back with `release()`.
        """
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        if len(self._waiters) >= self._queue_limit:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            else:  # the permit was handed over just as we were cancelled
                self.release()
            raise
        return True

    def release(self) -> None:
        """Gives a permit back, straight to the oldest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


class FixedWindowLimiter:
    """One permit per fixed window, with up to `queue_limit` callers booked ahead.

    Windows are aligned on the limiter's creation, as ASP.NET's replenishment
    timer is. A caller that finds the current window's permit taken books the
    next unbooked window and sleeps until it starts, so queued callers are
    served one per window, oldest first.

    Args:
        window: Seconds per window.
        queue_limit: Callers allowed to wait for a later window.
    """

    def __init__(self, window: float, queue_limit: int):
        self._window = window
        self._queue_limit = queue_limit
        self._origin = time.monotonic()
        self._next_free = 0  # index of the earliest window whose permit is unbooked

    def claim(self) -> float | None:
        """Books a permit.

        Returns:
            Seconds to wait before the booked window starts (0.0 to go ahead
            now), or None if the queue is full and the caller must answer 429.
        """
        now = time.monotonic() - self._origin
        current = int(now // self._window)
        if self._next_free <= current:
            self._next_free = current + 1
            return 0.0
        # Windows current+1 .. next_free-1 are booked by waiting callers.
        if self._next_free - 1 - current >= self._queue_limit:
            return None
        wait = self._next_free * self._window - now
        self._next_free += 1
        return wait
