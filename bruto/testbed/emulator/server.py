"""Payment processor emulator: a local stand-in for one Rinha 2025 processor.

The official processor (an ASP.NET service on PostgreSQL) cannot run here, so
every test, the local stack and every benchmark talk to this instead. One
process is one processor; run two (fee 0.05 and 0.15) for default and fallback:

    bruto-emulator --port 8001 --fee 0.05 [--token 123] [--health-window 5]

It follows docs/CHALLENGE.md §2 down to status codes and the
order of effects in POST /payments: admission by the concurrency limiter, body
validation (400/415), the configured delay, the configured failure (500,
nothing stored), then the insert (422 on a duplicate correlationId).

Everything runs on one asyncio loop: a request waiting out its delay is a
sleeping coroutine, so a thousand of them cost nothing and never stall the
other endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import math
import signal
import time
import uuid

import orjson
from aiohttp import web

from bruto.testbed.emulator.limits import ConcurrencyLimiter
from bruto.testbed.emulator.limits import FixedWindowLimiter
from bruto.testbed.emulator.store import PaymentStore

# The real service's limits (docs/CHALLENGE.md §2).
MAX_CONCURRENCY = 800
MAX_QUEUE = 500
HEALTH_QUEUE = 2

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_ONE_US = datetime.timedelta(microseconds=1)
_CENT = decimal.Decimal("0.01")
_MAX_AMOUNT = decimal.Decimal(1 << 62) / 100

_PROCESSED = orjson.dumps({"message": "payment processed successfully"})
_PURGED = orjson.dumps({"message": "All payments purged."})
_DUPLICATE = orjson.dumps({"message": "CorrelationId already exists"})
_FAILURE = orjson.dumps({"message": "Simulated failure"})
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
        self.health_log = open(health_log, "a", buffering=1) if health_log else None


PROCESSOR = web.AppKey("processor", Processor)


# ---------------------------------------------------------------- parsing

def parse_timestamp_us(text: object) -> int:
    """Parses an ISO-8601 timestamp into integer microseconds since the epoch.

    A timestamp without an offset is taken as UTC, as the real service's
    database column is. Digits past the microsecond are dropped.

    Args:
        text: e.g. "2025-07-15T12:34:56.000Z" or "2025-07-15T12:34:56.123456Z".

    Returns:
        Microseconds since 1970-01-01T00:00:00Z.

    Raises:
        BadRequest: if `text` is not a string holding an ISO-8601 timestamp.
    """
    if not isinstance(text, str):
        raise BadRequest("requestedAt must be an ISO-8601 string")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"not an ISO-8601 timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return (moment - _EPOCH) // _ONE_US


def format_timestamp_us(micros: int) -> str:
    """Renders microseconds since the epoch the way .NET serializes a UTC DateTime.

    Fraction digits are trimmed of trailing zeros and dropped when all zero,
    e.g. "2025-07-15T12:34:56.1Z" or "2025-07-15T12:34:56Z".
    """
    moment = _EPOCH + datetime.timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_amount_cents(value: object) -> int:
    """Rounds a JSON amount to whole cents, half away from zero as numeric(,2) does.

    NOTE: orjson hands us a float, but `repr` of a float is the shortest text
    that reads back as it, i.e. the text that was sent for any amount of up to
    15 significant digits, so "19.905" rounds to 19.91 as an exact decimal would.

    Raises:
        BadRequest: if `value` is not a JSON number or is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("amount must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest("amount must be finite")
    exact = decimal.Decimal(repr(value)) if isinstance(value, float) else decimal.Decimal(value)
    if abs(exact) >= _MAX_AMOUNT:  # cents live in int64 columns of the store
        raise BadRequest("amount out of range")
    return int(exact.quantize(_CENT, rounding=decimal.ROUND_HALF_UP).scaleb(2))


def parse_correlation_id(value: object) -> str:
    """Returns the canonical (lowercase, hyphenated) form of a GUID string.

    Raises:
        BadRequest: if `value` is not a string holding a GUID.
    """
    if not isinstance(value, str):
        raise BadRequest("correlationId must be a GUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest(f"not a GUID: {value!r}") from None


def format_cents(cents: int) -> str:
    """Renders cents as a decimal with exactly two places, e.g. 1990 -> "19.90"."""
    return format(decimal.Decimal(cents).scaleb(-2), "f")


async def read_json_object(request: web.Request) -> dict:
    """Reads a JSON object body as ASP.NET minimal API model binding would.

    Raises:
        web.HTTPUnsupportedMediaType: if the content type is not JSON (415),
            as a minimal API answers before looking at the body.
        BadRequest: if the body is not a JSON object.
    """
    if request.content_type != _JSON and not request.content_type.endswith("+json"):
        raise web.HTTPUnsupportedMediaType()
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
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
    return web.Response(status=status, body=body, content_type=_JSON)


# ---------------------------------------------------------------- payments

async def post_payment(request: web.Request) -> web.Response:
    """POST /payments: limiter, validation, delay, failure, insert."""
    processor = request.app[PROCESSOR]
    if not await processor.payments_limiter.acquire():
        return web.Response(status=429)
    try:
        try:
            body = await read_json_object(request)
            correlation_id = parse_correlation_id(body.get("correlationId"))
            amount_cents = parse_amount_cents(body.get("amount"))
            requested_at_us = parse_timestamp_us(body.get("requestedAt"))
        except BadRequest as error:
            return bad_request(str(error))
        # NOTE: the delay is read once, when the handler starts: changing it
        # later neither shortens nor lengthens a request already waiting.
        if processor.delay_ms:
            await asyncio.sleep(processor.delay_ms / 1000)
        # The failure flag is read after the delay, as the real service does.
        if processor.failing:
            return json_response(_FAILURE, status=500)
        if not processor.store.insert(correlation_id, amount_cents, requested_at_us):
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
            correlation_id = parse_correlation_id(request.match_info["id"])
        except BadRequest as error:
            return bad_request(str(error))
        row = processor.store.get(correlation_id)
        if row is None:
            return web.Response(status=404)
        amount_cents, requested_at_us = row
        # Built by hand so the amount keeps its two decimals ("19.90").
        body = (f'{{"correlationId":"{correlation_id}","amount":{format_cents(amount_cents)},'
                f'"requestedAt":"{format_timestamp_us(requested_at_us)}"}}')
        return json_response(body.encode())
    finally:
        processor.payments_limiter.release()


async def service_health(request: web.Request) -> web.Response:
    """GET /payments/service-health, behind the fixed-window rate limit."""
    processor = request.app[PROCESSOR]
    if processor.health_log is not None:
        processor.health_log.write(f"{time.time():.6f}\n")
    wait = processor.health_limiter.claim()
    if wait is None:
        retry_after = processor.health_limiter.retry_after()
        return web.Response(status=429, headers={"Retry-After": str(retry_after)})
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
            count, cents = processor.store.summary(parse_timestamp_us(bounds[0]),
                                                   parse_timestamp_us(bounds[1]))
        else:  # the real service sums every row when either bound is missing
            count, cents = processor.store.summary(None, None)
    except BadRequest as error:
        return bad_request(str(error))
    total_amount = decimal.Decimal(cents).scaleb(-2)
    # NOTE: totalFee is the exact product (e.g. 0.9950), as numeric arithmetic
    # in the real database gives; rounding it would lose money.
    body = (f'{{"totalRequests":{count},"totalAmount":{format(total_amount, "f")},'
            f'"totalFee":{format(total_amount * processor.fee, "f")},'
            f'"feePerTransaction":{format(processor.fee, "f")}}}')
    return json_response(body.encode())


async def admin_token(request: web.Request) -> web.Response:
    """PUT /admin/configurations/token {"token": "..."} -> 204."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    try:
        token = (await read_json_object(request)).get("token")
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
        delay = (await read_json_object(request)).get("delay")
        if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
            raise BadRequest("delay must be a non-negative integer of milliseconds")
    except BadRequest as error:
        return bad_request(str(error))
    was, processor.delay_ms = processor.delay_ms, delay
    return json_response(orjson.dumps({"config": "delay", "was": was, "is": delay}))


async def admin_failure(request: web.Request) -> web.Response:
    """PUT /admin/configurations/failure {"failure": bool} -> {"config","was","is"}."""
    processor = request.app[PROCESSOR]
    if not _authorized(request):
        return web.Response(status=401)
    try:
        failure = (await read_json_object(request)).get("failure")
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
    app = web.Application()
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
    # A deep backlog: a load test opens a thousand connections at once.
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"bruto-emulator listening on http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `bruto-emulator`."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
