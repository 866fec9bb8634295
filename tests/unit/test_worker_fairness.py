"""The worker answers a connection's pipelined requests one at a time, letting its other connections in between.

A client that pipelines hundreds of requests (bruto.testbed.slowloris's
non-readers send 500 at once) must not hold up the worker's other
connections until all of them are answered: between two of its requests,
every other greenlet that is ready runs.
"""

from __future__ import annotations

import logging

import gevent

from bruto.gateway.worker import HttptoolsGeventWorker


class Date:
    def get(self) -> str:
        return "Mon, 30 Nov 2026 00:00:00 GMT"


def bare_worker(app) -> HttptoolsGeventWorker:
    """The worker's answering part alone: no gunicorn arbiter, no sockets."""
    worker = HttptoolsGeventWorker.__new__(HttptoolsGeventWorker)
    worker.nr, worker.max_requests, worker.alive = 0, 1 << 30, True
    worker.log = logging.getLogger("test")
    worker.wsgi = app
    worker._date = Date()
    return worker


def test_other_connections_run_between_pipelined_requests():
    order = []

    def app(environ, start_response):
        order.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]

    worker = bare_worker(app)
    others = gevent.spawn(order.append, "another connection")  # ready to run, waiting for a yield
    ready = [({"REQUEST_METHOD": "GET", "PATH_INFO": f"/{n}"}, True) for n in range(3)]
    answers, keep_alive = worker._answer(ready)
    others.join()
    assert order.index("another connection") < order.index("/2")
    assert answers.count(b"HTTP/1.1 200 OK") == 3 and keep_alive


def test_a_single_request_is_answered_without_yielding():
    order = []

    def app(environ, start_response):
        order.append("request")
        start_response("202 Accepted", [("Content-Length", "0")])
        return [b""]

    worker = bare_worker(app)
    others = gevent.spawn(order.append, "another connection")
    worker._answer([({"REQUEST_METHOD": "POST", "PATH_INFO": "/payments"}, True)])
    assert order == ["request"]  # the hot path: one request per read, no switch
    others.join()
