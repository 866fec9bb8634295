"""GET /metrics: the shared directory in Prometheus' text format.

Any worker of any instance answers it alike: a ``prometheus_client`` custom
collector reads every shared region at scrape time (bruto.shm.snapshot) and
renders it; nothing is counted twice and no multiprocess-mode files exist.
What the counters count is declared with their layouts (bruto.shm.layout).

Names follow Prometheus' conventions: a ``bruto_`` prefix, base units in the
name (``_seconds``; money in ``_cents``, exact integers), ``_total`` on
counters, ``_timestamp_seconds`` on moments. Counters only grow (purges empty
the ledger, not the counters); the ledger's totals, which purges do reset, are
gauges. Nothing secret is exposed: counts, sizes, states and timings only, no
payment, correlationId or URL.
"""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import HistogramMetricFamily

from bruto.gateway.counters import GatewayCounters
from bruto.gateway.errors import set_error
from bruto.shm.layout import BREAKER_STATES
from bruto.shm.region import RegionError
from bruto.shm.snapshot import SharedRegions


def families(snap: dict):
    """The metric families of a snapshot (bruto.shm.snapshot), in exposition order."""
    bounds = snap["latency_bounds_us"]
    yield from _gateway(snap)
    d = snap["dispatcher"]
    yield _gauge("bruto_dispatcher_up", "1 while a dispatcher holds the shared directory's lock.", value=int(d["alive"]))
    yield _gauge("bruto_dispatcher_start_time_seconds", "When the running dispatcher started (epoch seconds).",
                 value=d["started_at"] / 1e6)
    yield _counter("bruto_payment_duplicates_dropped", "Accepted payments dropped: their correlationId was already taken.",
                   value=d["duplicates_dropped"])
    yield _counter("bruto_purges", "Purges carried out (POST /purge-payments).", value=d["purges"])
    wait = HistogramMetricFamily("bruto_outbox_wait_seconds",
                                 "Time from a payment's acceptance (202) to its confirmation in the ledger.")
    wait.add_metric([], _buckets(d["outbox_wait"], bounds), d["outbox_wait"]["sum_us"] / 1e6)
    yield wait

    o = snap["outbox"]
    outbox = GaugeMetricFamily("bruto_outbox_payments",
                               "Payments in the outbox: queued (waiting to be sent), sent (answer awaited) or "
                               "unresolved (the processor may have stored it: looked up there).",
                               labels=["state"])
    outbox.add_metric(["queued"], o["queued"])
    outbox.add_metric(["sent"], o["sent"])
    outbox.add_metric(["unresolved"], o["unresolved"])
    yield outbox
    yield _gauge("bruto_outbox_capacity", "Payments the outbox can hold.", value=o["capacity"])

    led = snap["ledger"]
    yield _gauge("bruto_ledger_records", "Confirmed payments the ledger holds and summaries count.", value=led["retained"])
    yield _gauge("bruto_ledger_capacity", "Records the ledger's ring holds before it overwrites the oldest.",
                 value=led["capacity"])
    yield _counter("bruto_ledger_appended", "Records ever appended to the ledger.", value=led["count"])
    yield _gauge("bruto_ledger_evicted_until_timestamp_seconds",
                 "Retention horizon: latest requestedAt the ring has overwritten (0: none lost).",
                 value=led["evicted_until"] / 1e6)
    yield from _processors(snap["processors"], bounds)
    if snap.get("cluster") is not None:
        yield from _cluster(snap["cluster"])


