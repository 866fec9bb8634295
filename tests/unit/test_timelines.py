"""The official scripts' timelines, played against the outbox in simulated time.

Each test runs the real dispatcher core (bruto.dispatcher.outbox over regions in
process memory) through a whole official run: payments arriving as the
script's users ramp up, two processors that follow the script's stages as the
emulator does (the delay in force when a request arrives; the failure flag
read when the delay ends; the payment stored then), health polls every 5.1 s,
read timeouts and lookups. Nothing is sampled: from each payment's moments
(when the processor stored it, when bruto's ledger had it) the test computes
every instant at which a consistency probe over ``[now - 15 s, now - offset]``
would see bruto and a processor disagree, and where every payment went.

Deterministic: no threads, no sockets, no clock; the arrival times and the
health polls' phase are fixed: the poll comes 10 ms before the stage change
that matters most, so it is known only 5.1 s later.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import uuid

from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Lookup
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import DEFAULT
from bruto.shm.layout import FALLBACK
from bruto.shm.layout import DispatcherRegions

S = 1_000_000
MS = 1_000
T0 = 1_700_000_000 * S
NETWORK_US = 500              # one way, bruto <-> processor
ANSWER_PATH_US = 2 * MS       # from the answer's arrival to the ledger (the dispatcher's loop)
HEALTH_EVERY_US = 5_100_000
SENDERS = 384                 # BRUTO_SENDERS: connections per processor
NEVER = math.inf


@dataclasses.dataclass(frozen=True)
class Stage:
    at_s: float
    delay_ms: tuple[int, int]      # default, fallback
    failing: tuple[bool, bool]


# CHALLENGE.md §3b and §3.
FINAL = [Stage(0, (0, 0), (False, False)), Stage(30, (1000, 0), (False, False)),
         Stage(60, (500, 0), (False, False)), Stage(90, (2000, 1000), (True, False)),
         Stage(120, (5000, 5), (True, False)), Stage(150, (0, 5), (False, True)),
         Stage(180, (100, 5), (False, False)), Stage(210, (50, 0), (False, False)),
         Stage(240, (103, 10), (False, False)), Stage(270, (2000, 0), (False, False))]
PREVIEW = [Stage(0, (0, 0), (False, False)), Stage(10, (100, 0), (False, False)),
           Stage(20, (100, 0), (True, False)), Stage(30, (2000, 1000), (True, True)),
           Stage(40, (20, 20), (False, False)), Stage(50, (0, 5000), (False, False))]


@dataclasses.dataclass
class Payment:
    sent_at: int = 0
    requested_at: int = 0
    processor: int = -1
    probe: bool = False
    stored_at: float = NEVER       # by a processor
    stored_by: int = -1
    stored_requested_at: int = 0
    counted_at: float = NEVER      # in bruto's ledger
    counted_requested_at: int = 0


@dataclasses.dataclass
class Run:
    payments: dict[bytes, Payment]
    stored: tuple[int, int]        # payments each processor stored by the end
    offset_s: float
    end: int

    def exposures(self) -> list[tuple[float, float, bytes]]:
        """Every interval of probe times at which a payment counts on one side only:
        a processor has it in the window and bruto does not yet (bruto counts only what a
        processor answered stored, so never the other way round)."""
        found = []
        for correlation_id, p in self.payments.items():
            if p.stored_at is NEVER:
                continue
            assert p.counted_at >= p.stored_at and p.counted_requested_at in (0, p.stored_requested_at)
            start = max(p.stored_at, p.stored_requested_at + self.offset_s * S)
            end = min(p.counted_at, p.stored_requested_at + 15 * S)
            if start < end:
                found.append((start, end, correlation_id))
        return sorted(found)

    def exposed_us(self) -> float:
        """The total length of the instants at which some probe would see a difference."""
        total, reach = 0.0, -NEVER
        for start, end, _ in self.exposures():
            if end > reach:
                total += end - max(start, reach)
                reach = end
        return total

    def through(self, processor: int) -> int:
        return self.stored[processor]

    def unsent(self) -> int:
        return sum(1 for p in self.payments.values() if p.stored_at > self.end)


def arrivals(peak_users: int, duration_s: int):
    """When each payment arrives, in whole milliseconds: users ramp from 1 to ``peak_users``,
    each posting once a second, so the count by t is the integral of the users."""
    slope = (peak_users - 1) / duration_s
    total = duration_s + slope * duration_s ** 2 / 2
    for k in range(int(total)):
        t = (-1 + math.sqrt(1 + 2 * slope * k)) / slope  # solves t + slope t² / 2 = k
        yield T0 + int(t * 1000) * MS


class World:
    """The outbox, two processors following ``stages``, and an event loop in simulated time."""

    def __init__(self, stages: list[Stage], fees: tuple[float, float]):
        self.stages = stages
        self.regions = DispatcherRegions.in_memory(intake_slots=1, intake_capacity=8192,
                                                   outbox_capacity=32768, ledger_capacity=1 << 17)
        self.writer = IntakeWriter.over(0, self.regions)
        policy = routing.Policy.from_terms(*fees, 90, max_in_flight=SENDERS)
        self.outbox = Outbox(self.regions, policy)
        self.outbox.recover(T0)
        self.payments: dict[bytes, Payment] = {}
        self.stored: list[dict[bytes, int]] = [{}, {}]  # processor -> id -> requested_at
        self.events: list = []
        self.order = itertools.count()
        self.counted = 0
        self.out = [0, 0]  # payments out, per processor

    def stage(self, at: float) -> Stage:
        seconds = (at - T0) / S
        return [stage for stage in self.stages if stage.at_s <= seconds][-1]

    def at(self, when: float, handler, *args) -> None:
        heapq.heappush(self.events, (when, next(self.order), handler, args))

    def run(self, arrival_times, end_s: float, offset_s: float, unseen_change_s: float) -> Run:
        """Play until ``end_s``; each processor's health is polled 10 ms before ``unseen_change_s``."""
        for when in arrival_times:
            self.at(when, self._arrive)
        end = T0 + int(end_s * S)
        first_poll = (int(unseen_change_s * S) - 10 * MS) % HEALTH_EVERY_US
        for processor in (DEFAULT, FALLBACK):
            self.at(T0 + first_poll, self._poll_health, processor)
        woken_at = None
        while self.events and self.events[0][0] <= end:
            now = self.events[0][0]
            while self.events and self.events[0][0] == now:
                _, _, handler, args = heapq.heappop(self.events)
                handler(now, *args)
            self.outbox.drain(now)
            for action in self.outbox.poll(now):
                self._carry_out(action, now)
            self._follow_ledger(now)
            wake = self.outbox.wake_at(now)
            if wake is not None and wake != woken_at:
                woken_at = wake
                self.at(max(wake, now + 1), self._wake)
        stored = (len(self.stored[DEFAULT]), len(self.stored[FALLBACK]))
        return Run(self.payments, stored, offset_s, end)

    # -- the world's events ----------------------------------------------------------

    def _arrive(self, now: int) -> None:
        correlation_id = uuid.UUID(int=len(self.payments) + 1).bytes
        self.payments[correlation_id] = Payment()
        self.writer.append(correlation_id, 2005, now)

    def _wake(self, now: int) -> None:
        pass  # the dispatcher's loop runs after every event

    def _poll_health(self, now: int, processor: int) -> None:
        stage = self.stage(now)
        report = Health(stage.failing[processor], stage.delay_ms[processor])
        self.at(now + 2 * NETWORK_US, self._health_answered, processor, report, now)
        self.at(now + HEALTH_EVERY_US, self._poll_health, processor)

    def _health_answered(self, now: int, processor: int, report: Health, asked_at: int) -> None:
        self.outbox.health_reported(processor, report, asked_at, now)

    def _carry_out(self, action, now: int) -> None:
        if isinstance(action, Lookup):
            self.at(now + NETWORK_US, self._look_up, action)
            return
        assert self.out[action.processor] < SENDERS, "more payments out than the processor's connections"
        self.out[action.processor] += 1
        payment = self.payments[action.correlation_id]
        payment.sent_at, payment.requested_at, payment.processor = now, action.requested_at, action.processor
        payment.probe = self.outbox._breakers[action.processor].state != 0
        arrived = now + NETWORK_US
        done = arrived + self.stage(arrived).delay_ms[action.processor] * MS
        self.at(done, self._processed, action, now, min(done + NETWORK_US, now + int(action.timeout_s * S)))

    def _processed(self, now: int, send, sent_at: int, deadline: int) -> None:
        """The processor's delay is over: it fails or stores, and its answer heads back."""
        processor = send.processor
        if self.stage(now).failing[processor]:
            outcome = Outcome.FAILED
        elif any(send.correlation_id in stored for stored in self.stored):
            assert send.correlation_id in self.stored[processor], "stored by both processors"
            outcome = Outcome.DUPLICATE
        else:
            self.stored[processor][send.correlation_id] = send.requested_at
            payment = self.payments[send.correlation_id]
            payment.stored_at, payment.stored_by, payment.stored_requested_at = now, processor, send.requested_at
            outcome = Outcome.STORED
        if now + NETWORK_US > deadline:
            outcome = Outcome.UNKNOWN  # the read timed out first
        answered = min(now + NETWORK_US, deadline) + ANSWER_PATH_US
        self.at(answered, self._answered, send, outcome, sent_at)

    def _answered(self, now: int, send, outcome: Outcome, sent_at: int) -> None:
        self.out[send.processor] -= 1
        self.outbox.attempt_done(send, outcome, now, now - sent_at)

    def _look_up(self, now: int, lookup: Lookup) -> None:
        requested_at = self.stored[lookup.processor].get(lookup.correlation_id)
        found = None if requested_at is None else Stored(requested_at, 2005)
        self.at(now + NETWORK_US + ANSWER_PATH_US, self._looked_up, lookup, found)

    def _looked_up(self, now: int, lookup: Lookup, found) -> None:
        self.outbox.lookup_done(lookup, found, now)

    def _follow_ledger(self, now: int) -> None:
        ledger = self.regions.ledger
        count = int(ledger.counters["count"])
        for index in range(self.counted, count):
            record = ledger.columns
            correlation_id = record["correlation_id"][index % ledger.capacity].tobytes()
            payment = self.payments[correlation_id]
            assert payment.counted_at is NEVER, "counted twice"
            assert int(record["processor"][index % ledger.capacity]) == payment.stored_by
            payment.counted_at = now
            payment.counted_requested_at = int(record["requested_at"][index % ledger.capacity])
        self.counted = count


