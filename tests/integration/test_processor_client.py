"""ProcessorClient.pay against a real emulator and misbehaving sockets: each outcome the dispatcher acts on."""

from __future__ import annotations

import socket
import threading
import uuid

import orjson
import pytest

from bruto.dispatcher.processor import Outcome
from bruto.dispatcher.processor import ProcessorClient
from bruto.dispatcher.processor import make_session
from bruto.timefmt import now_us

pytestmark = pytest.mark.slow  # a real emulator process


def pay(client: ProcessorClient, correlation_id: bytes | None = None, timeout_s: float = 2.0) -> Outcome:
    return client.pay(correlation_id or uuid.uuid4().bytes, 1990, now_us(), timeout_s)


def test_outcomes_from_the_emulator(clean_processors):
    default = clean_processors.default
    client = ProcessorClient(default.url, make_session(4))
    first = uuid.uuid4()
    assert pay(client, first.bytes) is Outcome.STORED
    assert default.get_payment(str(first))["amount"] == 19.9
    assert pay(client, first.bytes) is Outcome.DUPLICATE  # 422: already stored
    for _ in range(20):  # pooled connections are reused and stay sound
        assert pay(client) is Outcome.STORED
    default.set_failure(True)
    assert pay(client) is Outcome.FAILED  # 500
    default.set_failure(False)
    assert pay(client) is Outcome.STORED
    assert default.admin_summary()["totalRequests"] == 22


def test_nobody_listening_is_failed():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ProcessorClient(f"http://127.0.0.1:{port}", make_session(2))
    assert pay(client) is Outcome.FAILED  # never connected: surely not stored


class Server:
    """A TCP server that reads each request and then answers with ``reply(request)`` (None: say nothing)."""

    def __init__(self, reply):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.reply = reply
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(65536)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    conn.recv(1)  # until the client gives up
                else:
                    conn.sendall(answer)

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("answer, outcome", [
    (b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n", Outcome.FAILED),
    (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}", Outcome.REJECTED),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", Outcome.UNKNOWN),
    (b"", Outcome.UNKNOWN),  # connection closed without an answer: it may have been stored
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", Outcome.UNKNOWN),  # answer cut short
    (b"not http\r\n\r\n", Outcome.UNKNOWN),
])
def test_outcomes_of_other_answers(answer, outcome):
    server = Server(lambda request: answer)
    try:
        assert pay(ProcessorClient(server.url, make_session(2))) is outcome
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /payments HTTP/1.1\r\n")
        assert f"content-length: {len(body)}".encode() in head.lower()
        sent = orjson.loads(body)
        assert sent["amount"] == 19.9 and uuid.UUID(sent["correlationId"]) and sent["requestedAt"].endswith("Z")
    finally:
        server.close()


def test_silence_past_the_timeout_is_unknown():
    server = Server(lambda request: None)
    try:
        client = ProcessorClient(server.url, make_session(1))
        assert pay(client, timeout_s=0.2) is Outcome.UNKNOWN
        # The timed-out connection was given back closed: the pool still has its one slot.
        assert pay(client, timeout_s=0.2) is Outcome.UNKNOWN
    finally:
        server.close()


def test_health_calls_the_processor_queues_are_answered_not_given_up(start_emulator):
    """service-health serves one call per 5-s window and queues two more for the next windows: three
    calls at once all get a report, the third after waiting past one window (5-10 s)."""
    client = ProcessorClient(start_emulator().url, make_session(4))
    reports: list[object] = []
    callers = [threading.Thread(target=lambda: reports.append(client.health())) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert [type(report).__name__ for report in reports] == ["Health"] * 3
