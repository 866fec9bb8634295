"""A stateful model of two hosts' outboxes claiming through one claim table (bruto.cluster).

Hypothesis plays the world around two outboxes in claiming mode: payments
accepted by either host, some by both (the same correlationId posted to both
at once, or again later); each host's drains, claims (the claim table as the
database keeps it: first claim wins, a host's own claim answered again as
its own), sends and lookups; processors that store or fail a payment; the
database going away and coming back (nothing is claimed meanwhile); hosts
crashing between any two steps, with their requests out stored or not.

After every step: no correlationId was ever sent by two hosts, none is
stored by both processors, and every accepted payment is held by some host
(intake, outbox or ledger) or was dropped by a host because the one that
claimed it holds it. At the end, with the database up and the processors
healthy: every accepted payment is stored exactly once, in the ledger of the
host that claimed it, as the processor stored it.

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


class ModelHost:
    def __init__(self, name: str, now: int):
        self.name = name
        self.regions = DispatcherRegions.in_memory(1, 256, 64, 1024)
        self.writer = IntakeWriter.over(0, self.regions)
        self.out: list = []  # actions carried out, their answers not delivered yet
        self.start(now)

    def start(self, now: int) -> None:
        self.outbox = Outbox(self.regions, POLICY, claiming=True)
        self.outbox.recover(now)
        self.out = []

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
        self.database_up = True
        self.stored: list[dict[bytes, tuple[int, int]]] = [{}, {}]  # per processor: id -> (requested_at, cents)
        self.failing = [False, False]
        self.senders: dict[bytes, set[str]] = {}  # which hosts ever sent each id
        self.accepted: dict[bytes, int] = {}  # id -> amount first accepted anywhere
        self.accepted_by: dict[bytes, set[str]] = {}
        for host in self.hosts.values():
            self._poll_health(host)

    # -- the world ---------------------------------------------------------------

    def _poll_health(self, host: ModelHost) -> None:
        for processor in (0, 1):
            host.outbox.health_reported(processor, Health(self.failing[processor], 0), self.now, self.now)

    def _step(self, host: ModelHost) -> None:
        host.outbox.drain(self.now)
        if self.database_up:
            batch = host.outbox.to_claim(1000)
            mine = {cid for _, cid in batch if self.claims.setdefault(cid, host.name) == host.name}
            host.outbox.claimed(batch, mine)
        for action in host.outbox.poll(self.now):
            if isinstance(action, Send):
                self.senders.setdefault(action.correlation_id, set()).add(host.name)
            host.out.append(action)

    def _answer(self, host: ModelHost, action, stored: bool) -> None:
        if isinstance(action, Send):
            target = self.stored[action.processor]
            if action.correlation_id in target:
                outcome = Outcome.DUPLICATE
            elif stored and not self.failing[action.processor]:
                target[action.correlation_id] = (action.requested_at, action.amount_cents)
                outcome = Outcome.STORED
            else:
                outcome = Outcome.FAILED
            host.outbox.attempt_done(action, outcome, self.now, 1000)
        else:
            found = self.stored[action.processor].get(action.correlation_id)
            host.outbox.lookup_done(action, None if found is None else Stored(*found), self.now)

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

    @rule(ms=st.sampled_from([1, 60, 1500, 6000]))
    def time_passes(self, ms):
        self.now += ms * 1000
        for host in self.hosts.values():
            self._poll_health(host)

    @rule(host=st.sampled_from(HOSTS), stored=st.booleans())
    def host_crashes(self, host, stored):
        crashed = self.hosts[host]
        for action in crashed.out:  # what was out reached the processor, or did not; its answer is lost
            if isinstance(action, Send) and stored and not self.failing[action.processor]:
                self.stored[action.processor].setdefault(action.correlation_id,
                                                         (action.requested_at, action.amount_cents))
        crashed.start(self.now)

    # -- the promises ----------------------------------------------------------------

    @invariant()
    def no_payment_is_sent_by_two_hosts(self):
        assert all(len(hosts) == 1 for hosts in self.senders.values())

    @invariant()
    def no_payment_is_stored_by_both_processors(self):
        assert not self.stored[0].keys() & self.stored[1].keys()

    @invariant()
    def every_accepted_payment_is_held_by_a_host_that_accepted_it(self):
        held = {name: host.held() for name, host in self.hosts.items()}
        for correlation_id, by in self.accepted_by.items():
            owner = self.claims.get(correlation_id)
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
                self._poll_health(host)
                self._step(host)
                while host.out:
                    self._answer(host, host.out.pop(), stored=True)
                self._step(host)
        stored = {cid: (processor, *row) for processor, rows in enumerate(self.stored) for cid, row in rows.items()}
        ledgers = {name: host.ledger() for name, host in self.hosts.items()}
        assert not ledgers["a"].keys() & ledgers["b"].keys()
        assert {**ledgers["a"], **ledgers["b"]} == {cid: (p, at, cents) for cid, (p, at, cents) in stored.items()}
        assert stored.keys() == self.accepted.keys()
        for correlation_id, (_, _, cents) in stored.items():
            assert correlation_id in ledgers[self.claims[correlation_id]]
            assert cents == self.accepted[correlation_id]


TwoHosts.TestCase.settings = settings(max_examples=int(os.environ.get("BRUTO_MODEL_EXAMPLES", "300")),
                                      stateful_step_count=30, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])
test_two_hosts_claiming_keep_every_promise = TwoHosts.TestCase
