"""Payment processor emulator: a local stand-in for one Rinha 2025 processor.

The official processor (an ASP.NET service on PostgreSQL) cannot run here, so
every test, the local stack and every benchmark talk to this instead. One
process is one processor; run two (fee 0.05 and 0.15) for default and fallback:

    bruto-emulator --port 8001 --fee 0.05 [--token 123] [--health-window 5]

It follows docs/CHALLENGE.md §2 down to status codes and the
order of effects in POST /payments: admission by the concurrency limiter, body
validation (400/415), the configured delay, the configured failure (500,
nothing stored), then the insert (422 on a duplicate correlationId). Values
are read and written as the real service's .NET and PostgreSQL pieces do
(``dotnet``): a requestedAt comes back as a `timestamp` without offset, an
amount with its own scale.

Everything runs on one asyncio loop: a request waiting out its delay is a
sleeping coroutine, so a thousand of them cost nothing and never stall the
other endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import json
import math
import signal
import time
import uuid

import orjson
from aiohttp import HttpVersion11
from aiohttp import hdrs
from aiohttp import web

from bruto.testbed.emulator import dotnet
from bruto.testbed.emulator.limits import ConcurrencyLimiter
from bruto.testbed.emulator.limits import FixedWindowLimiter
from bruto.testbed.emulator.store import PaymentStore

# The real service's limits (docs/CHALLENGE.md §2).
MAX_CONCURRENCY = 800
MAX_QUEUE = 500
HEALTH_QUEUE = 2

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_ONE_US = datetime.timedelta(microseconds=1)
_ONE = decimal.Decimal(1)

_PROCESSED = orjson.dumps({"message": "payment processed successfully"})
_PURGED = orjson.dumps({"message": "All payments purged."})
_DUPLICATE = orjson.dumps({"message": "CorrelationId already exists"})
_JSON = "application/json"


class BadRequest(Exception):
    """A request the real service would refuse at model binding (HTTP 400)."""


class Processor:
    """The mutable state of one processor: configuration, payments, limiters.

    Args:
        fee: Fee per transaction as a decimal string, e.g. "0.05".
        token: Initial admin token expected in `X-Rinha-Token`.
        health_window: Seconds per window of the service-health rate limit.
        max_concurrency: Requests admitted at once on /payments routes.
        max_queue: Requests queued beyond those; the rest get 429.
        health_log: If given, a text file that gets the arrival time (epoch
            seconds) of every service-health call, one per line: tests count
            a client's calls with it.
    """

    def __init__(self, fee: str, token: str, health_window: float,
                 max_concurrency: int = MAX_CONCURRENCY, max_queue: int = MAX_QUEUE,
                 health_log: str | None = None):
        self.fee = decimal.Decimal(fee)
        self.token = token
        self.delay_ms = 0
        self.failing = False
        self.store = PaymentStore()
        self.payments_limiter = ConcurrencyLimiter(max_concurrency, max_queue)
        self.health_limiter = FixedWindowLimiter(health_window, HEALTH_QUEUE)
        self.retry_after = str(max(1, math.ceil(health_window)))
        self.health_log = open(health_log, "a", buffering=1) if health_log else None


PROCESSOR = web.AppKey("processor", Processor)


# ---------------------------------------------------------------- parsing

def parse_bound_us(text: str) -> int:
    """Parses a summary bound (`from`, `to`) into microseconds since the epoch.

    A bound without an offset is taken as UTC, as the real service's database
    column is. Digits past the microsecond are dropped.

    Raises:
        BadRequest: if `text` is not an ISO-8601 timestamp.
    """
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"not an ISO-8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - _EPOCH) // _ONE_US


def parse_route_id(value: str) -> str:
    """Returns the canonical (lowercase, hyphenated) form of the GUID in GET /payments/{id}.

    Raises:
        BadRequest: if `value` is not a GUID.
    """
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"not a GUID: {value!r}") from None


def parse_payment(body: dict) -> tuple[str, decimal.Decimal, int]:
    """Binds a POST /payments body as the real service's request record.

    Returns:
        (correlationId, amount as stored, requestedAt in microseconds); a
        missing property takes its .NET default (the empty GUID, 0,
        DateTime.MinValue).

    Raises:
        BadRequest: if a property present cannot be read as its type.
    """
    fields = dotnet.bind(body, ("correlationId", "amount", "requestedAt"))
    try:
        correlation_id = (dotnet.parse_guid(fields["correlationId"]) if "correlationId" in fields
                          else dotnet.default_guid())
        amount = dotnet.parse_decimal(fields["amount"]) if "amount" in fields else decimal.Decimal(0)
        requested_at_us = (dotnet.parse_datetime(fields["requestedAt"]) if "requestedAt" in fields
                           else dotnet.MIN_US)
    except dotnet.BindingError as error:
        raise BadRequest(str(error)) from None
    return correlation_id, dotnet.round_amount(amount), requested_at_us


def amount_columns(amount: decimal.Decimal) -> tuple[int, int]:
    """(cents, scale) of a stored amount, as the store keeps it.

    Raises:
        BadRequest: if the cents do not fit the store's int64 column.
    """
    cents = int(amount.scaleb(2))
    if abs(cents) >= 1 << 62:  # sums of such rows would overflow int64
        raise BadRequest("amount out of the emulator's range")
    return cents, -dotnet.exponent(amount)


def amount_text(cents: int, scale: int) -> str:
    """Renders cents at a scale as the real service writes a decimal: 1990, 1 -> "19.9"."""
    return dotnet.format_decimal(decimal.Decimal(cents).scaleb(-2).quantize(_ONE.scaleb(-scale)))


def payment_json(correlation_id: str, amount_cents: int, amount_scale: int, requested_at_us: int) -> str:
    """The body of GET /payments/{id}, built by hand so the amount keeps its scale ("19.90", "19.9", "10")."""
    return (f'{{"correlationId":"{correlation_id}","amount":{amount_text(amount_cents, amount_scale)},'
            f'"requestedAt":"{dotnet.format_datetime(requested_at_us)}"}}')


def _refuse_constant(name: str) -> None:
    raise BadRequest(f"invalid JSON: {name} is not a JSON number")


async def read_json_object(request: web.Request) -> dict:
    """Reads a JSON object body as ASP.NET minimal API model binding would.

    Numbers with a fraction or an exponent are read as exact Decimals, so an
    amount keeps the digits and the scale it was sent with (orjson would give
    a float, which has neither).

    Raises:
        web.HTTPUnsupportedMediaType: if the content type is not JSON (415),
            as a minimal API answers before looking at the body.
        BadRequest: if the body is not a JSON object.
    """
    if request.content_type != _JSON and not request.content_type.endswith("+json"):
        raise web.HTTPUnsupportedMediaType()
    return decode_json_object(await request.read())


def decode_json_object(raw: bytes) -> dict:
    """Parses a body that must be a JSON object, numbers with a fraction or an exponent as exact Decimals.

    Raises:
        BadRequest: if it is not valid JSON (NaN and Infinity are not) or not an object.
    """
    try:
        body = json.loads(raw, parse_float=decimal.Decimal, parse_constant=_refuse_constant)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"invalid JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def bad_request(detail: str) -> web.Response:
    """A problem-details 400, like ASP.NET's for a failed model binding."""
    body = {"type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "Bad Request", "status": 400, "detail": detail}
    return web.Response(status=400, body=orjson.dumps(body),
                        content_type="application/problem+json")


def json_response(body: bytes, status: int = 200) -> web.Response:
    """A JSON answer with the content type ASP.NET gives one."""
    return web.Response(status=status, body=body, content_type=_JSON, charset="utf-8")


def kestrel_bad_request() -> web.Response:
    """Kestrel's answer to a request it refuses before any endpoint: 400, no body, connection closed."""
    response = web.Response(status=400)
    response.force_close()
    return response


@web.middleware
async def require_host(request: web.Request, handler) -> web.StreamResponse:
    """Kestrel's rule: an HTTP/1.1 request with no Host header, or more than one, is a 400.

    HTTP/1.0 requests need no Host. Recent aiohttp parsers refuse these
    requests themselves (then `KestrelRequestHandler` answers); older ones
    pass a missing Host through to here.
    """
    if request.version >= HttpVersion11 and len(request.headers.getall(hdrs.HOST, ())) != 1:
        return kestrel_bad_request()
    return await handler(request)


class KestrelRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol, answering the requests its parser refuses as Kestrel does.

    Kestrel answers a malformed request (a missing or repeated Host among
    them) `HTTP/1.1 400 Bad Request` with no body and closes the connection;
    aiohttp's own answer is an HTTP/1.0 400 with a text body, and a logged
    traceback per request.
    """

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        if status != 400:
            return super().handle_error(request, status, exc, message)
        # NOTE: aiohttp makes the request of a message its parser refused an
        # HTTP/1.0 one (web_protocol.ERROR), and a response's status line
        # takes the request's version: Kestrel's says HTTP/1.1. The test of
        # this answer reads the raw bytes, so an aiohttp that renames the
        # attribute fails it.
        request._version = HttpVersion11
        return kestrel_bad_request()


# ---------------------------------------------------------------- payments

async def post_payment(request: web.Request) -> web.Response:
    """POST /payments: limiter, binding, delay, failure, insert."""
    processor = request.app[PROCESSOR]
    if not await processor.payments_limiter.acquire():
        return web.Response(status=429)
    try:
        try:
            correlation_id, amount, requested_at_us = parse_payment(await read_json_object(request))
            amount_cents, amount_scale = amount_columns(amount)
        except BadRequest as error:
            return bad_request(str(error))
        # NOTE: the delay is read once, when the handler starts: changing it
        # later neither shortens nor lengthens a request already waiting.
        if processor.delay_ms:
            await asyncio.sleep(processor.delay_ms / 1000)
        # The failure flag is read after the delay, as the real service does;
        # its 500 has no body.
        if processor.failing:
            return web.Response(status=500)
        if not processor.store.insert(correlation_id, amount_cents, amount_scale, requested_at_us):
            return json_response(_DUPLICATE, status=422)
        return json_response(_PROCESSED)
    finally:
        processor.payments_limiter.release()


async def get_payment(request: web.Request) -> web.Response:
    """GET /payments/{id}: the stored payment, or 404."""
    processor = request.app[PROCESSOR]
    if not await processor.payments_limiter.acquire():
        return web.Response(status=429)
    try:
        try:
            correlation_id = parse_route_id(request.match_info["id"])
        except BadRequest as error:
            return bad_request(str(error))
        row = processor.store.get(correlation_id)
        if row is None:
            return web.Response(status=404)
        return json_response(payment_json(correlation_id, *row).encode())
    finally:
        processor.payments_limiter.release()


async def service_health(request: web.Request) -> web.Response:
    """GET /payments/service-health, behind the fixed-window rate limit."""
    processor = request.app[PROCESSOR]
    if processor.health_log is not None:
        processor.health_log.write(f"{time.time():.6f}\n")
    wait = processor.health_limiter.claim()
    if wait is None:
        # The real service's rejection hook says the window, whatever is left of it.
        return web.Response(status=429, headers={"Retry-After": processor.retry_after})
    if wait > 0:
        await asyncio.sleep(wait)
    # Read after the wait: a queued caller sees the state of its own window.
    body = {"failing": processor.failing, "minResponseTime": processor.delay_ms}
    return json_response(orjson.dumps(body))


# ---------------------------------------------------------------- admin

def _authorized(request: web.Request) -> bool:
    return request.headers.get("X-Rinha-Token") == request.app[PROCESSOR].token


async def admin_summary(request: web.Request) -> web.Response:
    """GET /admin/payments-summary?from&to: BETWEEN on requestedAt, both inclusive."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    bounds = (request.query.get("from"), request.query.get("to"))
    try:
        if bounds[0] and bounds[1]:
            count, cents, scale = processor.store.summary(parse_bound_us(bounds[0]),
                                                          parse_bound_us(bounds[1]))
        else:  # the real service sums every row when either bound is missing
            count, cents, scale = processor.store.summary(None, None)
    except BadRequest as error:
        return bad_request(str(error))
    # A numeric SUM has the largest scale of its terms; over no rows it is the
    # decimal 0. NOTE: totalFee is the exact product (e.g. 0.9950), as numeric
    # arithmetic gives; rounding it would lose money.
    total_amount = decimal.Decimal(cents).scaleb(-2).quantize(_ONE.scaleb(-scale))
    body = (f'{{"totalRequests":{count},"totalAmount":{dotnet.format_decimal(total_amount)},'
            f'"totalFee":{dotnet.format_decimal(total_amount * processor.fee)},'
            f'"feePerTransaction":{dotnet.format_decimal(processor.fee)}}}')
    return json_response(body.encode())


async def admin_token(request: web.Request) -> web.Response:
    """PUT /admin/configurations/token {"token": "..."} -> 204."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    try:
        token = dotnet.bind(await read_json_object(request), ("token",)).get("token")
        if not isinstance(token, str):
            raise BadRequest("token must be a string")
    except BadRequest as error:
        return bad_request(str(error))
    processor.token = token
    return web.Response(status=204)


async def admin_delay(request: web.Request) -> web.Response:
    """PUT /admin/configurations/delay {"delay": ms} -> {"config","was","is"}."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    try:
        fields = dotnet.bind(await read_json_object(request), ("delay",))
        delay = dotnet.parse_int32(fields.get("delay", 0))
        if delay < 0:
            raise BadRequest("delay must be a non-negative integer of milliseconds")
    except (BadRequest, dotnet.BindingError) as error:
        return bad_request(str(error))
    was, processor.delay_ms = processor.delay_ms, delay
    return json_response(orjson.dumps({"config": "delay", "was": was, "is": delay}))


async def admin_failure(request: web.Request) -> web.Response:
    """PUT /admin/configurations/failure {"failure": bool} -> {"config","was","is"}."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    try:
        failure = dotnet.bind(await read_json_object(request), ("failure",)).get("failure", False)
        if not isinstance(failure, bool):
            raise BadRequest("failure must be a boolean")
    except BadRequest as error:
        return bad_request(str(error))
    was, processor.failing = processor.failing, failure
    return json_response(orjson.dumps({"config": "failure", "was": was, "is": failure}))


async def admin_purge(request: web.Request) -> web.Response:
    """POST /admin/purge-payments -> {"message": "All payments purged."}."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    processor.store.purge()
    return json_response(_PURGED)


# ---------------------------------------------------------------- process

def make_app(processor: Processor) -> web.Application:
    """Builds the aiohttp application serving one processor."""
    app = web.Application(middlewares=[require_host])
    app[PROCESSOR] = processor
    # NOTE: service-health is registered before /payments/{id}: routes match
    # in registration order and "service-health" would otherwise be an id.
    app.router.add_get("/payments/service-health", service_health)
    app.router.add_post("/payments", post_payment)
    app.router.add_get("/payments/{id}", get_payment)
    app.router.add_get("/admin/payments-summary", admin_summary)
    app.router.add_put("/admin/configurations/token", admin_token)
    app.router.add_put("/admin/configurations/delay", admin_delay)
    app.router.add_put("/admin/configurations/failure", admin_failure)
    app.router.add_post("/admin/purge-payments", admin_purge)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bruto-emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001,
                        help="port to listen on; 0 picks a free one (default 8001)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--fee", required=True, type=decimal.Decimal,
                        help="fee per transaction, e.g. 0.05 (default) or 0.15 (fallback)")
    parser.add_argument("--token", default="123", help="initial admin token (default 123)")
    parser.add_argument("--health-window", type=float, default=5.0,
                        help="seconds per service-health rate-limit window (default 5)")
    # Hidden: tests shrink the limiter to reach its 429 with a handful of requests.
    parser.add_argument("--max-concurrency", type=int, default=MAX_CONCURRENCY,
                        help=argparse.SUPPRESS)
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE, help=argparse.SUPPRESS)
    parser.add_argument("--health-log", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    """Serves until SIGTERM or SIGINT.

    Prints one line, "bruto-emulator listening on http://HOST:PORT", once the
    socket accepts connections; callers that pass --port 0 read the port from it.
    """
    processor = Processor(str(args.fee), args.token, args.health_window,
                          args.max_concurrency, args.max_queue, args.health_log)
    # No access log: at 1,500 requests/s it would cost more than the requests.
    runner = web.AppRunner(make_app(processor), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    loop = asyncio.get_running_loop()
    # Our own listening socket rather than a TCPSite, so that each connection
    # gets a KestrelRequestHandler. A deep backlog: a load test opens a
    # thousand connections at once.
    server = runner.server
    assert server is not None  # made by setup()
    listener = await loop.create_server(
        # None: no access logger at all (aiohttp's own test; its annotation says Logger).
        lambda: KestrelRequestHandler(server, loop=loop, access_log=None),  # type: ignore[arg-type]
        args.host, args.port, backlog=4096)
    port = listener.sockets[0].getsockname()[1]
    print(f"bruto-emulator listening on http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    listener.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `bruto-emulator`."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
