"""HTTP client of one payment processor (CONTRACT.md §2), over a pooled requests.Session.

Every call returns a plain value (bruto.dispatcher.outcomes) saying what the
processor did, never raises for network trouble: the dispatcher decides what
to do next from that value.
"""

from __future__ import annotations

import uuid

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NewConnectionError

from bruto.dispatcher.outcomes import Health
from bruto.dispatcher.outcomes import Outcome
from bruto.dispatcher.outcomes import RateLimited
from bruto.dispatcher.outcomes import Stored
from bruto.money import format_cents
from bruto.timefmt import format_iso_ms
from bruto.timefmt import parse_iso


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
        # NOTE: payments go through the urllib3 connection pool that the
        # session's own adapter holds (same connections, same pool size), not
        # through Session.post: the session layer (settings merging, cookie
        # extraction, hooks, Response building) cost ~450 us of CPU per call
        # against ~200 us for the pool (tools/bench_dispatcher.py; figures in
        # docs/DISPATCHER.md),
        # and the dispatcher's CPU is what limits how fast a backlog drains
        # under the challenge's limits. Rare calls (health, lookups) keep the
        # session API.
        self._pool = session.get_adapter(self.base_url).poolmanager.connection_from_url(self.base_url)
        self._payments_path = urllib3.util.parse_url(self._payments_url).path

    def pay(self, correlation_id: bytes, amount_cents: int, requested_at: int, timeout_s: float) -> Outcome:
        body = b'{"correlationId":"%s","amount":%s,"requestedAt":"%s"}' % (
            str(uuid.UUID(bytes=correlation_id)).encode(),
            format_cents(amount_cents).encode(),
            format_iso_ms(requested_at).encode(),
        )
        try:
            response = self._pool.urlopen(
                "POST", self._payments_path, body=body,
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
                timeout=urllib3.Timeout(connect=1.0, read=timeout_s), retries=False, redirect=False)
        except (NewConnectionError, ConnectTimeoutError):
            return Outcome.FAILED  # never connected: surely not sent, so surely not stored
        except (urllib3.exceptions.HTTPError, OSError):
            return Outcome.UNKNOWN
        status = response.status
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
            return Stored(parse_iso(stored["requestedAt"]), round(float(stored["amount"]) * 100))
        except (ValueError, KeyError, TypeError):
            return Outcome.UNKNOWN

    def health(self, timeout_s: float = 3.0) -> Health | RateLimited | None:
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
