"""Where the next payment goes, how long to wait for it, how many at once.

Pure functions of the breakers, the processors' latencies and the clock: they
read no shared memory and write nothing, so every rule here is tested without
processes or sockets (tests/unit/test_routing.py).

## The profit model

A payment of amount A earns 0.95 A through default and 0.85 A through
fallback: fallback costs 0.10 A more. Waiting for default costs nothing as
long as the payment is processed before anyone counts it (the official test
counts at its end: a payment still waiting then is lag, worth 0 instead of
0.95 A). So a waiting payment should move to fallback only when the chance
that default stays down until the end, times 0.95 A, exceeds 0.10 A: that is,
when P(default still down at the end) > 0.10 / 0.95 ≈ 10.5 %.

We cannot see the end, so the policy uses the one signal that predicts it:
how long default has been down. Outages in the official timeline last 20 s
(t = 20 s to 40 s); the backlog they leave (~20 s x 500/s = 10,000 payments)
drains in a few seconds once default is back. ``patience_us`` is therefore
set past the longest outage we expect to recover from
(``Settings.default_patience_s``, 30 s by default): below
it, every payment waits for default; past it, default is treated as down for
good and new attempts go to fallback when fallback's breaker lets them, until
default's breaker closes again (its probes continue meanwhile).

Both down: everything waits. Nothing is ever sent to a processor whose breaker
is open except one probe payment at a time.
"""

from __future__ import annotations

import dataclasses
import math

from bruto.dispatcher import breaker
from bruto.dispatcher.breaker import Breaker
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK

# Payments per second the dispatcher should be able to sustain, for sizing
# in-flight concurrency by Little's law (official peak: ~550/s).
TARGET_RATE = 600.0
MIN_IN_FLIGHT = 16
# Never wait less than this for an answer, whatever the processor reports.
# The delay a processor reports reaches us up to 5 s late (one health call per
# window), and a request keeps the delay in force when it arrived: a payment
# sent just before the delay rises to 2,000 ms is answered 2 s later. Giving
# up before that answer makes the outcome unknown while the processor stores
# the payment, and the consistency probe can see the processor's count before
# ours. So the floor covers the largest delay the official test configures
# (5,000 ms) with room to spare; a long wait costs one idle greenlet.
TIMEOUT_FLOOR_S = 7.0


@dataclasses.dataclass(frozen=True)
class Policy:
    patience_us: int = 30_000_000
    target_rate: float = TARGET_RATE
    max_in_flight: int = 128


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """Send the next payment to ``processor``; ``probe``: as the single probe of its open breaker."""

    processor: int
    probe: bool = False


def timeout_s(expected_latency_ms: int) -> float:
    """Read timeout for a payment: never shorter than the processor needs to answer.

    Three times the expected latency plus a second, and never below the floor:
    a timeout that fires before a slow processor answers turns a clear outcome
    into an unknown one, which costs a lookup and opens a window of
    inconsistency.
    """
    return max(TIMEOUT_FLOOR_S, 1 + 3 * expected_latency_ms / 1000)


def in_flight_limit(expected_latency_ms: int, policy: Policy) -> int:
    """Little's law: payments in flight = rate x latency, with 50 % headroom."""
    latency_s = expected_latency_ms / 1000 + 0.002
    wanted = math.ceil(policy.target_rate * latency_s * 1.5)
    return max(MIN_IN_FLIGHT, min(policy.max_in_flight, wanted))


def may_send(state: Breaker, expected_latency_ms: int, in_flight: int, policy: Policy) -> bool:
    """Whether one more payment may go to this processor now (probes aside)."""
    if state.state == breaker.CLOSED:
        return in_flight < in_flight_limit(expected_latency_ms, policy)
    if state.state == breaker.HALF_OPEN:
        return in_flight == 0  # the single probe
    return False


def choose(breakers: tuple[Breaker, Breaker], latencies_ms: tuple[int, int], in_flight: tuple[int, int],
           now: int, policy: Policy) -> Choice | None:
    """The processor for the next new attempt, or None to hold it for now.

    Args:
        breakers: the breakers of (default, fallback).
        latencies_ms: what an answer takes now at each (see ``expected_latency_ms``).
        in_flight: payments in flight to (default, fallback).
        now: epoch microseconds.

    Returns:
        A :class:`Choice`; when it is a probe, the caller records
        ``breaker.probing`` for that processor.
    """
    for processor in (DEFAULT, FALLBACK):
        state = breakers[processor]
        if breaker.may_probe(state, now) and in_flight[processor] == 0:
            return Choice(processor, probe=True)
        if may_send(state, latencies_ms[processor], in_flight[processor], policy):
            return Choice(processor)
        if processor == DEFAULT and breaker.down_for(state, now) < policy.patience_us:
            return None  # within the patience: wait for default
    return None


def next_change(breakers: tuple[Breaker, Breaker], now: int, policy: Policy) -> int | None:
    """The next moment :func:`choose` may answer differently with no event: a probe falls due,
    or default's outage reaches the patience. None if nothing changes by itself."""
    moments = [at for at in (breaker.probe_due_at(state) for state in breakers) if at is not None]
    if breakers[DEFAULT].down_since:
        moments.append(breakers[DEFAULT].down_since + policy.patience_us)
    later = [at for at in moments if at > now]
    return min(later) if later else None
