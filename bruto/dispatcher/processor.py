"""HTTP client of one payment processor (docs/CHALLENGE.md §2).

Payments go over a geventhttpclient connection pool (gevent's own sockets and
a C parser); the control plane (health polls, lookups) over a pooled
requests.Session.

Every call returns a plain value (bruto.dispatcher.outcomes) saying what the
processor did, never raises for network trouble: the dispatcher decides what
to do next from that value.
"""

from __future__ import annotations

import uuid

import orjson
import requests
import urllib3
from geventhttpclient.connectionpool import ConnectionPool
from geventhttpclient.response import HTTPParseError
from geventhttpclient.response import HTTPSocketPoolResponse
from requests.adapters import HTTPAdapter

from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import RateLimited
from bruto.dispatcher.outcomes import Stored
from bruto.money import format_cents
from bruto.money import parse_amount_cents
from bruto.timefmt import format_iso_ms
from bruto.timefmt import parse_iso

# service-health queues up to two callers beyond its one call per 5-s window
# and answers them in the next windows: a call may wait up to 10 s for its
# answer. Giving up sooner wastes the window it booked, and the next call,
# 5 s later, queues behind that booking again and gives up again.
HEALTH_TIMEOUT_S = 11.0


def make_session(pool_size: int) -> requests.Session:
    """One session per process, with room for every concurrent sender.

    ``trust_env = False`` skips the per-request scan of proxy variables and
    netrc; ``pool_maxsize`` at least the number of senders keeps connections
    from being opened and thrown away under load.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    return session


class ProcessorClient:
    def __init__(self, base_url: str, session: requests.Session):
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._payments_url = self.base_url + "/payments"
        self._health_url = self.base_url + "/payments/service-health"
        # NOTE: payments go through geventhttpclient's connection pool, sized
        # as the session's (one connection per sender): a request written as
        # bytes, gevent sockets and a C parser cost about a third of the CPU of
        # urllib3's pool, and half again less than Session.post
        # (docs/BENCHMARKS.md); the dispatcher's CPU bounds how fast a backlog
        # drains. Rare calls (health, lookups) keep the session API.
        url = urllib3.util.parse_url(self.base_url)
        if url.host is None:
            raise ValueError(f"{self.base_url!r} names no host")
        port = url.port or 80
        adapter = session.get_adapter(self.base_url)
        pool_size = adapter.poolmanager.connection_pool_kw.get("maxsize", 10) if isinstance(adapter, HTTPAdapter) else 10
        self._pool = ConnectionPool(url.host, port, url.host, port, size=pool_size, connection_timeout=1.0)
        self._payment_head = (
            "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: "
            % ((url.path or "") + "/payments", url.netloc)
        ).encode("latin-1") + b"%d\r\n\r\n"

    def pay(self, correlation_id: bytes, amount_cents: int, requested_at: int, timeout_s: float) -> Outcome:
        body = b'{"correlationId":"%s","amount":%s,"requestedAt":"%s"}' % (
            str(uuid.UUID(bytes=correlation_id)).encode(),
            format_cents(amount_cents).encode(),
            format_iso_ms(requested_at).encode(),
        )
        pool = self._pool
        try:
            sock = pool.get_socket()
        except OSError:
            return Outcome.FAILED  # never connected: surely not sent, so surely not stored
        try:
            sock.settimeout(timeout_s)
            sock.sendall(self._payment_head % len(body) + body)
        except BaseException:
            pool.release_socket(sock)  # closes it
            return Outcome.UNKNOWN
        try:
            # Reads the head; the socket goes back to the pool once the
            # answer is read whole, and is closed on any error.
            response = HTTPSocketPoolResponse(sock, pool, method="POST")
            status = response.status_code
            if not response.message_complete:
                response.read()
                response.release()
        except (HTTPParseError, OSError):
            return Outcome.UNKNOWN
        if status < 300:
            return Outcome.STORED
        if status == 422:
            return Outcome.DUPLICATE
        if status in (500, 429):
            return Outcome.FAILED
        if 400 <= status < 500:
            return Outcome.REJECTED
        return Outcome.UNKNOWN

    def lookup(self, correlation_id: bytes, timeout_s: float = 2.0) -> Stored | None | Outcome:
        """What the processor stored under this id: Stored, None (404) or Outcome.UNKNOWN."""
        url = f"{self._payments_url}/{uuid.UUID(bytes=correlation_id)}"
        try:
            response = self._session.get(url, timeout=(1.0, timeout_s))
        except requests.RequestException:
            return Outcome.UNKNOWN
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            return Outcome.UNKNOWN
        try:
            stored = orjson.loads(response.content)
            return Stored(parse_iso(stored["requestedAt"]), parse_amount_cents(stored["amount"]))
        except (ValueError, KeyError, TypeError):
            return Outcome.UNKNOWN

    def health(self, timeout_s: float = HEALTH_TIMEOUT_S) -> Health | RateLimited | None:
        """GET service-health: Health, RateLimited (429 + Retry-After), or None on any other trouble."""
        try:
            response = self._session.get(self._health_url, timeout=(1.0, timeout_s))
        except requests.RequestException:
            return None
        if response.status_code == 429:
            try:
                retry_after = float(response.headers.get("Retry-After", "5"))
            except ValueError:
                retry_after = 5.0
            return RateLimited(retry_after)
        if response.status_code != 200:
            return None
        try:
            report = orjson.loads(response.content)
            return Health(bool(report["failing"]), int(report["minResponseTime"]))
        except (ValueError, KeyError, TypeError):
            return None
