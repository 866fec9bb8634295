"""Many bruto hosts as one payment system, on PostgreSQL (``BRUTO_DATABASE_URL``; docs/SCALING.md).

What stays in each host's shared memory: intake, the outbox, the ledger, the
health table; POST /payments never reaches the database. What PostgreSQL
holds, for every host: who claimed each correlationId (``bruto_claims``: a
payment is sent only by the host that claimed it), what the processors
confirmed (``bruto_payments``, published from each host's ledger), and each
host's publication position and lease (``bruto_hosts``: a host that cannot
renew its lease stops sending; another takes its unconfirmed claims over).

Imported only when the URL is set: the modules that import psycopg
(``client``, the only one that imports it directly, with a clear error when
it is missing; ``database``, ``health``, ``link``, ``summary``, ``lookup``)
are imported by the dispatcher and the web worker after gevent's
monkey-patching, which psycopg's waits need to be cooperative. ``host`` and
``counters`` import no database client.
"""
