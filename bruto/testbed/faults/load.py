"""Official-like load and the official consistency probe, from threads, for the fault matrix.

The load: keep-alive clients (one connection each, like k6's virtual users)
that POST a payment with a fresh UUID v4 and amount 19.90, each at its own
steady pace, with the official test's 1.5 s timeout; every attempt is
recorded with what came back. The probe: every ``interval_s``, bruto's
summary and both processors' admin summaries over ``now - 15 s .. now - 1.5 s``,
asked concurrently, and ``|Δdefault + Δfallback|`` as the official test adds
it to its inconsistency counter.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_S = 1.5
ADMIN = {"X-Rinha-Token": "123"}


@dataclasses.dataclass
class Attempt:
    correlation_id: str
    sent_at: float
    outcome: str  # "202", another status, "timeout", "reset", "refused", "error"
    latency_s: float = 0.0  # until the answer, or until the failure
    retry_after: str | None = None  # the answer's Retry-After header, if any


def iso(t: float) -> str:
    """Epoch seconds as the official test writes a date: milliseconds and a Z."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _host(parts: urllib.parse.SplitResult) -> str:
    if not parts.hostname:
        raise ValueError(f"{parts.geturl()!r} names no host")
    return parts.hostname


def get_json(base_url: str, path: str, headers: dict | None = None, timeout: float = TIMEOUT_S) -> dict:
    parts = urllib.parse.urlsplit(base_url)
    connection = http.client.HTTPConnection(_host(parts), parts.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {path}: {response.status}")
        return json.loads(body)
    finally:
        connection.close()


class Load:
    """``clients`` keep-alive clients posting ``rate`` payments per second in all, until stopped.

    Args:
        base_url: bruto, e.g. ``http://127.0.0.1:9999``.
        rate: Payments per second, all clients together (``math.inf``: each client
            sends again as soon as it is answered).
        clients: Connections (each sends every ``clients / rate`` seconds).
    """

    def __init__(self, base_url: str, rate: float = 200.0, clients: int = 40):
        parts = urllib.parse.urlsplit(base_url)
        self.address = (_host(parts), parts.port)
        self.interval = clients / rate
        self.clients = clients
        self.attempts: list[Attempt] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def accepted(self) -> list[str]:
        with self._lock:
            return [a.correlation_id for a in self.attempts if a.outcome == "202"]

    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for attempt in self.attempts:
                counts[attempt.outcome] = counts.get(attempt.outcome, 0) + 1
        return counts

    def _client(self, number: int) -> None:
        connection = None
        next_at = time.monotonic() + self.interval * number / self.clients  # spread the clients out
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self.interval
            if connection is None:
                connection = http.client.HTTPConnection(*self.address, timeout=TIMEOUT_S)
            correlation_id = str(uuid.uuid4())
            body = '{"correlationId":"%s","amount":19.90}' % correlation_id
            sent_at = time.time()
            started = time.monotonic()
            retry_after = None
            try:
                connection.request("POST", "/payments", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                outcome = str(response.status)
                retry_after = response.getheader("Retry-After")
                if response.will_close:
                    connection.close()
                    connection = None
            except TimeoutError:
                outcome = "timeout"
            except ConnectionRefusedError:
                outcome = "refused"
            except (ConnectionError, http.client.HTTPException):
                outcome = "reset"
            except OSError:
                outcome = "error"
            if outcome in ("timeout", "refused", "reset", "error") and connection is not None:
                connection.close()
                connection = None
            with self._lock:
                self.attempts.append(Attempt(correlation_id, sent_at, outcome, time.monotonic() - started,
                                             retry_after))
            next_at = max(next_at, time.monotonic())  # a slow answer delays this client, as a VU's would
        if connection is not None:
            connection.close()


class Probe:
    """The official consistency probe every ``interval_s`` until stopped (a thread)."""

    def __init__(self, bruto_url: str, default_url: str, fallback_url: str, interval_s: float = 1.0):
        self.urls = (bruto_url, default_url, fallback_url)
        self.interval_s = interval_s
        self.values: list[int] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pool = ThreadPoolExecutor(3)

    def start(self) -> "Probe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown()

    def once(self) -> int | None:
        """One probe: the inconsistency it adds, or None if bruto (or a processor) did not answer."""
        now = time.time()
        query = "?" + urllib.parse.urlencode({"from": iso(now - 15), "to": iso(now - 1.5)})
        bruto, default, fallback = self.urls
        asked = [self._pool.submit(get_json, bruto, "/payments-summary" + query),
                 self._pool.submit(get_json, default, "/admin/payments-summary" + query, ADMIN),
                 self._pool.submit(get_json, fallback, "/admin/payments-summary" + query, ADMIN)]
        try:
            ours, theirs_default, theirs_fallback = (answer.result() for answer in asked)
        except (OSError, ValueError):
            return None
        return abs((ours["default"]["totalRequests"] - theirs_default["totalRequests"])
                   + (ours["fallback"]["totalRequests"] - theirs_fallback["totalRequests"]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            found = self.once()
            if found is None:
                self.failures += 1
            else:
                self.values.append(found)
