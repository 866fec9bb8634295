"""bruto.gateway.worker.Server in this process, on real socket pairs, without gunicorn.

A client that pipelines hundreds of requests (bruto.testbed.slowloris's
non-readers send 500 at once) must not hold up the worker's other
connections until all of them are answered: between two of its requests,
every other greenlet that is ready runs. A lone request is answered without
yielding. And what a client sees of a refusal: its answer, then the end of
the connection.
"""

from __future__ import annotations

import logging
import socket

import gevent
import gevent.socket
import pytest

from bruto.gateway.worker import Server


def recording_app(order: list[str], status: str = "200 OK"):
    def app(environ, start_response):
        order.append(environ["PATH_INFO"])
        start_response(status, [("Content-Length", "0")])
        return [b""]
    return app


def read_to_end(sock) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def connected(server: Server):
    """A client socket whose other end the server serves, in a greenlet."""
    ours, theirs = gevent.socket.socketpair()
    return ours, gevent.spawn(server.handle, theirs, None)


def test_other_connections_run_between_pipelined_requests():
    order: list[str] = []
    server = Server(recording_app(order))
    piped, one = gevent.socket.socketpair(), gevent.socket.socketpair()
    piped[0].sendall(b"GET /a1 HTTP/1.1\r\n\r\nGET /a2 HTTP/1.1\r\n\r\nGET /a3 HTTP/1.1\r\nConnection: close\r\n\r\n")
    one[0].sendall(b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")
    served = [gevent.spawn(server.handle, piped[1], None), gevent.spawn(server.handle, one[1], None)]
    answers = read_to_end(piped[0])
    assert read_to_end(one[0]).startswith(b"HTTP/1.1 200 OK")
    gevent.joinall(served)
    assert order.index("/b") < order.index("/a3")
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == 3


def test_a_single_request_is_answered_without_yielding():
    order: list[str] = []
    server = Server(recording_app(order, "202 Accepted"))
    client, served = connected(server)
    client.sendall(b"POST /payments HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    gevent.sleep(0)  # the server's greenlet starts, and reads the request at once
    others = gevent.spawn(order.append, "another connection")  # ready to run, waiting for a yield
    assert read_to_end(client).startswith(b"HTTP/1.1 202 Accepted")
    others.join()
    served.join()
    assert order == ["/payments", "another connection"]  # the hot path: one request per read, no switch


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 100_000 + b"\r\n\r\n", b"431"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
])
def test_a_refused_request_gets_its_answer_then_the_connection_closes(request_bytes, status):
    order: list[str] = []
    client, served = connected(Server(recording_app(order)))
    client.sendall(request_bytes)
    client.shutdown(socket.SHUT_WR)  # as a client that has sent all it meant to
    answer = read_to_end(client)  # returns only once the server closed its end
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"\r\nConnection: close\r\n" in answer
    served.join()
    assert order == []  # the app never saw it


def test_a_failing_app_answers_500_and_closes():
    def app(environ, start_response):
        raise RuntimeError("broken")

    client, served = connected(Server(app, log=logging.getLogger("test")))
    client.sendall(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    answer = read_to_end(client)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.count(b"HTTP/1.1") == 1
    served.join()


def test_after_max_requests_the_server_stops_and_says_close():
    order: list[str] = []
    server = Server(recording_app(order), max_requests=2)
    client, served = connected(server)
    client.sendall(b"GET /1 HTTP/1.1\r\n\r\n")
    first = client.recv(65536)
    client.sendall(b"GET /2 HTTP/1.1\r\n\r\n")
    second = read_to_end(client)
    served.join()
    assert b"Connection: close" not in first
    assert b"\r\nConnection: close\r\n" in second
    assert not server.alive and order == ["/1", "/2"]
