"""GET /payments/{correlationId} for the whole cluster: this host's shared memory first, then PostgreSQL.

This host's shared memory (bruto.shm.lookup) knows every state of what this
host accepted, and knows it first; the cluster's record knows, of every
host's payments, who claimed each id (``bruto_claims``) and what was
confirmed (``bruto_payments``), and nothing of a payment a host accepted and
has not claimed yet. So (docs/SCALING.md has the table with the reasons):

| this host's shared memory      | the cluster's record                 | answer                                       |
| ------------------------------ | ------------------------------------ | -------------------------------------------- |
| in_flight, confirmed, rejected | not read                             | 200, this host's (it claimed the id)         |
| waiting                        | confirmed (by any host)              | 200 confirmed, the record's                  |
| waiting                        | claimed by another host              | 200 claimed: the copy here is a duplicate    |
| waiting                        | claimed by this host, or no record   | 200 waiting, this host's                     |
| waiting                        | unreachable                          | 200 waiting, ``"cluster": "unreachable"``    |
| not held                       | confirmed (by any host)              | 200 confirmed, the record's                  |
| not held                       | claimed by another host              | 200 claimed                                  |
| not held                       | claimed by this host                 | 404, this host's reason                      |
| not held                       | no record                            | 404, ``"cluster": "no_record"``              |
| not held                       | unreachable                          | 503 with Retry-After                         |
| held, not known current        | this host behind on a purge, or unreachable | 503 with Retry-After              |

"Not known current": the dispatcher has not checked lately that every purge
asked on another host is applied here (bruto.cluster.counters
``purges_current_until``, docs/SCALING.md "Purges"); then even the first
row asks the record.

``claimed`` is a state of its own, not ``waiting`` or ``in_flight``: the
record says which host holds the payment, not whether that host has sent it
(nor whether the processors refused it for good: rejections are not
published), and a wrong state is never given. Every 200 says which host
holds the payment (``host``: its label in ``bruto_hosts``).

Each web worker reads the record over one connection of its own, made at its
first lookup (none while no lookup needs the database), one lookup at a time.
The whole database part of a lookup (its turn, the connection, the
statement) has LOOKUP_TIMEOUT_S: past it the connection is dropped and the
answer is the database's absence. The wait is gevent's (psycopg's waits are
cooperative once gevent has patched ``select``), so the worker's other
connections go on meanwhile.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid

import gevent
import gevent.lock
import orjson

from bruto.cluster.client import psycopg
from bruto.cluster.database import Unavailable
from bruto.shm.layout import PROCESSOR_NAMES
from bruto.shm.lookup import NotHeld
from bruto.shm.lookup import Payment
from bruto.timefmt import format_iso_ms

log = logging.getLogger("bruto.cluster")

# The most a lookup waits for the database (its turn on the worker's
# connection included) before it answers without it: as long as a summary
# waits for a pooled connection (bruto.cluster.database POOL_TIMEOUT_S).
LOOKUP_TIMEOUT_S = 1.5
# What pg_stat_activity says of these connections.
APPLICATION_NAME = "bruto-lookup"

_RECORD = """
SELECT c.host_id, coalesce(claimer.label, c.host_id::text), (extract(epoch FROM c.claimed_at) * 1000000)::bigint,
       p.processor, p.amount_cents, p.requested_at, coalesce(publisher.label, p.host_id::text),
       (SELECT h.purge_epoch < e.epoch FROM bruto_hosts h, bruto_purge_epoch e WHERE h.host_id = %(host)s)
