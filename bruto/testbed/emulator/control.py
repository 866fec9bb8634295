"""Start, drive and stop `bruto-emulator` processes from Python.

Used by the pytest fixtures (tests/conftest.py), the benchmarks and anything
else that needs a pair of local processors:

    pair = Processors.start()
    try:
        pair.default.set_delay(100)
        print(pair.default.url, pair.fallback.admin_summary())
    finally:
        pair.stop()

Each emulator listens on a port it picks itself (--port 0) and reports it on
its first line of output, so two test runs never race for a port.
"""

from __future__ import annotations

import dataclasses
import selectors
import subprocess
import sys

import requests

DEFAULT_FEE = "0.05"
FALLBACK_FEE = "0.15"
DEFAULT_TOKEN = "123"
_READY_PREFIX = "bruto-emulator listening on "


class Emulator:
    """One running emulator process and an admin client for it.

    Use `Emulator.start(...)`; call `stop()` when done.

    Attributes:
        url: Base URL, e.g. "http://127.0.0.1:41471".
        port: The port it listens on.
        pid: Its process id.
        fee: Its fee per transaction, as given.
        token: The admin token this client sends (kept in step by `set_token`).
    """

    def __init__(self, process: subprocess.Popen | None, url: str, fee: str, token: str):
        self._process = process
        self._http = requests.Session()
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.pid = None if process is None else process.pid
        self.fee = fee
        self.token = token

    @classmethod
    def start(cls, fee: str = DEFAULT_FEE, *, token: str = DEFAULT_TOKEN,
              health_window: float = 5.0, host: str = "127.0.0.1",
              extra_args: tuple[str, ...] = (), timeout: float = 10.0) -> Emulator:
        """Starts an emulator on a free port and waits until it accepts connections.

        Args:
            fee: Fee per transaction, e.g. "0.05".
            token: Initial admin token.
            health_window: Seconds per service-health rate-limit window.
            host: Address to bind.
            extra_args: More command-line flags, e.g. ("--max-concurrency", "2").
            timeout: Seconds to wait for it to start.

        Raises:
            RuntimeError: if it exits or stays silent for `timeout` seconds.
        """
        command = [sys.executable, "-m", "bruto.testbed.emulator.server", "--port", "0", "--host", host,
                   "--fee", str(fee), "--token", token, "--health-window", str(health_window),
                   *extra_args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None  # stdout=PIPE
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        line = process.stdout.readline() if ready else ""
        if not line.startswith(_READY_PREFIX):
            process.kill()
            process.wait()
            raise RuntimeError(f"emulator did not start: {command} printed {line!r}")
        return cls(process, line[len(_READY_PREFIX):].strip(), str(fee), token)

    @classmethod
    def at(cls, url: str, fee: str = DEFAULT_FEE, token: str = DEFAULT_TOKEN) -> Emulator:
        """An admin client for an emulator running elsewhere (a container); `stop()` only closes the client."""
        return cls(None, url, fee, token)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminates the process (SIGTERM, then SIGKILL after `timeout` seconds)."""
        self._http.close()
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    # ------------------------------------------------------------ admin API

    def _admin(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self._http.request(method, self.url + path,
                                      headers={"X-Rinha-Token": self.token}, timeout=10,
                                      **kwargs)
        response.raise_for_status()
        return response

    def admin_summary(self, from_: str | None = None, to: str | None = None) -> dict:
        """GET /admin/payments-summary.

        Args:
            from_: ISO-8601 lower bound (inclusive), or None.
            to: ISO-8601 upper bound (inclusive), or None.

        Returns:
            {"totalRequests", "totalAmount", "totalFee", "feePerTransaction"};
            amounts are parsed as floats, so compare them with a tolerance or
            use `admin_summary_text` for the exact decimals.
        """
        params = {key: value for key, value in (("from", from_), ("to", to)) if value}
        return self._admin("GET", "/admin/payments-summary", params=params).json()

    def admin_summary_text(self, from_: str | None = None, to: str | None = None) -> str:
        """Same as `admin_summary`, as the raw JSON text (exact decimals)."""
        params = {key: value for key, value in (("from", from_), ("to", to)) if value}
        return self._admin("GET", "/admin/payments-summary", params=params).text

    def set_delay(self, ms: int) -> dict:
        """PUT /admin/configurations/delay; returns {"config", "was", "is"}."""
        return self._admin("PUT", "/admin/configurations/delay", json={"delay": ms}).json()

    def set_failure(self, failing: bool) -> dict:
        """PUT /admin/configurations/failure; returns {"config", "was", "is"}."""
        return self._admin("PUT", "/admin/configurations/failure", json={"failure": failing}).json()

    def set_token(self, token: str) -> None:
        """PUT /admin/configurations/token, then sends the new token from here on."""
        self._admin("PUT", "/admin/configurations/token", json={"token": token})
        self.token = token

    def purge(self) -> None:
        """POST /admin/purge-payments."""
        self._admin("POST", "/admin/purge-payments")

    def get_payment(self, correlation_id: str) -> dict | None:
        """GET /payments/{id}: the stored payment as a dict, or None on 404."""
        response = self._http.get(f"{self.url}/payments/{correlation_id}", timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Back to a fresh processor: token 123, delay 0, not failing, no payments.

        The service-health rate limit is not reset: it is time-based, as the
        real one is.
        """
        if self.token != DEFAULT_TOKEN:
            self.set_token(DEFAULT_TOKEN)
        self.set_delay(0)
        self.set_failure(False)
        self.purge()


@dataclasses.dataclass
class Processors:
    """The default (fee 0.05) and fallback (fee 0.15) emulators of a test or a run."""

    default: Emulator
    fallback: Emulator

    @classmethod
    def start(cls, health_window: float = 5.0) -> Processors:
        """Starts both emulators on free ports.

        Args:
            health_window: Seconds per service-health window (5 as the real ones).
        """
        default = Emulator.start(DEFAULT_FEE, health_window=health_window)
        try:
            fallback = Emulator.start(FALLBACK_FEE, health_window=health_window)
        except Exception:
            default.stop()
            raise
        return cls(default, fallback)

    def reset(self) -> None:
        """Resets both: token 123, delay 0, not failing, no payments."""
        self.default.reset()
        self.fallback.reset()

    def stop(self) -> None:
        """Terminates both processes."""
        self.default.stop()
        self.fallback.stop()