def run_final(fees=(0.07, 0.10), stages=FINAL) -> Run:
    # The ramp ends at 300 s; the processors' summaries are read a few seconds later.
    return World(stages, fees).run(arrivals(603, 300), end_s=305, offset_s=2.0, unseen_change_s=270)


def run_preview(fees=(0.05, 0.15)) -> Run:
    return World(PREVIEW, fees).run(arrivals(550, 60), end_s=65, offset_s=1.5, unseen_change_s=40)


def sent_within(run: Run, correlation_id: bytes, since_s: float, seconds: float) -> bool:
    sent_s = (run.payments[correlation_id].sent_at - T0) / S
    return since_s <= sent_s < since_s + seconds


# What a jump of default's delay from ~100 ms to 2 s with no notice may put
# inside the probe's window: what was sent before default was late (1.5 times
# its answers' time plus the margin), a few milliseconds each.
JUMP_SENDS_S = 0.25


def test_the_final_stores_everything_and_a_probe_can_only_catch_the_unannounced_jump():
    run = run_final()
    assert run.unsent() == 0  # lag 0: every payment stored by the end
    assert run.through(DEFAULT) >= 0.6 * len(run.payments)  # default whenever it is up and fast
    exposed = run.exposures()
    probes = [cid for _, _, cid in exposed if run.payments[cid].probe]
    jump = [cid for _, _, cid in exposed if not run.payments[cid].probe]
    # A probe sent while default fails for 5 s and stored when the failing stage ends (150 s).
    assert len(probes) <= 1
    # At 270 s default answers in 2,000 ms instead of 103 and says so only at its next health
    # report; what went out before it was late is stored inside the window before its answer.
    assert jump and all(sent_within(run, cid, 270, JUMP_SENDS_S) for cid in jump)
    assert all(end - start <= NETWORK_US + ANSWER_PATH_US for start, end, _ in exposed)
    assert run.exposed_us() <= JUMP_SENDS_S * S + len(probes) * (NETWORK_US + ANSWER_PATH_US)


