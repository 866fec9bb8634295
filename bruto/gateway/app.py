"""The HTTP API (docs/CHALLENGE.md) as a Falcon WSGI app.

POST /payments never leaves the process: validate, append to this worker's
intake slab, answer 202. Summaries are vectorized sums over the shared ledger,
and GET /payments/{correlationId} reads where the payment is in the shared
regions (bruto.shm.lookup), so any worker of any instance answers them alike.
With BRUTO_DATABASE_URL both answer for the cluster: the summary from
PostgreSQL, the lookup from it where this host's shared memory does not know
(bruto.cluster.summary, bruto.cluster.lookup).
"""

from __future__ import annotations

import functools

import falcon

from bruto.config import Settings
from bruto.gateway.admin import GuardedPurge
from bruto.gateway.counters import GatewayCounters
from bruto.gateway.errors import JSON
from bruto.gateway.errors import error_body
from bruto.gateway.errors import set_error
from bruto.gateway.metrics import Metrics
from bruto.gateway.validation import MAX_BODY
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_correlation_id
from bruto.gateway.validation import parse_payment
from bruto.money import format_cents
from bruto.shm import ledger
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.intake import Overloaded
from bruto.shm.layout import open_ledger
from bruto.shm.lookup import Payment
from bruto.shm.lookup import PaymentFinder
from bruto.shm.purge import Answer
from bruto.shm.purge import PurgeAsker
from bruto.shm.region import RegionError
from bruto.shm.snapshot import SharedRegions
from bruto.timefmt import now_us
from bruto.timefmt import parse_iso


def _serialize_http_error(counters: GatewayCounters, req: falcon.Request, resp: falcon.Response,
                          error: falcon.HTTPError) -> None:
    """Falcon's own errors (404, 405, ...) in bruto's shape: ``{"error": "..."}``."""
    counters.response(req.path, error.status_code)
    if error.status_code == 404:
        message = f"no such endpoint: {req.path}"
    elif error.status_code == 405:
        allowed = dict(error.headers or {}).get("Allow", "")
        message = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
    else:
        message = error.description or error.title
    resp.content_type = JSON
    resp.data = error_body(message)


class Payments:
    def __init__(self, intake: IntakeWriter, counters: GatewayCounters):
        self._intake = intake
        self._counters = counters

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            # NOTE: the raw stream, not req.bounded_stream (one object less per
            # request): a read of at most one byte over the limit stops at the
            # body's end with either worker bruto runs (bruto's hands the app a
            # BytesIO of the whole body, gunicorn's a length-bounded Body), and a
            # larger body gets its 413 from parse_payment.
            correlation_id, amount_cents = parse_payment(req.stream.read(MAX_BODY + 1))
            self._intake.append(correlation_id, amount_cents, now_us())
        except InvalidPayment as error:
            self._counters.rejection(error)
            set_error(resp, error.status, error.message)
            return
        except Overloaded:
            self._counters.overloaded()
            # Shed: bruto is not keeping up (bruto.config's shed_backlog).
            set_error(resp, 503, "too many payments are waiting, retry later")
            resp.retry_after = 1
            return
        except IntakeFull:
            self._counters.intake_full()
            # Refuse rather than accept what cannot be kept (accepted = durable).
            set_error(resp, 503, "intake is full, retry later")
            resp.retry_after = 1
            return
        resp.status = falcon.HTTP_202


class Summary:
    """GET /payments-summary: this host's ledger; with BRUTO_DATABASE_URL, the whole cluster's."""

    def __init__(self, settings: Settings, counters: GatewayCounters):
        self._ledger = open_ledger(settings)
        self._counters = counters
        self._cluster = None
        self._unavailable: type[Exception] = RuntimeError
        if settings.database_url:
            # Only with a URL: psycopg, imported after gevent's patch (the worker loads the app after it).
            from bruto.cluster.summary import ClusterSummary
            from bruto.cluster.summary import Unavailable

            self._cluster = ClusterSummary(settings, self._ledger)
            self._unavailable = Unavailable

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        bounds = []
        for name in ("from", "to"):
            text = req.get_param(name)
            try:
                bounds.append(None if text is None else parse_iso(text))
            except ValueError:
                self._counters.response(req.path, 400)
                set_error(resp, 400, f"{name} must be an ISO-8601 date-time, e.g. 2020-07-10T12:34:56.000Z")
                return
        if self._cluster is None:
            found = ledger.totals(self._ledger, bounds[0], bounds[1])
        else:
            try:
                found = self._cluster.totals(bounds[0], bounds[1])
            except self._unavailable:
                self._counters.response(req.path, 503)
                set_error(resp, 503, "the cluster's database is unreachable; no partial summary is given")
                resp.retry_after = 1
                return
        self._counters.response(req.path, 200)
        if found.truncated:
            # NOTE: the counts are still exact for what the ring holds; this says
            # the window also covers older payments the ring no longer has.
            resp.set_header("X-Bruto-Summary-Truncated", "true")
        resp.content_type = JSON
        resp.data = (
            '{"default":{"totalRequests":%d,"totalAmount":%s},'
            '"fallback":{"totalRequests":%d,"totalAmount":%s}}'
            % (found.requests[0], format_cents(found.amount_cents[0]),
               found.requests[1], format_cents(found.amount_cents[1]))
        ).encode()


