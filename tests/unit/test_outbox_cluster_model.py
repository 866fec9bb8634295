"""A stateful model of two hosts' outboxes claiming through one claim table (bruto.cluster).

Hypothesis plays the world around two outboxes in claiming mode: payments
accepted by either host, some by both (the same correlationId posted to both
at once, or again later); each host's drains, claims (the claim table as the
database keeps it: first claim wins, a host's own claim answered again as
its own), sends and lookups; processors that store or fail a payment; the
database going away and coming back (nothing is claimed meanwhile); hosts
crashing between any two steps, with their requests out stored or not;
leases (bruto.cluster.link): renewed or not, so a host's lease lapses, the
other host takes its unconfirmed claims over (the epoch moved on), hands
them to its outbox as lookups on both processors (or crashes first), and
the lost host comes back, renewing (and reconciling) late, or restarting.
A processor decides what it does with a request within its delay (here:
by the next time that passes), whenever its answer arrives.

After every step: a host sends a payment only while the claim table says it
is its own and its lease holds in the database, and never while another
host's request for it may still be stored; none is stored by both
processors; every accepted payment is held by some host (intake, outbox or
ledger), by the host that claimed it once claimed, or waits for that host's
outbox in the claim table after a takeover. At the end, with the database
up, both hosts renewing and the processors healthy: every accepted payment
is stored exactly once, in the ledger of the host that claims it, as the
processor stored it (a host whose request was stored after its claim was
taken over holds the same record: the cluster's record keeps one).

The claim statement itself is tested on real PostgreSQL in tests/cluster.
"""

from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine
from hypothesis.stateful import invariant
from hypothesis.stateful import rule

from bruto.dispatcher import routing
from bruto.dispatcher.outbox import Outbox
from bruto.dispatcher.outbox import Send
from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import Stored
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import FREE
from bruto.shm.layout import DispatcherRegions

S = 1_000_000
T0 = 1_700_000_000 * S
POLICY = routing.Policy(patience_us=30 * S)
HOSTS = ("a", "b")
LEASE_US = 10 * S
# A request is stored or not within this of being sent (the processors' delay here is ~0).
SETTLED_US = 2000


class ModelHost:
    def __init__(self, name: str, now: int):
        self.name = name
        self.regions = DispatcherRegions.in_memory(1, 256, 64, 1024)
        self.writer = IntakeWriter.over(0, self.regions)
        self.out: list = []  # [action, outcome decided or None]: carried out, their answers not delivered yet
        self.start(now)

    def start(self, now: int) -> None:
        self.outbox = Outbox(self.regions, POLICY, claiming=True)
        self.outbox.recover(now)
        self.out = []
        self.epoch: int | None = None  # the lease's epoch this dispatcher holds; None: reconcile first

    def held(self) -> set[bytes]:
        """Every id this host holds: intake not drained, outbox entries, ledger."""
        ids = set()
        cursor = int(self.regions.dispatch.records[0]["drained"])
        slab = self.regions.intake[0]
        for n in range(cursor, int(slab.counters["written"])):
            ids.add(slab.records[n % slab.capacity]["correlation_id"].tobytes())
        entries = self.regions.outbox.records
        ids |= {e["correlation_id"].tobytes() for e in entries if int(e["state"]) != FREE}
        return ids | set(self.ledger())

    def ledger(self) -> dict[bytes, tuple[int, int, int]]:
        columns, counters = self.regions.ledger.columns, self.regions.ledger.counters
        return {columns["correlation_id"][n].tobytes(): (int(columns["processor"][n]), int(columns["requested_at"][n]),
                                                         int(columns["amount_cents"][n]))
                for n in range(int(counters["start"]), int(counters["count"]))}