def _cluster(c: dict):
    """A host in a cluster (BRUTO_DATABASE_URL): its claims and publication (bruto.cluster.counters)."""
    claims = CounterMetricFamily("bruto_cluster_claimed_payments",
                                 "Payments this host's claims decided: new (claimed now), resumed (claimed by this "
                                 "host before a restart), other_host (claimed by another host: dropped here).",
                                 labels=["result"])
    claims.add_metric(["new"], c["claimed"])
    claims.add_metric(["resumed"], c["resumed"])
    claims.add_metric(["other_host"], c["cross_host_duplicates"])
    yield claims
    yield _counter("bruto_cluster_claim_statements", "Claim statements that succeeded.", value=c["claims"])
    errors = CounterMetricFamily("bruto_cluster_database_errors",
                                 "Statements that failed: the database unreachable or failing.", labels=["work"])
    errors.add_metric(["claim"], c["claim_errors"])
    errors.add_metric(["publish"], c["publish_errors"])
    errors.add_metric(["lease"], c["lease_errors"])
    yield errors
    yield _counter("bruto_cluster_published_payments", "Confirmations this host wrote to the cluster's record.",
                   value=c["published"])
    yield _gauge("bruto_cluster_unpublished_payments",
                 "Confirmations in this host's ledger not yet in the cluster's record (publication lag).",
                 value=c["unpublished"])
    yield _gauge("bruto_cluster_health_poller", "1 while this host polls service-health for the whole cluster.",
                 value=c["poller"])
    yield _gauge("bruto_cluster_lease_held", "1 while this host's lease lets it send (renewed in time).",
                 value=c["lease_held"])
    yield _counter("bruto_cluster_lease_renewals", "Renewals of this host's lease that succeeded.",
                   value=c["renewals"])
    yield _counter("bruto_cluster_takeovers", "Lost hosts (lease lapsed) whose unconfirmed payments this host took over.",
                   value=c["takeovers"])
    taken = CounterMetricFamily("bruto_cluster_taken_over_payments",
                                "Payments that changed host in a takeover: taken (into this host's outbox, to be "
                                "looked up on both processors), fenced (dropped here: another host had taken them).",
                                labels=["result"])
    taken.add_metric(["taken"], c["taken_over"])
    taken.add_metric(["fenced"], c["fenced"])
    yield taken
    yield _gauge("bruto_cluster_database_up", "1 while this host's last statement to the database succeeded.",
                 value=c["db_up"])


def _gateway(snap: dict):
    requests = CounterMetricFamily("bruto_http_requests", "Answers of the API by route and status, per web worker slot.",
                                   labels=["slot", "route", "status"])
    rejected = CounterMetricFamily("bruto_payments_rejected", "POST /payments refused, by reason, per web worker slot.",
                                   labels=["slot", "reason"])
    protocol = CounterMetricFamily("bruto_http_protocol_errors",
                                   "Answers the worker gave before the app (malformed HTTP, limits, a failed app).",
                                   labels=["slot", "status"])
    backlog = GaugeMetricFamily("bruto_intake_backlog", "Accepted payments the dispatcher has not drained yet.",
                                labels=["slot"])
    up = GaugeMetricFamily("bruto_worker_up", "1 while a live web worker holds the intake slot.", labels=["slot"])
    for slab in snap["intake"]:
        if not (slab["owner_pid"] or slab["written"]):
            continue  # never claimed
        slot = f"{slab['slot']:02d}"
        for route, by_status in slab["requests"].items():
            for status, n in by_status.items():
                requests.add_metric([slot, route, status], n)
        for reason, n in slab["rejections"].items():
            rejected.add_metric([slot, reason], n)
        for status, n in slab["protocol_errors"].items():  # zeros too: a counter exists before its first error
            protocol.add_metric([slot, status], n)
        backlog.add_metric([slot], slab["backlog"])
        up.add_metric([slot], int(slab["owner_alive"]))
    yield from (requests, rejected, protocol, backlog, up)
    yield _gauge("bruto_intake_capacity", "Payments one intake slab holds.",
                 value=snap["intake"][0]["capacity"] if snap["intake"] else 0)


