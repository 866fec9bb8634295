"""bruto.balancer in front of two real gunicorn instances: connections handed over, then served directly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from gateway import REPO
from gateway import Client
from gateway import children
from gateway import free_port
from gateway import payment
from gateway import terminate

from bruto.config import Settings
from bruto.shm.layout import open_intake

pytestmark = pytest.mark.slow  # real processes

SLOTS = 2


def spawn(tmp_path, name: str, command: list[str], env: dict) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "ab")
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def answers_on_unix(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(path)
            sock.sendall(b"GET /payments-summary HTTP/1.1\r\nHost: t\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Topology:
    """Two gunicorn instances on unix sockets sharing one shm dir, and the balancer on TCP."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.settings = Settings(shm_dir=str(tmp_path / "shm"), intake_slots=SLOTS)
        self.env = dict(os.environ, BRUTO_SHM_DIR=self.settings.shm_dir, BRUTO_INTAKE_SLOTS=str(SLOTS),
                        BRUTO_WORKERS="1", BRUTO_LOG_LEVEL="warning")
        self.sockets = [str(tmp_path / f"api{n}.sock") for n in (1, 2)]
        self.instances = [self.start_instance(n) for n in (0, 1)]
        self.port = free_port()
        self.balancer = spawn(tmp_path, "balancer", [
            sys.executable, "-m", "bruto.balancer", "--bind", f"127.0.0.1:{self.port}", *self.sockets,
        ], self.env)
        wait_until(self._balancer_listens, "the balancer")

    def start_instance(self, n: int) -> subprocess.Popen:
        process = spawn(self.tmp_path, f"api{n + 1}", [
            sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf",
        ], dict(self.env, BRUTO_BIND=f"unix:{self.sockets[n]}"))
        wait_until(lambda: answers_on_unix(self.sockets[n]), f"instance {n + 1}")
        return process

    def _balancer_listens(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def written(self) -> list[int]:
        """Payments each intake slot holds, i.e. each instance's worker."""
        return sorted(int(open_intake(self.settings, slot).counters["written"]) for slot in range(SLOTS))

    def pay_on_new_connections(self, count: int) -> list[int]:
        statuses = []
        for _ in range(count):
            client = Client(self.port)
            client.send(payment())
            statuses.append(client.answer()[0])
            client.close()
        return statuses

    def close(self) -> None:
        for process in [self.balancer, *self.instances]:
            terminate(process)


@pytest.fixture
def topology(tmp_path):
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        topology.close()


def test_connections_alternate_between_the_instances(topology):
    clients = [Client(topology.port) for _ in range(6)]
    for client in clients:
        client.send(payment())
    assert [client.answer()[0] for client in clients] == [202] * 6
    assert topology.written() == [3, 3]
    for client in clients:
        client.close()


def test_a_connection_stays_with_its_instance(topology):
    client = Client(topology.port)
    for _ in range(4):
        client.send(payment())
        assert client.answer()[0] == 202
    assert topology.written() == [0, 4]
    client.close()


def test_once_handed_over_a_connection_no_longer_needs_the_balancer(topology):
    client = Client(topology.port)
    client.send(payment())
    assert client.answer()[0] == 202
    terminate(topology.balancer)
    client.send(payment())
    assert client.answer()[0] == 202
    client.close()


def test_the_instance_socket_still_serves_plain_http_with_keep_alive_and_pipelining(topology):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(topology.sockets[0])
        sock.sendall(payment() + payment())  # two pipelined requests in the first message
        answers = b""
        while answers.count(b"HTTP/1.1 202") < 2:
            answers += sock.recv(65536)
        sock.sendall(payment())
        assert sock.recv(65536).startswith(b"HTTP/1.1 202")
    assert topology.written() == [0, 3]


def worker_of(instance: subprocess.Popen) -> int:
    return children(instance.pid)[0]


def test_a_worker_stopping_gracefully_loses_no_connection(topology):
    # Clients keep connecting while instance 1's worker stops and its gunicorn starts another.
    os.kill(worker_of(topology.instances[0]), signal.SIGTERM)
    statuses = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        statuses += topology.pay_on_new_connections(1)
        time.sleep(0.05)
    assert statuses == [202] * len(statuses)
    assert sum(topology.written()) == len(statuses)


def test_a_stalled_instance_holds_up_only_its_own_clients(topology):
    stalled = worker_of(topology.instances[0])
    os.kill(stalled, signal.SIGSTOP)
    try:
        clients = [Client(topology.port) for _ in range(4)]
        waiting = []
        for client in clients:
            client.send(payment())
            client.sock.settimeout(2)
        # Instance 2's clients (every other one) are answered while instance 1 is stalled...
        for client in clients:
            try:
                assert client.answer()[0] == 202
            except TimeoutError:
                waiting.append(client)
        assert len(waiting) == 2
    finally:
        os.kill(stalled, signal.SIGCONT)
    # ...and instance 1's, queued in its channel, once it resumes.
    for client in waiting:
        client.sock.settimeout(10)
        assert client.answer()[0] == 202
    assert topology.written() == [2, 2]
    for client in clients:
        client.close()


def test_a_restarted_worker_takes_connections_again(topology):
    assert topology.pay_on_new_connections(2) == [202, 202]
    # The worker of instance 1 dies; its gunicorn starts another on the same socket.
    os.kill(worker_of(topology.instances[0]), signal.SIGKILL)
    wait_until(lambda: answers_on_unix(topology.sockets[0]), "a new worker of instance 1")
    # Every connection is served, and instance 1's new worker gets its share again.
    assert topology.pay_on_new_connections(6) == [202] * 6
    assert topology.written() == [4, 4]


def test_with_one_instance_gone_the_other_takes_every_connection(topology):
    terminate(topology.instances[0])
    assert topology.pay_on_new_connections(4) == [202] * 4
    assert topology.written() == [0, 4]


def test_with_no_instance_a_client_is_closed_at_once(topology):
    for process in topology.instances:
        terminate(process)
    client = Client(topology.port)
    started = time.monotonic()
    assert client.closed()
    assert time.monotonic() - started < 5  # not left hanging until a timeout
    client.close()