class TwoHosts(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now = T0
        self.hosts = {name: ModelHost(name, self.now) for name in HOSTS}
        self.claims: dict[bytes, str] = {}
        self.taken: dict[bytes, int] = {}  # claims a takeover moved, not yet in the taker's outbox: lapsed at
        self.claim_amounts: dict[bytes, int] = {}
        self.epochs = {name: 0 for name in HOSTS}
        self.lease_until = {name: T0 for name in HOSTS}
        self.taken_lease: dict[str, int | None] = {name: None for name in HOSTS}
        self.database_up = True
        self.stored: list[dict[bytes, tuple[int, int]]] = [{}, {}]  # per processor: id -> (requested_at, cents)
        self.failing = [False, False]
        self.accepted: dict[bytes, int] = {}  # id -> amount first accepted anywhere
        self.accepted_by: dict[bytes, set[str]] = {}
        for host in self.hosts.values():
            self._poll_health(host)
            self._renew(host)

    # -- the world ---------------------------------------------------------------

    def _poll_health(self, host: ModelHost) -> None:
        for processor in (0, 1):
            host.outbox.health_reported(processor, Health(self.failing[processor], 0), self.now, self.now)

    def _step(self, host: ModelHost) -> None:
        host.outbox.drain(self.now)
        if self.database_up and host.epoch == self.epochs[host.name]:  # a claim names its epoch: the fence
            batch = host.outbox.to_claim(1000)
            for (_, cid), cents in zip(batch, host.outbox.amounts(batch)):
                if self.claims.setdefault(cid, host.name) == host.name:
                    self.claim_amounts.setdefault(cid, cents)
            # Taken over but not in the outbox yet: not answered as this host's own.
            mine = {cid for _, cid in batch if self.claims[cid] == host.name and cid not in self.taken}
            host.outbox.claimed(batch, mine)
        for action in host.outbox.poll(self.now):
            if isinstance(action, Send):
                cid = action.correlation_id
                assert self.claims.get(cid) == host.name  # its own claim ...
                assert self.now < self.lease_until[host.name]  # ... under its lease, in the database's view
                for other in self.hosts.values():  # no request of another host may still be stored
                    assert other is host or not any(isinstance(a, Send) and a.correlation_id == cid
                                                    and decided is None for a, decided in other.out)
            host.out.append([action, None])

    def _settle(self, action: Send, stored: bool) -> Outcome:
        """What the processor does with a request: decided once, whenever its answer arrives."""
        target = self.stored[action.processor]
        if action.correlation_id in target:
            return Outcome.DUPLICATE
        if stored and not self.failing[action.processor]:
            target[action.correlation_id] = (action.requested_at, action.amount_cents)
            return Outcome.STORED
        return Outcome.FAILED

    def _answer(self, host: ModelHost, item, stored: bool) -> None:
        action, outcome = item
        if isinstance(action, Send):
            host.outbox.attempt_done(action, outcome if outcome is not None else self._settle(action, stored),
                                     self.now, 1000)
        else:
            found = self.stored[action.processor].get(action.correlation_id)
            host.outbox.lookup_done(action, None if found is None else Stored(*found), self.now)

    def _renew(self, host: ModelHost) -> None:
        """bruto.cluster.link.hold_lease's renewal, against the model's host rows."""
        if not self.database_up:
            return
        if host.epoch is not None and host.epoch != self.epochs[host.name]:
            host.epoch = None  # taken over: sending stops until it has reconciled
            host.outbox.send_until = 0
        if host.epoch is None:
            checked = host.outbox.claimed_entries()
            others = {cid for _, cid in checked if self.claims.get(cid, host.name) != host.name}
            host.outbox.fenced(checked, others)
            host.epoch = self.epochs[host.name]
        self.lease_until[host.name] = self.now + LEASE_US
        host.outbox.send_until = self.now + LEASE_US * 3 // 4

    def _adopt_taken(self, host: ModelHost, cleared: bool = True) -> None:
        """bruto.cluster.link.take_over's second half: the outbox takes them, then the claims say so
        (``cleared``: False, as if that statement failed or the host crashed before it)."""
        if not self.database_up:
            return
        rows = [(cid, self.claim_amounts[cid], lapsed) for cid, lapsed in self.taken.items()
                if self.claims[cid] == host.name]
        held = host.outbox.adopt(rows, host.outbox.largest_delay_ms())
        if cleared:
            for cid in held:
                del self.taken[cid]

    def _accept(self, host: ModelHost, correlation_id: bytes, amount: int) -> None:
        host.writer.append(correlation_id, amount, self.now)
        self.accepted.setdefault(correlation_id, amount)
        self.accepted_by.setdefault(correlation_id, set()).add(host.name)

    # -- rules -------------------------------------------------------------------

    @rule(host=st.sampled_from(HOSTS), count=st.integers(1, 4), amount=st.integers(1, 10**6))
    def accept_new_payments(self, host, count, amount):
        for _ in range(count):
            self._accept(self.hosts[host], uuid.uuid4().bytes, amount)

    @rule(amount=st.integers(1, 10**6))
    def accept_one_payment_on_both_hosts(self, amount):
        correlation_id = uuid.uuid4().bytes
        for host in self.hosts.values():
            self._accept(host, correlation_id, amount)

    @rule(host=st.sampled_from(HOSTS), pick=st.integers(0, 1000))
    def accept_a_known_payment_again(self, host, pick):
        if self.accepted:
            known = sorted(self.accepted)
            correlation_id = known[pick % len(known)]
            self._accept(self.hosts[host], correlation_id, self.accepted[correlation_id])

    @rule(host=st.sampled_from(HOSTS))
    def dispatcher_step(self, host):
        self._step(self.hosts[host])

    @rule(host=st.sampled_from(HOSTS))
    def lease_renewed(self, host):
        self._renew(self.hosts[host])

    @rule(taker=st.sampled_from(HOSTS))
    def a_lost_host_is_taken_over(self, taker):
        """bruto.cluster.database.take_over: only by a host holding its lease, once per lapse."""
        me = self.hosts[taker]
        grace = me.outbox.largest_delay_ms() * 1000 + 1 * S  # + the lookup margin
        if not self.database_up or not me.outbox.may_send(self.now):
            return
        for lost in HOSTS:
            if lost == taker or self.lease_until[lost] + grace >= self.now:
                continue
            if self.taken_lease[lost] == self.lease_until[lost]:
                continue
            published = self.hosts[lost].ledger()
            for cid, owner in self.claims.items():
                if owner == lost and cid not in published:
                    self.claims[cid] = taker
                    self.taken[cid] = self.lease_until[lost]
            self.epochs[lost] += 1
            self.taken_lease[lost] = self.lease_until[lost]

    @rule(host=st.sampled_from(HOSTS), cleared=st.booleans())
    def taken_payments_reach_the_outbox(self, host, cleared):
        self._adopt_taken(self.hosts[host], cleared)

    @rule(host=st.sampled_from(HOSTS), pick=st.integers(0, 1000), stored=st.booleans())
    def an_answer_arrives(self, host, pick, stored):
        out = self.hosts[host].out
        if out:
            self._answer(self.hosts[host], out.pop(pick % len(out)), stored)

    @rule(up=st.booleans())
    def database(self, up):
        self.database_up = up

    @rule(processor=st.integers(0, 1), failing=st.booleans())
    def processor_fails(self, processor, failing):
        self.failing[processor] = failing

    @rule(ms=st.sampled_from([1, 60, 1500, 6000]), stored=st.booleans())
    def time_passes(self, ms, stored):
        self.now += ms * 1000
        for host in self.hosts.values():
            for item in host.out:  # requests whose time in the processor is up are stored, or not
                action, outcome = item
                if isinstance(action, Send) and outcome is None and action.requested_at + SETTLED_US <= self.now:
                    item[1] = self._settle(action, stored)
            self._poll_health(host)

    @rule(host=st.sampled_from(HOSTS), stored=st.booleans())
    def host_crashes(self, host, stored):
        crashed = self.hosts[host]
        for action, outcome in crashed.out:  # what was out reached the processor, or did not; its answer is lost
            if isinstance(action, Send) and outcome is None:
                self._settle(action, stored)
        crashed.start(self.now)

    # -- the promises ----------------------------------------------------------------

    @invariant()
    def no_payment_is_stored_by_both_processors(self):
        assert not self.stored[0].keys() & self.stored[1].keys()

    @invariant()
    def every_accepted_payment_is_held_by_a_host_that_accepted_it(self):
        held = {name: host.held() for name, host in self.hosts.items()}
        for correlation_id, by in self.accepted_by.items():
            owner = self.claims.get(correlation_id)
            if correlation_id in self.taken:
                continue  # in the claim table, for the taker's outbox (bruto_claims.resolve_after)
            if owner is not None:
                assert correlation_id in held[owner]  # the claimer keeps it (a dropped copy is another's)
            else:
                assert any(correlation_id in held[name] for name in by)

    def teardown(self):
        self.database_up = True
        self.failing = [False, False]
        for _ in range(40):
            self.now += 6 * S
            for host in self.hosts.values():
                for item in host.out:
                    if isinstance(item[0], Send) and item[1] is None:
                        item[1] = self._settle(item[0], True)
            for host in self.hosts.values():
                self._poll_health(host)
                self._renew(host)
                self._adopt_taken(host)
                self._step(host)
                while host.out:
                    self._answer(host, host.out.pop(), stored=True)
                self._step(host)
        stored = {cid: (processor, *row) for processor, rows in enumerate(self.stored) for cid, row in rows.items()}
        ledgers = {name: host.ledger() for name, host in self.hosts.items()}
        for cid in ledgers["a"].keys() & ledgers["b"].keys():
            assert ledgers["a"][cid] == ledgers["b"][cid]  # stored by one host's request, found by the other
        assert {**ledgers["a"], **ledgers["b"]} == {cid: (p, at, cents) for cid, (p, at, cents) in stored.items()}
        assert stored.keys() == self.accepted.keys()
        for correlation_id, (_, _, cents) in stored.items():
            assert correlation_id in ledgers[self.claims[correlation_id]]
            assert cents == self.accepted[correlation_id]


TwoHosts.TestCase.settings = settings(max_examples=int(os.environ.get("BRUTO_MODEL_EXAMPLES", "300")),
                                      stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_two_hosts_claiming_keep_every_promise = TwoHosts.TestCase