def test_the_final_at_the_previews_fees_still_stores_everything():
    run = run_final(fees=(0.05, 0.15))  # a patience of 10.6 s instead of 3
    assert run.unsent() == 0
    assert all(sent_within(run, cid, 270, JUMP_SENDS_S) or run.payments[cid].probe
               for _, _, cid in run.exposures())


def test_the_preview_waits_out_the_outage_for_default():
    run = run_preview()
    assert run.unsent() == 0
    # Both processors come back at 40 s; fallback's probe answers first (its delay was
    # 1 s, default's 2 s), so a few payments go there before default's probe is back.
    assert run.through(FALLBACK) <= 50
    exposed = run.exposures()
    # Default's last probe of the outage: sent into its 2-s delay, stored as the failures stop.
    assert len(exposed) <= 1 and all(run.payments[cid].probe for _, _, cid in exposed)


def test_the_late_rule_bounds_what_goes_into_an_unannounced_jump(monkeypatch):
    """Fewer users than the final's peak: the in-flight cap (sized for the target rate) no longer
    bounds what is sent into the jump; being late does."""
    jump = [Stage(0, (103, 0), (False, False)), Stage(20, (2000, 0), (False, False))]

    def run():
        return World(jump, (0.07, 0.10)).run(arrivals(200, 40), end_s=45, offset_s=2.0, unseen_change_s=20)

    with_rule = run()
    assert all(sent_within(with_rule, cid, 20, JUMP_SENDS_S) for _, _, cid in with_rule.exposures())
    monkeypatch.setattr(routing, "late", lambda answering_ms, waiting_ms: False)
    without = run()
    assert without.exposed_us() > 3 * with_rule.exposed_us()