class PaymentState:
    """GET /payments/{correlationId}: where one payment is, from shared memory (bruto.shm.lookup); with
    BRUTO_DATABASE_URL, from the cluster's record too where this host does not know (bruto.cluster.lookup)."""

    def __init__(self, settings: Settings, counters: GatewayCounters):
        self._shm_dir = settings.shm_dir
        self._counters = counters
        self._finder: PaymentFinder | None = None
        self._cluster = None
        self._cluster_counters = None
        if settings.database_url:
            # Only with a URL: psycopg, imported after gevent's patch (the worker loads the app after it).
            from bruto.cluster.host import host_id
            from bruto.cluster.host import host_label
            from bruto.cluster.lookup import ClusterFinder
            from bruto.cluster.lookup import ClusterRecord

            self._cluster = ClusterFinder(ClusterRecord(settings.database_url), host_id(settings.shm_dir),
                                          host_label(settings.shm_dir))

    def _shm_current(self) -> bool:
        """Many hosts: whether this host's shared memory has every purge asked elsewhere applied, as far as its
        dispatcher has checked lately (bruto.cluster.counters ``purges_current_until``)."""
        if self._cluster_counters is None:
            from bruto.cluster.counters import attach_cluster

            self._cluster_counters = attach_cluster(self._shm_dir)
            if self._cluster_counters is None:
                return False  # no dispatcher has run here yet
        return now_us() < int(self._cluster_counters["purges_current_until"])

    def on_get(self, req: falcon.Request, resp: falcon.Response, correlation_id: str) -> None:
        try:
            raw = parse_correlation_id(correlation_id)
        except InvalidPayment as error:  # the answer POST /payments gives the same id
            self._counters.response(req.path, error.status)
            set_error(resp, error.status, error.message)
            return
        try:
            if self._finder is None:  # attached at the first lookup, as /metrics does
                self._finder = SharedRegions(self._shm_dir).finder()
        except RegionError as error:
            self._counters.response(req.path, 503)
            set_error(resp, 503, str(error))
            return
        found = self._finder.find(raw)
        resp.content_type = JSON
        if self._cluster is not None:
            answer = self._cluster.answer(raw, found, self._shm_current())
            self._counters.response(req.path, answer.status)
            resp.status = answer.status
            resp.data = answer.body
            if answer.retry_after is not None:
                resp.retry_after = answer.retry_after
            return
        if isinstance(found, Payment):
            self._counters.response(req.path, 200)
            resp.data = found.json()
            return
        self._counters.response(req.path, 404)
        resp.status = 404
        resp.data = found.json(raw)


class Purge:
    """POST /purge-payments: 200 once carried out; 503, and never carried out, if not in time.

    The protocol, both sides, is bruto.shm.purge; this only says the answer.
    """

    _BODIES = {
        Answer.PURGED: b'{"message":"All payments purged."}',
        Answer.COMMITTED: b'{"message":"Purge committed; the dispatcher completes it when it restarts."}',
    }

    def __init__(self, purges: PurgeAsker, counters: GatewayCounters, timeout_s: float):
        self._purges = purges
        self._counters = counters
        self._timeout_s = timeout_s

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        answer = self._purges.ask(self._timeout_s)
        self._counters.response(req.path, answer.value)
        if answer is Answer.CANCELLED:
            set_error(resp, 503, "the dispatcher did not carry out the purge in time; nothing was purged "
                                 "(is bruto-dispatcher running?)")
            return
        resp.status = answer.value
        resp.content_type = JSON
        resp.data = self._BODIES[answer]


def create_app(settings: Settings | None = None) -> falcon.App:
    """Build the app for one worker: claims an intake slot and maps the ledger."""
    settings = settings or Settings.from_env()
    intake = IntakeWriter.claim(settings)
    counters = GatewayCounters(intake.slab)
    counters.claim_process()
    app = falcon.App(media_type=JSON)
    app.req_options.auto_parse_qs_csv = False
    app.set_error_serializer(functools.partial(_serialize_http_error, counters))
    app.add_route("/payments", Payments(intake, counters))
    app.add_route("/payments/{correlation_id}", PaymentState(settings, counters))
    app.add_route("/payments-summary", Summary(settings, counters))
    app.add_route("/purge-payments", GuardedPurge(Purge(intake.purges, counters, settings.purge_timeout_s), settings, counters))
    app.add_route("/metrics", Metrics(settings.shm_dir, counters))
    return app