FROM (SELECT %(id)s::uuid AS correlation_id) wanted
LEFT JOIN bruto_claims c ON c.correlation_id = wanted.correlation_id
LEFT JOIN bruto_payments p ON p.correlation_id = wanted.correlation_id
LEFT JOIN bruto_hosts claimer ON claimer.host_id = c.host_id
LEFT JOIN bruto_hosts publisher ON publisher.host_id = p.host_id
"""

NEVER_HERE = "this host never accepted a payment with this correlationId (since its shared directory was created)"
NO_RECORD = (". The cluster's record has no claim or confirmation of it either: another host may have accepted it and "
             "not claimed it yet (a host claims what it accepted at its next drain, later while it cannot reach "
             "PostgreSQL); only that host can say so")
# The 503's error: what the client is told (the database's own words go to the log).
NOT_HERE = ("no payment {id} on this host ({reason}); the cluster's database {why}, and only it knows whether "
            "another host holds one")
UNREACHABLE = "cannot be reached"
# The 503's error while this host's shared memory may hold what a purge on another host dropped.
BEHIND = ("a purge asked on another host is not applied to this host's shared memory yet{why}; "
          "it answers from it again once it is")
TOO_SLOW = "did not answer within {} s"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A row of ``bruto_claims``: the host that holds the payment."""

    host: uuid.UUID
    label: str
    claimed_at: int  # epoch µs


@dataclasses.dataclass(frozen=True)
class Record:
    """What the cluster's database holds of one correlationId (either part may be missing)."""

    claim: Claim | None
    confirmed: Payment | None
    publisher: str = ""  # the label of the host that published the confirmation
    behind: bool = False  # this host has yet to apply a purge asked on another host


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the route answers: the status, the JSON body, and a Retry-After (seconds) or None."""

    status: int
    body: bytes
    retry_after: int | None = None


def with_fields(body: bytes, **fields: str) -> bytes:
    """A JSON object's body with more fields at its end."""
    extra = b"".join(b',"%s":%s' % (name.encode(), orjson.dumps(value)) for name, value in fields.items())
    return body[:-1] + extra + b"}"


def claimed_json(correlation_id: bytes, claim: Claim) -> bytes:
    return orjson.dumps({"correlationId": str(uuid.UUID(bytes=correlation_id)), "state": "claimed",
                         "host": claim.label, "claimedAt": format_iso_ms(claim.claimed_at)})


def decide(correlation_id: bytes, local: Payment | NotHeld, record: Record, host: uuid.UUID, label: str) -> Answer:
    """The answer from this host's (``host``, ``label``) ``local`` finding and the cluster's ``record``."""
    if record.confirmed is not None:
        return Answer(200, with_fields(record.confirmed.json(), host=record.publisher))
    claim = record.claim
    if claim is not None and claim.host != host:
        return Answer(200, claimed_json(correlation_id, claim))
    if isinstance(local, Payment):
        return Answer(200, with_fields(local.json(), host=label))
    if claim is not None:  # this host claimed it, and knows best what became of it
        return Answer(404, local.json(correlation_id))
    # Never accepted *here* is all this host can say; purged stays true of the copy it held.
    reason = "purged" if local.reason == "purged" else "unknown"
    detail = NEVER_HERE if local.reason == "never_accepted" else local.detail
    return Answer(404, with_fields(NotHeld(reason, detail + NO_RECORD).json(correlation_id), cluster="no_record"))