def _processors(processors: dict, bounds: list[int]):
    def family(kind, name, doc, labels=()):
        return kind(name, doc, labels=["processor", *labels])

    attempts = family(CounterMetricFamily, "bruto_payment_attempts", "POST /payments sent to the processor.")
    retries = family(CounterMetricFamily, "bruto_payment_retries",
                     "Attempts that were not the payment's first (after a failure or an unknown outcome).")
    outcomes = family(CounterMetricFamily, "bruto_payment_outcomes", "How the processor answered the attempts.",
                      ["outcome"])
    lookups = family(CounterMetricFamily, "bruto_payment_lookups",
                     "GET /payments/{id} to resolve unknown outcomes, by result.", ["result"])
    confirmed = family(CounterMetricFamily, "bruto_payments_confirmed",
                       "Payments the processor confirmed, recorded in the ledger.")
    confirmed_cents = family(CounterMetricFamily, "bruto_payments_confirmed_cents",
                             "Amount of the confirmed payments, in cents.")
    polls = family(CounterMetricFamily, "bruto_health_polls", "GET service-health calls, by result.", ["result"])
    latency = family(HistogramMetricFamily, "bruto_payment_send_duration_seconds",
                     "Time a POST /payments to the processor took, whatever its outcome.")
    ledger_payments = family(GaugeMetricFamily, "bruto_ledger_payments",
                             "Payments the ledger counts for the processor (what GET /payments-summary adds up).")
    ledger_cents = family(GaugeMetricFamily, "bruto_ledger_amount_cents",
                          "Amount of the payments the ledger counts for the processor, in cents.")
    failing = family(GaugeMetricFamily, "bruto_processor_failing", "1 if the last service-health said failing.")
    min_response = family(GaugeMetricFamily, "bruto_processor_min_response_time_seconds",
                          "minResponseTime of the last service-health.")
    p90 = family(GaugeMetricFamily, "bruto_processor_latency_p90_seconds", "p90 of the recent successful payments.")
    polled = family(GaugeMetricFamily, "bruto_processor_health_polled_timestamp_seconds",
                    "When the call behind the last service-health answer was made (0: never).")
    state = family(GaugeMetricFamily, "bruto_breaker_state",
                   "Circuit breaker state: 0 closed, 1 open, 2 half-open (one probe payment out).")
    failures = family(GaugeMetricFamily, "bruto_breaker_consecutive_failures", "Failed attempts in a row.")
    transitions = family(CounterMetricFamily, "bruto_breaker_transitions",
                         "Times the breaker entered each state.", ["state"])
    for name, p in processors.items():
        h = p["health"]
        attempts.add_metric([name], p["attempts"])
        retries.add_metric([name], p["retries"])
        for outcome, n in p["outcomes"].items():
            outcomes.add_metric([name, outcome], n)
        for result, n in p["lookups"].items():
            lookups.add_metric([name, result], n)
        confirmed.add_metric([name], p["confirmed"])
        confirmed_cents.add_metric([name], p["confirmed_cents"])
        for result, n in p["health_polls"].items():
            polls.add_metric([name, result], n)
        latency.add_metric([name], _buckets(p["send_latency"], bounds), p["send_latency"]["sum_us"] / 1e6)
        ledger_payments.add_metric([name], p["ledger"]["totalRequests"])
        ledger_cents.add_metric([name], p["ledger"]["totalCents"])
        failing.add_metric([name], h["failing"])
        min_response.add_metric([name], h["min_response_ms"] / 1e3)
        p90.add_metric([name], h["latency_p90_ms"] / 1e3)
        polled.add_metric([name], h["polled_at"] / 1e6)
        state.add_metric([name], BREAKER_STATES.index(p["breaker_state"]))
        failures.add_metric([name], h["consecutive_failures"])
        for entered, n in p["breaker_transitions"].items():
            transitions.add_metric([name, entered], n)
    yield from (attempts, retries, outcomes, lookups, confirmed, confirmed_cents, polls, latency,
                ledger_payments, ledger_cents, failing, min_response, p90, polled, state, failures, transitions)


def _buckets(histogram: dict, bounds: list[int]) -> list[tuple[str, int]]:
    """Prometheus' cumulative buckets (``le`` in seconds) from per-bucket counts."""
    cumulative, total = [], 0
    for bound, n in zip([*bounds, None], histogram["buckets"]):
        total += n
        cumulative.append(("+Inf" if bound is None else f"{bound / 1e6:g}", total))
    return cumulative


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class SharedMemoryCollector:
    """A ``prometheus_client`` collector over a shared directory's regions (attached at the first scrape)."""

    def __init__(self, shm_dir: str):
        self._shm_dir = shm_dir
        self._regions: SharedRegions | None = None

    def collect(self):
        if self._regions is None:
            self._regions = SharedRegions(self._shm_dir)
        yield from families(self._regions.read())


class Metrics:
    """The GET /metrics resource."""

    def __init__(self, shm_dir: str, counters: GatewayCounters):
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SharedMemoryCollector(shm_dir))
        self._counters = counters

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            body = generate_latest(self._registry)
        except RegionError as error:
            self._counters.response(req.path, 503)
            set_error(resp, 503, str(error))
            return
        self._counters.response(req.path, 200)
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = body
