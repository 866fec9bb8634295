"""Where the next payment goes, how long to wait for it, how many at once.

Pure functions of the breakers, the processors' latencies and the clock: they
read no shared memory and write nothing, so every rule here is tested without
processes or sockets (tests/unit/test_routing.py).

## The profit model

A processor with fee f earns (1 - f) A on a payment of amount A; default is
the cheaper one (fees are contract terms: ``Settings.default_fee`` and
``fallback_fee``). A payment that is never stored earns nothing. So the only
reason to hold a payment while fallback could take it is that default may
come back soon enough; the question is how long that bet is worth making.

Holding bets (1 - f_d) A on default coming back before the books close,
against (1 - f_f) A for sure through fallback now. Write r = (1 - f_f) /
(1 - f_d). If the moment the books close is unknown, with a settlement
horizon B (``Settings.settlement_bound_s``: how long bruto may take to hand a
payment to a processor) as its scale, and default's remaining outage is
expected to last as long as it has lasted so far (the estimate that assumes
nothing about outages' lengths), holding is worth it while

    time down so far  <=  B (1 - r) / r  =  B (f_f - f_d) / (1 - f_f)

which is the patience (:func:`Policy.from_terms`):

| fees (default / fallback) | B = 90 s | what follows |
| -- | -- | -- |
| 5 % / 15 % (the preview's) | 10.6 s | an outage of 10 s waits for default |
| 7 % / 10 % (the final's)   | 3.0 s | default failing or slow for minutes: fallback after 3 s |

The patience never exceeds B, so no payment waits for the cheaper processor
longer than the settlement bound.

## What "down" means

Default is down when its breaker is open (it fails), and also when it is
slow: its expected latency (the largest of the delay it announces, the
median of its answers in the last seconds and how long it has kept a
payment waiting) is above ``latency_limit_ms``. A slow processor caps
throughput at (payments in flight) / latency, and a payment it stores at the
end of a long delay is inside the consistency probe's window before bruto
has its answer (docs/DISPATCHER.md): the limit stays below the shortest
offset of the probe (1.5 s) by more than an answer's round trip.

## Late: a delay that changed is not known yet

A processor keeps the delay in force when a request arrived, and its health
report comes every 5 s at best: when its delay jumps (from 100 ms to 2 s,
say), bruto learns it only from answers that do not come. Every payment sent
meanwhile is stored at the end of the new delay, inside the consistency
probe's window before bruto has its answer. So a processor that keeps a
payment waiting half again as long as its recent answers took (plus
:data:`LATE_MARGIN_MS`) is *late*: it takes nothing new, as when it is busy,
until its answers or its health report say what its delay now is, or it has
been slow for long enough that fallback takes over (the patience). What may
still be sent into a jump is what goes out in 1.5 times one answer's time.

## After an outage

What was learnt during an outage is stale once a payment goes through again:
the outbox then forgets that processor's slow answers (its last probe took
the outage's delay) and the delay announced during it, until a health call
asked after the recovery, and probes the other processor at once if it is
down too (the processors' conditions often change together).

Both down: everything waits. Nothing is ever sent to a processor whose breaker
is open except one probe payment at a time (and a second when news of a
recovery comes while the first is stale: ``breaker.reprobe``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bruto.dispatcher import breaker
from bruto.dispatcher.breaker import Breaker
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK

# Payments per second the dispatcher should be able to sustain, for sizing
# in-flight concurrency by Little's law (above both scripts' peak rate).
TARGET_RATE = 650.0
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


# The latency above which a processor is treated as down (see the module
# docstring): below the consistency probe's shortest offset, with room for
# the answer's way back and the dispatcher's own delays.
LATENCY_LIMIT_MS = 1_200
# A processor is late when it keeps a payment waiting more than half again
# what its answers take, plus this margin (for the answers' own jitter):
# it no longer answers as it did, so its delay has changed, and bruto sends it
# nothing new until it knows what the delay is (module docstring).
LATE_MARGIN_MS = 50


@dataclasses.dataclass(frozen=True)
class Policy:
    patience_us: int = 30_000_000
    target_rate: float = TARGET_RATE
    max_in_flight: int = 128
    latency_limit_ms: int = LATENCY_LIMIT_MS

    @classmethod
    def from_terms(cls, default_fee: float, fallback_fee: float, settlement_bound_s: float,
                   **knobs: Any) -> "Policy":
        """The policy that follows from the fees and the settlement bound (the module docstring)."""
        patience_s = settlement_bound_s * max(0.0, fallback_fee - default_fee) / (1 - fallback_fee)
        return cls(patience_us=int(min(patience_s, settlement_bound_s) * 1_000_000), **knobs)


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


def late(answering_ms: int, waiting_ms: int) -> bool:
    """Whether the processor keeps a payment waiting longer than its answers suggest."""
    return waiting_ms > answering_ms * 3 // 2 + LATE_MARGIN_MS


def may_send(state: Breaker, expected_latency_ms: int, in_flight: int, policy: Policy,
             is_late: bool = False) -> bool:
    """Whether one more payment may go to this processor now (probes aside)."""
    if state.state == breaker.CLOSED:
        return (not is_late and expected_latency_ms <= policy.latency_limit_ms
                and in_flight < in_flight_limit(expected_latency_ms, policy))
    if state.state == breaker.HALF_OPEN:
        return in_flight == 0  # the single probe
    return False


def down_since(state: Breaker, slow_since: int) -> int:
    """When the processor went down (its breaker left CLOSED, or it became too slow); 0: up."""
    if state.down_since and slow_since:
        return min(state.down_since, slow_since)
    return state.down_since or slow_since


def choose(breakers: tuple[Breaker, Breaker], latencies_ms: tuple[int, int], in_flight: tuple[int, int],
           now: int, policy: Policy, slow_since: tuple[int, int] = (0, 0),
           is_late: tuple[bool, bool] = (False, False)) -> Choice | None:
    """The processor for the next new attempt, or None to hold it for now.

    Args:
        breakers: the breakers of (default, fallback).
        latencies_ms: what an answer takes now at each (see ``Outbox.latency_ms``).
        in_flight: payments in flight to (default, fallback).
        now: epoch microseconds.
        slow_since: since when each has been slower than the policy's limit (0: it is not).
        is_late: whether each is :func:`late`: it takes nothing new, as when busy.

    Returns:
        A :class:`Choice`; when it is a probe, the caller records
        ``breaker.probing`` for that processor.
    """
    for processor in (DEFAULT, FALLBACK):
        state = breakers[processor]
        # A probe waits for the payments still out to answer, unless there is news of a
        # recovery (a probe at once: breaker.reprobe), which they went out before.
        if breaker.may_probe(state, now) and (in_flight[processor] == 0 or state.probe_at == 0):
            return Choice(processor, probe=True)
        if may_send(state, latencies_ms[processor], in_flight[processor], policy, is_late[processor]):
            return Choice(processor)
        since = down_since(state, slow_since[processor])
        if processor == DEFAULT and (not since or now - since < policy.patience_us):
            return None  # up but busy, or within the patience: wait for default
    return None


def next_change(breakers: tuple[Breaker, Breaker], now: int, policy: Policy,
                slow_since: tuple[int, int] = (0, 0)) -> int | None:
    """The next moment :func:`choose` may answer differently with no event: a probe falls due,
    or default's outage reaches the patience. None if nothing changes by itself."""
    moments = [at for at in (breaker.probe_due_at(state) for state in breakers) if at is not None]
    since = down_since(breakers[DEFAULT], slow_since[DEFAULT])
    if since:
        moments.append(since + policy.patience_us)
    later = [at for at in moments if at > now]
    return min(later) if later else None
