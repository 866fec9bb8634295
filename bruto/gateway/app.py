"""The HTTP API (docs/CHALLENGE.md) as a Falcon WSGI app.

POST /payments never leaves the process: validate, append to this worker's
intake slab, answer 202. Summaries are vectorized sums over the shared ledger,
so any worker of any instance answers them alike.
"""

from __future__ import annotations

import time

import falcon
import orjson

from bruto.config import Settings
from bruto.gateway.validation import InvalidPayment
from bruto.gateway.validation import parse_payment
from bruto.money import format_cents
from bruto.shm import ledger
from bruto.shm.intake import IntakeFull
from bruto.shm.intake import IntakeWriter
from bruto.shm.layout import open_ledger
from bruto.timefmt import now_us
from bruto.timefmt import parse_iso

JSON = "application/json"


def _error(resp: falcon.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = JSON
    resp.data = orjson.dumps({"error": message})


def _serialize_http_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Falcon's own errors (404, 405, ...) in bruto's shape: ``{"error": "..."}``."""
    if error.status_code == 404:
        message = f"no such endpoint: {req.path}"
    elif error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{req.method} is not allowed on {req.path}; allowed: {allowed}"
    else:
        message = error.description or error.title
    resp.content_type = JSON
    resp.data = orjson.dumps({"error": message})


class Payments:
    def __init__(self, intake: IntakeWriter):
        self._intake = intake

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            correlation_id, amount_cents = parse_payment(req.bounded_stream.read())
            self._intake.append(correlation_id, amount_cents, now_us())
        except InvalidPayment as error:
            _error(resp, error.status, error.message)
            return
        except IntakeFull:
            # Refuse rather than accept what cannot be kept (accepted = durable).
            _error(resp, 503, "intake is full, retry later")
            resp.retry_after = 1
            return
        resp.status = 202


class Summary:
    def __init__(self, settings: Settings):
        self._ledger = open_ledger(settings)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        bounds = []
        for name in ("from", "to"):
            text = req.get_param(name)
            try:
                bounds.append(None if text is None else parse_iso(text))
            except ValueError:
                _error(resp, 400, f"{name} must be an ISO-8601 date-time, e.g. 2020-07-10T12:34:56.000Z")
                return
        found = ledger.totals(self._ledger, bounds[0], bounds[1])
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


class Purge:
    """POST /purge-payments: 200 once carried out; 503, and never carried out, if not in time.

    The protocol is in bruto.shm.intake (``request_purge``, ``cancel_purge``).
    """

    def __init__(self, intake: IntakeWriter, timeout_s: float):
        self._intake = intake
        self._timeout_s = timeout_s

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ticket = self._intake.request_purge(deadline=now_us() + int(self._timeout_s * 1_000_000))
        done = self._wait(ticket, self._timeout_s)
        if not done:
            if self._intake.cancel_purge(ticket):
                _error(resp, 503, "the dispatcher did not carry out the purge in time; nothing was purged "
                                  "(is bruto-dispatcher running?)")
                return
            done = self._wait(ticket, self._timeout_s)  # committed just now: it ends within moments
        if not done:
            # Committed, but the dispatcher stopped before the end: the next one finishes it first.
            resp.status = 202
            resp.content_type = JSON
            resp.data = b'{"message":"Purge committed; the dispatcher completes it when it restarts."}'
            return
        resp.content_type = JSON
        resp.data = b'{"message":"All payments purged."}'

    def _wait(self, ticket: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self._intake.purge_done(ticket):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # gevent-patched under the gevent worker: yields
        return True


def create_app(settings: Settings | None = None) -> falcon.App:
    """Build the app for one worker: claims an intake slot and maps the ledger."""
    settings = settings or Settings.from_env()
    intake = IntakeWriter(settings)
    app = falcon.App(media_type=JSON)
    app.req_options.auto_parse_qs_csv = False
    app.set_error_serializer(_serialize_http_error)
    app.add_route("/payments", Payments(intake))
    app.add_route("/payments-summary", Summary(settings))
    app.add_route("/purge-payments", Purge(intake, settings.purge_timeout_s))
    return app
