"""bruto.gateway.worker.HttptoolsGeventWorker in a real gunicorn (the protocol alone: tests/unit/test_http1.py).

Behaviour only (what is answered, when a connection stays open or closes),
never timings: the worker's speed is measured by tools/bench_worker.py and
bruto-bench, recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from gateway import REPO
from gateway import Client
from gateway import free_port
from gateway import payment
from gateway import terminate

from bruto.config import Settings
from bruto.gateway.validation import MAX_BODY
from bruto.shm.layout import open_intake

pytestmark = pytest.mark.slow  # real processes

WORKER_CLASS = "bruto.gateway.worker.HttptoolsGeventWorker"


# ------------------------------------------------------------ a real gunicorn


@pytest.fixture
def server(tmp_path, request):
    extra = getattr(request, "param", [])
    port = free_port()
    env = dict(os.environ, BRUTO_SHM_DIR=str(tmp_path / "shm"), BRUTO_BIND=f"127.0.0.1:{port}",
               BRUTO_WORKERS="1", BRUTO_WORKER_CLASS=WORKER_CLASS, BRUTO_LOG_LEVEL="warning",
               BRUTO_INTAKE_SLOTS="1")
    log = open(tmp_path / "gunicorn.log", "wb")
    # A long graceful timeout: the stop test shows idle connections do not hold it up.
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf", "--graceful-timeout", "60", *extra],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"gunicorn did not start: {(tmp_path / 'gunicorn.log').read_text()}")
            time.sleep(0.05)
    process.port = port
    process.settings = Settings(shm_dir=str(tmp_path / "shm"), intake_slots=1)
    try:
        yield process
    finally:
        terminate(process, 30)


def written(server) -> int:
    return int(open_intake(server.settings, 0).counters["written"])


def test_keep_alive_serves_post_and_get_on_one_connection(server):
    client = Client(server.port)
    correlation_id = uuid.uuid4()
    client.send(payment(correlation_id))
    status, headers, body = client.answer()
    assert (status, body) == (202, b"")
    assert "connection" not in headers
    slab = open_intake(server.settings, 0)
    assert int(slab.counters["written"]) == 1
    assert slab.records[0]["correlation_id"].tobytes() == correlation_id.bytes
    client.send(b"GET /payments-summary?from=2020-07-10T12:34:56.000Z HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = client.answer()
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert body.startswith(b'{"default":{"totalRequests":0,')
    client.send(payment())
    assert client.answer()[0] == 202
    assert written(server) == 2
    client.close()


def test_pipelined_requests_are_answered_in_order(server):
    client = Client(server.port)
    client.send(payment() + b"GET /nope HTTP/1.1\r\n\r\n" + payment())
    assert [client.answer()[0] for _ in range(3)] == [202, 404, 202]
    assert written(server) == 2
    client.close()


def test_a_chunked_payment_is_accepted(server):
    body = b'{"correlationId":"%s","amount":1.5}' % str(uuid.uuid4()).encode()
    client = Client(server.port)
    client.send(b"POST /payments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(body[:10]), body[:10])
                + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[10:]), body[10:]))
    assert client.answer()[0] == 202
    assert written(server) == 1
    client.close()


def test_expect_100_continue_is_answered_before_the_body(server):
    body = payment().split(b"\r\n\r\n", 1)[1]
    client = Client(server.port)
    client.send(b"POST /payments HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert client.answer()[0] == 100
    client.send(body)
    assert client.answer()[0] == 202
    client.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /payments HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST /payments HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /payments-summary HTTP/1.1\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n", 431),
    (b"GET /payments-summary HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 101 + b"\r\n", 431),
])
def test_bad_http_is_refused_and_the_connection_closed(server, request_bytes, status):
    client = Client(server.port)
    client.send(request_bytes)
    answered, headers, body = client.answer()
    assert answered == status
    assert headers["connection"] == "close"
    assert body.startswith(b'{"error":')
    assert client.closed()
    assert written(server) == 0
    client.close()


def test_the_apps_own_errors_keep_the_connection(server):
    client = Client(server.port)
    client.send(b"POST /payments HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    status, _, body = client.answer()
    assert (status, body) == (422, b'{"error":"correlationId is required"}')
    client.send(b"POST /payments HTTP/1.1\r\nContent-Length: 4\r\n\r\nnope")
    status, _, body = client.answer()
    assert (status, body) == (400, b'{"error":"body is not valid JSON"}')
    client.send(payment())
    assert client.answer()[0] == 202
    client.close()


@pytest.mark.parametrize("request_bytes", [
    b"GET /payments-summary HTTP/1.0\r\n\r\n",
    b"GET /payments-summary HTTP/1.1\r\nConnection: close\r\n\r\n",
])
def test_a_connection_that_asks_to_close_is_closed_after_its_answer(server, request_bytes):
    client = Client(server.port)
    client.send(request_bytes)
    status, headers, _ = client.answer()
    assert status == 200
    assert headers["connection"] == "close"
    assert client.closed()
    client.close()


def test_a_graceful_stop_closes_idle_connections_instead_of_waiting_for_them(server):
    idle = Client(server.port)
    idle.send(payment())
    assert idle.answer()[0] == 202
    server.send_signal(signal.SIGTERM)
    # graceful_timeout is 60 s here: the worker only exits this soon if it
    # closes the idle connection by itself.
    assert server.wait(20) == 0
    assert idle.closed()
    idle.close()


@pytest.mark.parametrize("server", [["--keep-alive", "1"]], indirect=True)
def test_a_silent_connection_is_closed_after_keepalive(server):
    silent = Client(server.port)
    half = Client(server.port)
    half.send(b"POST /payments HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
    # Closed after one to two keepalive periods of silence (1-2 s here).
    assert silent.closed()
    assert half.closed()
    fresh = Client(server.port)
    fresh.send(payment())
    assert fresh.answer()[0] == 202
    for client in (silent, half, fresh):
        client.close()


def test_an_oversized_body_gets_the_apps_413_message_unread(server):
    client = Client(server.port)
    client.send(b"POST /payments HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % 70_000)
    status, _, body = client.answer()
    assert (status, body) == (413, b'{"error":"body is larger than 4096 bytes"}')
    assert client.closed()
    client.close()
