"""Run a real bruto gateway (gunicorn + dispatcher processes) for integration tests.

    gw = Gateway.start(tmp_path, processors, workers=2)
    try:
        gw.pay(uuid4(), "19.90")
        gw.wait_settled(processors)
    finally:
        gw.stop()
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import requests

from bruto.testbed.stack.runner import live_processes
from bruto.timefmt import parse_iso

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """PIDs of the live children of ``pid``."""
    return sorted(child for child, fields in live_processes() if int(fields[1]) == pid)


def terminate(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM a process we started and wait for it; SIGKILL it if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Gateway:
    """gunicorn (N gevent workers) on a TCP port and one dispatcher, sharing a temp shm dir."""

    def __init__(self, env: dict, port: int, log_dir: str):
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.http = requests.Session()
        self.gunicorn: subprocess.Popen | None = None
        self.dispatchers: list[subprocess.Popen] = []

    @classmethod
    def start(cls, tmp_path, processors, workers: int = 2, dispatcher: bool = True, **settings) -> "Gateway":
        env = dict(os.environ)
        env.update({
            "BRUTO_SHM_DIR": str(tmp_path / "shm"),
            "BRUTO_DEFAULT_URL": processors.default.url,
            "BRUTO_FALLBACK_URL": processors.fallback.url,
            "BRUTO_WORKERS": str(workers),
            "BRUTO_LOG_LEVEL": "warning",
        })
        env.update({"BRUTO_" + k.upper(): str(v) for k, v in settings.items()})
        port = free_port()
        env["BRUTO_BIND"] = f"127.0.0.1:{port}"
        gateway = cls(env, port, str(tmp_path))
        gateway.gunicorn = gateway._spawn("gunicorn", [sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"])
        try:
            gateway._wait_http()
        except BaseException:
            gateway.stop()  # the caller never gets it to stop: do not leave gunicorn running
            raise
        if dispatcher:
            gateway.start_dispatcher()
        return gateway

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        return subprocess.Popen(command, env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def start_dispatcher(self) -> subprocess.Popen:
        process = self._spawn(f"dispatcher-{len(self.dispatchers)}", [sys.executable, "-m", "bruto.dispatcher"])
        self.dispatchers.append(process)
        return process

    def _wait_http(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log('gunicorn')}")
            try:
                self.http.get(self.url + "/payments-summary", timeout=1)
                return
            except (requests.ConnectionError, requests.Timeout):
                # A connection the arbiter's socket took before a worker booted
                # can wait longer than the read timeout on a loaded machine.
                time.sleep(0.05)
        raise RuntimeError(f"gunicorn did not answer: {self.log('gunicorn')}")

    def log(self, name: str) -> str:
        with open(os.path.join(self.log_dir, f"{name}.log"), errors="replace") as f:
            return f.read()[-4000:]

    def worker_pids(self) -> list[int]:
        return children(self.gunicorn.pid)

    def pay(self, correlation_id=None, amount="19.90") -> requests.Response:
        correlation_id = correlation_id or uuid.uuid4()
        body = '{"correlationId":"%s","amount":%s}' % (correlation_id, amount)
        return self.http.post(self.url + "/payments", data=body, timeout=5,
                              headers={"Content-Type": "application/json"})

    def summary(self, from_: str | None = None, to: str | None = None) -> dict:
        params = {k: v for k, v in (("from", from_), ("to", to)) if v is not None}
        response = self.http.get(self.url + "/payments-summary", params=params, timeout=5)
        response.raise_for_status()
        return response.json()

    def wait_settled(self, processors, expected: int, timeout: float = 30.0) -> dict:
        """Wait until the processors together hold `expected` payments and our summary agrees."""
        deadline = time.monotonic() + timeout
        while True:
            ours = self.summary()
            stored = (processors.default.admin_summary()["totalRequests"]
                      + processors.fallback.admin_summary()["totalRequests"])
            counted = ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"]
            if stored >= expected and counted == stored:
                return ours
            if time.monotonic() > deadline:
                raise AssertionError(f"not settled: processors hold {stored}, we count {counted}, "
                                     f"expected {expected}\n{self.log('dispatcher-0')}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in [*self.dispatchers, self.gunicorn]:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.dispatchers, self.gunicorn]:
            if process is None:
                continue
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Client:
    """A raw HTTP/1.1 connection that reads answers one at a time."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.pending:
            self._more()
        head, _, self.pending = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.pending) < length:
            self._more()
        body, self.pending = self.pending[:length], self.pending[length:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the server closed the connection (after anything still unread)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.pending += chunk

    def close(self) -> None:
        self.sock.close()


def payment(correlation_id: uuid.UUID | None = None) -> bytes:
    body = b'{"correlationId":"%s","amount":19.90}' % str(correlation_id or uuid.uuid4()).encode()
    return b"POST /payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body)


def iso(t: float) -> str:
    """Epoch seconds as the official test writes a date: milliseconds and a Z."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- GET /payments/{id}: one payment's state, followed ------------------------------------------

def lookup(gateway: Gateway, correlation_id) -> requests.Response:
    """GET /payments/{id} on this gateway (any of its answers is JSON)."""
    response = gateway.http.get(f"{gateway.url}/payments/{correlation_id}", timeout=10)
    assert response.headers["Content-Type"].startswith("application/json")
    return response


def state_of(gateway: Gateway, correlation_id) -> tuple[int, dict]:
    response = lookup(gateway, correlation_id)
    return response.status_code, response.json()


def wait_state(gateway: Gateway, correlation_id, state: str, timeout: float = 30.0, **fields) -> dict:
    """Polls bruto until the payment is in ``state`` (with ``fields``); returns the answer."""
    deadline = time.monotonic() + timeout
    seen: list = []
    while True:
        status, body = state_of(gateway, correlation_id)
        if status == 200 and body["state"] == state and fields.items() <= body.items():
            return body
        if not seen or seen[-1] != (status, body):
            seen.append((status, body))
        if time.monotonic() > deadline:
            raise AssertionError(f"never {state} {fields}: {seen}\n{gateway.log('dispatcher-0')}")
        time.sleep(0.02)


def assert_stored_as_bruto_says(processors, answer: dict) -> None:
    """bruto's ``confirmed`` is what its processor answers for that id, and the other has nothing."""
    assert answer["state"] == "confirmed"
    mine = getattr(processors, answer["processor"]).get_payment(answer["correlationId"])
    other = processors.fallback if answer["processor"] == "default" else processors.default
    assert mine is not None, answer
    assert parse_iso(mine["requestedAt"]) == parse_iso(answer["requestedAt"])
    assert float(mine["amount"]) == answer["amount"]
    assert other.get_payment(answer["correlationId"]) is None