class ClusterRecord:
    """One worker's reads of the cluster's record; see the module for the connection and its timeout.

    What went wrong is logged (once per outage), not answered: the reason a
    client reads is :data:`UNREACHABLE` or :data:`TOO_SLOW`.

    Args:
        url: a libpq URI (``BRUTO_DATABASE_URL``).
        timeout_s: LOOKUP_TIMEOUT_S, or another bound (tests).
    """

    def __init__(self, url: str, timeout_s: float = LOOKUP_TIMEOUT_S):
        self._url = url
        self.timeout_s = timeout_s
        self._conn: psycopg.Connection | None = None
        self._turn = gevent.lock.Semaphore()
        self._said_down = False

    def find(self, correlation_id: bytes, host: uuid.UUID | None = None) -> Record:
        """The record of ``correlation_id``; raises Unavailable without an answer within ``timeout_s``."""
        deadline = gevent.Timeout(self.timeout_s)
        deadline.start()
        holding = False
        try:
            self._turn.acquire()
            holding = True
            record = self._find(uuid.UUID(bytes=correlation_id), host)
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            if holding:  # cut off in the middle of a statement: the connection's state is unknown
                self._drop()
            self._down(f"no answer within {self.timeout_s} s")
            raise Unavailable(TOO_SLOW.format(self.timeout_s)) from None
        except psycopg.Error as error:
            self._down(str(error).strip() or type(error).__name__)
            raise Unavailable(UNREACHABLE) from error
        finally:
            if holding:
                self._turn.release()
            deadline.close()
        if self._said_down:
            self._said_down = False
            log.info("lookups: PostgreSQL answers again")
        return record

    def _find(self, correlation_id: uuid.UUID, host: uuid.UUID | None) -> Record:
        while True:
            fresh = self._conn is None
            try:
                if self._conn is None:
                    self._conn = psycopg.connect(self._url, autocommit=True, application_name=APPLICATION_NAME,
                                                 options=f"-c statement_timeout={int(self.timeout_s * 1000)}")
                row = self._conn.execute(_RECORD, {"id": correlation_id, "host": host}).fetchone()
            except psycopg.OperationalError:
                self._drop()
                if fresh:
                    raise
                continue  # a connection the server closed (a restart) fails once: again on a new one
            except psycopg.Error:
                self._drop()
                raise
            assert row is not None  # one row, whatever the tables hold
            return _record(correlation_id.bytes, row)

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()  # no wait: libpq's finish writes its goodbye and closes the socket
            self._conn = None

    def _down(self, why: str) -> None:
        if not self._said_down:
            self._said_down = True
            log.warning("lookups: PostgreSQL unavailable (%s); ids this host does not hold are answered 503", why)


def _record(correlation_id: bytes, row: tuple) -> Record:
    claimer, claimer_label, claimed_at, processor, amount_cents, requested_at, publisher_label, behind = row
    claim = None if claimer is None else Claim(claimer, claimer_label, claimed_at)
    if processor is None:
        return Record(claim, None, behind=bool(behind))
    return Record(claim, Payment(correlation_id, "confirmed", amount_cents, PROCESSOR_NAMES[processor], requested_at),
                  publisher_label, bool(behind))


class ClusterFinder:
    """GET /payments/{correlationId}'s answers with ``BRUTO_DATABASE_URL`` (the module's table).

    Args:
        record: the worker's ClusterRecord.
        host, label: this host's id and label (bruto.cluster.host).
    """

    def __init__(self, record: ClusterRecord, host: uuid.UUID, label: str):
        self._record = record
        self._host = host
        self._label = label

    def answer(self, correlation_id: bytes, local: Payment | NotHeld, shm_current: bool = True) -> Answer:
        """``shm_current``: this host's dispatcher has checked, recently enough, that every purge asked on
        another host is applied here (bruto.cluster.link ``keep_current``); if not, only the database can say
        whether ``local`` is still true."""
        if shm_current and isinstance(local, Payment) and local.state != "waiting":
            return Answer(200, with_fields(local.json(), host=self._label))  # only a claimer sends
        try:
            record = self._record.find(correlation_id, self._host)
        except Unavailable as error:
            if isinstance(local, Payment) and not shm_current:
                return Answer(503, orjson.dumps({"error": BEHIND.format(why=f" as far as is known (the cluster's "
                                                                              f"database {error})")}), retry_after=1)
            if isinstance(local, Payment):
                return Answer(200, with_fields(local.json(), host=self._label, cluster="unreachable"))
            message = NOT_HERE.format(id=uuid.UUID(bytes=correlation_id), reason=local.reason, why=error)
            return Answer(503, orjson.dumps({"error": message, "reason": local.reason}), retry_after=1)
        if record.behind and isinstance(local, Payment):
            return Answer(503, orjson.dumps({"error": BEHIND.format(why="")}), retry_after=1)
        if not shm_current and isinstance(local, Payment) and local.state != "waiting":
            return Answer(200, with_fields(local.json(), host=self._label))  # current after all, says the record
        return decide(correlation_id, local, record, self._host, self._label)
