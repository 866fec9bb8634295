"""The per-request instrument: bruto's worker against a minimal gevent server and static nginx.

    python tools/bench_worker.py [--rounds 3] [--idle 2000] [--interval-ms 2]
                                 [--requests 12000] [--burst 12] [--conns 64]
                                 [--servers bruto,gevent,nginx] [--worker-class CLASS]
                                 [--profile FILE [--profile-phase idle|burst] [--perf]]
                                 [--json FILE]

Three servers on TCP ports of 127.0.0.1, started once and measured in turns
(the order rotates each round, so none always runs on a machine still busy
from another):

- ``bruto``: as deployed. One gunicorn instance (bruto.gateway.gunicorn_conf,
  one worker, no dispatcher, a fresh shared directory) on a unix socket, with
  ``bruto.balancer`` in front: the client connects to the balancer's TCP port
  and its connection is handed over, so every request goes from the client
  straight to the gunicorn worker and through the Falcon app.
- ``gevent``: a gevent ``StreamServer`` that answers each read with a canned
  202 (no parsing, no app): what Python and gevent cost at the least.
- ``nginx``: bruto-bench's floor (nginx-floor.conf: ``return 202``).

Two figures per server and round, POST /payments with a fresh correlationId:

- **idle round trip**: one keep-alive connection, one POST every
  ``--interval-ms`` (the quiet moments of the test: every request finds the
  server asleep and its caches cold); p50/p90/p99 of send-to-answer in µs,
  client included, and the server's CPU per request.
- **burst CPU**: ``--conns`` keep-alive connections, bursts of ``--burst``
  POSTs on distinct connections at once (k6's virtual users in step), every
  answer read before the next burst; the server's CPU per request (from
  ``/proc/<pid>/task/*/schedstat``, in ns: steadier than any latency on this
  machine) and the burst's wall time.

The line to read is ``bruto/gevent``: bruto's idle p50 over gevent's, and
its burst CPU over gevent's. ``--profile`` records bruto's worker during
one phase of the first round (``--profile-phase``) with py-spy, Python
frames, without pausing it (``--perf``: perf, for C and kernel time). It is a
timing run: ``bruto-quiet python tools/bench_worker.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bruto.testbed.bench.run import FLOOR_CONF  # noqa: E402
from bruto.testbed.stack import runner as stack_runner  # noqa: E402
from bruto.testbed.stack.services import nginx_service  # noqa: E402
from bruto.testbed.stack.services import render_nginx_conf  # noqa: E402

SERVERS = ("bruto", "gevent", "nginx")
CANNED_202 = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


# ------------------------------------------------------------ the servers


def serve_gevent(port: int) -> None:
    """The minimal gevent server: one canned 202 per read, until the client closes."""
    from gevent.server import StreamServer

    def handle(sock, _address):
        recv, send = sock.recv, sock.send
        while recv(65536):
            send(CANNED_202)  # the socket takes 45 bytes whole; sendall would add a getsockopt

    StreamServer(("127.0.0.1", port), handle, backlog=1024).serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of a process, in ns (schedstat: exact, unlike /proc/<pid>/stat's ticks)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir())


class Server:
    """A started server: its name, address, the processes whose CPU counts, and what to stop."""

    def __init__(self, name: str, port: int, groups: list[subprocess.Popen]):
        self.name = name
        self.address = ("127.0.0.1", port)
        self.groups = groups  # each leads its own session: stopped as a group
        self.measured: list[int] = []

    def stop(self) -> None:
        for process in reversed(self.groups):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                except ProcessLookupError:
                    pass


def wait_http(port: int, what: str, log: Path, deadline_s: float = 30.0) -> None:
    started = time.monotonic()
    while stack_runner.probe(("http", f"http://127.0.0.1:{port}/payments-summary", {})) is not None:
        if time.monotonic() - started > deadline_s:
            raise RuntimeError(f"{what} did not answer on :{port}; see {log}")
        time.sleep(0.05)


def start_bruto(tmp: Path, log, worker_class: str | None, capacity: int) -> Server:
    sock = tmp / "api1.sock"
    # No dispatcher drains this intake: room for every request of the run,
    # and no load shedding before the slab is full.
    env = dict(os.environ, BRUTO_SHM_DIR=str(tmp / "shm"), BRUTO_BIND=f"unix:{sock}", BRUTO_WORKERS="1",
               BRUTO_LOG_LEVEL="warning", BRUTO_INTAKE_CAPACITY=str(capacity), BRUTO_SHED_BACKLOG=str(capacity))
    if worker_class:
        env["BRUTO_WORKER_CLASS"] = worker_class
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"],
                                env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("bruto", free_port(), [gunicorn])
    started = time.monotonic()
    while stack_runner.probe(("unix", str(sock), "/payments-summary")) is not None:
        if gunicorn.poll() is not None or time.monotonic() - started > 30:
            server.stop()
            raise RuntimeError(f"gunicorn did not start; see {log.name}")
        time.sleep(0.05)
    balancer = subprocess.Popen(
        [sys.executable, "-m", "bruto.balancer", "--bind", f"127.0.0.1:{server.address[1]}", str(sock)],
        env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server.groups.append(balancer)
    wait_http(server.address[1], "bruto.balancer", Path(log.name))
    server.measured = children(gunicorn.pid)  # the worker (the arbiter only watches)
    return server


def start_gevent(log) -> Server:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-gevent", str(port)], stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("gevent", port, [process])
    started = time.monotonic()
    while True:
        try:
            socket.create_connection(server.address, timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() - started > 30:
                server.stop()
                raise RuntimeError(f"the gevent server did not start; see {log.name}") from None
            time.sleep(0.05)
    server.measured = [process.pid]
    return server


def start_nginx(tmp: Path, log) -> Server:
    port = free_port()
    run_dir = tmp / "nginx"
    service = nginx_service("floor", render_nginx_conf(FLOOR_CONF, run_dir, port), run_dir, port)
    process = subprocess.Popen(service.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("nginx", port, [process])
    wait_http(port, "nginx", Path(log.name))
    server.measured = children(process.pid)  # its worker
    return server


# ------------------------------------------------------------ the client


def request_bytes() -> bytes:
    body = b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode()
    return (
        b"POST /payments HTTP/1.1\r\nHost: localhost:9999\r\nUser-Agent: Grafana k6/1.1.0\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def read_response(sock: socket.socket, pending: bytearray) -> int:
    """Read one response (its body by Content-Length); return its status."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        pending += chunk
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    pending[:] = rest[length:]
    return int(head.split(b" ", 2)[1])


def connect(address) -> tuple[socket.socket, bytearray]:
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock, bytearray()


def check_status(status: int, server: str) -> None:
    if status != 202:
        raise RuntimeError(f"{server} answered {status} to POST /payments")


def measure_idle(server: Server, count: int, interval_s: float) -> dict:
    """One keep-alive connection, one POST every ``interval_s``: round trips (µs) and CPU per request."""
    sock, pending = connect(server.address)
    payloads = [request_bytes() for _ in range(count + 20)]
    for payload in payloads[:20]:  # warm the connection up (the handoff, first allocations)
        sock.sendall(payload)
        check_status(read_response(sock, pending), server.name)
    times = []
    cpu0 = sum(cpu_ns(pid) for pid in server.measured)
    next_at = time.perf_counter()
    for payload in payloads[20:]:
        next_at += interval_s
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter_ns()
        sock.sendall(payload)
        status = read_response(sock, pending)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        check_status(status, server.name)
    cpu = sum(cpu_ns(pid) for pid in server.measured) - cpu0
    sock.close()
    times.sort()
    return {
        "p50_us": round(times[len(times) // 2], 1),
        "p90_us": round(times[int(len(times) * 0.90)], 1),
        "p99_us": round(times[int(len(times) * 0.99)], 1),
        "cpu_per_request_us": round(cpu / count / 1e3, 1),
    }


def measure_bursts(server: Server, requests: int, burst: int, conns: int) -> dict:
    """Bursts of ``burst`` POSTs on distinct keep-alive connections: CPU per request (µs) and burst wall times."""
    pool = [connect(server.address) for _ in range(conns)]
    for sock, pending in pool:  # every connection handed over and warm before counting
        sock.sendall(request_bytes())
        check_status(read_response(sock, pending), server.name)
    payloads = [request_bytes() for _ in range(requests)]
    walls = []
    cpu0 = sum(cpu_ns(pid) for pid in server.measured)
    sent = 0
    while sent < requests:
        n = min(burst, requests - sent)
        batch = random.sample(pool, n)
        t0 = time.perf_counter()
        for (sock, _), payload in zip(batch, payloads[sent:sent + n]):
            sock.sendall(payload)
        for sock, pending in batch:
            check_status(read_response(sock, pending), server.name)
        walls.append(time.perf_counter() - t0)
        sent += n
    cpu = sum(cpu_ns(pid) for pid in server.measured) - cpu0
    for sock, _ in pool:
        sock.close()
    walls.sort()
    return {
        "cpu_per_request_us": round(cpu / requests / 1e3, 1),
        "burst_wall_p50_us": round(walls[len(walls) // 2] * 1e6, 1),
        "burst_wall_p99_us": round(walls[int(len(walls) * 0.99)] * 1e6, 1),
    }


# ------------------------------------------------------------------ main


def start_profiler(args, worker: int) -> subprocess.Popen:
    if args.perf:
        argv = ["perf", "record", "-F", "1999", "-g", "-p", str(worker), "-o", args.profile]
    else:
        py_spy = shutil.which("py-spy", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
        argv = [py_spy or "py-spy", "record", "--pid", str(worker), "--rate", "1000", "--format", "raw",
                "--output", args.profile, "--nonblocking"]
    profiler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(args.profile + ".log", "wb"))
    time.sleep(1.0)
    return profiler


def stop_profiler(profiler: subprocess.Popen) -> None:
    """Stop a profiler (it writes its file on SIGINT); returns None, the profiler slot's new value."""
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)
    return None


def median_of(rounds: list[dict], server: str, phase: str, key: str) -> float:
    return round(statistics.median(r[server][phase][key] for r in rounds), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=2000, help="POSTs per idle phase")
    parser.add_argument("--interval-ms", type=float, default=2.0, help="between idle POSTs")
    parser.add_argument("--requests", type=int, default=12000, help="POSTs per burst phase")
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--servers", default=",".join(SERVERS), help="which of bruto,gevent,nginx")
    parser.add_argument("--worker-class", help="BRUTO_WORKER_CLASS (default: bruto.gateway.gunicorn_conf's)")
    parser.add_argument("--profile", help="record bruto's worker in one phase of the first round into this file")
    parser.add_argument("--profile-phase", choices=("idle", "burst"), default="burst", help="which phase --profile records")
    parser.add_argument("--perf", action="store_true", help="with --profile: perf record -g instead of py-spy")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--serve-gevent", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gevent:
        serve_gevent(args.serve_gevent)
        return 0
    names = [n for n in args.servers.split(",") if n]
    if not names or set(names) - set(SERVERS):
        parser.error(f"--servers: some of {','.join(SERVERS)}")

    tmp = Path(tempfile.mkdtemp(prefix="bruto-bw-"))
    log = open(tmp / "servers.log", "wb")
    servers: dict[str, Server] = {}
    profiler = None
    total = args.rounds * (args.idle + args.requests + 2 * args.conns + 100)
    try:
        for name in names:
            if name == "bruto":
                servers[name] = start_bruto(tmp, log, args.worker_class, max(65536, 1 << total.bit_length()))
            elif name == "gevent":
                servers[name] = start_gevent(log)
            else:
                servers[name] = start_nginx(tmp, log)
        rounds = []
        for index in range(args.rounds):
            order = names[index % len(names):] + names[:index % len(names)]
            figures = {}
            for name in order:
                server = servers[name]
                profiled = args.profile and name == "bruto" and index == 0
                if profiled and args.profile_phase == "idle":
                    profiler = start_profiler(args, server.measured[0])
                idle = measure_idle(server, args.idle, args.interval_ms / 1e3)
                if profiled:
                    profiler = stop_profiler(profiler) if profiler else start_profiler(args, server.measured[0])
                figures[name] = {"idle": idle, "burst": measure_bursts(server, args.requests, args.burst, args.conns)}
                if profiled and profiler:
                    profiler = stop_profiler(profiler)
                print(f"round {index + 1} {name:6}  idle p50 {idle['p50_us']:7.1f} p90 {idle['p90_us']:7.1f} "
                      f"p99 {idle['p99_us']:7.1f} µs, cpu {idle['cpu_per_request_us']:6.1f} µs/req | "
                      f"burst cpu {figures[name]['burst']['cpu_per_request_us']:6.1f} µs/req, wall p50 "
                      f"{figures[name]['burst']['burst_wall_p50_us']:7.1f} µs", file=sys.stderr, flush=True)
            rounds.append(figures)
        summary = {
            name: {
                "idle_p50_us": median_of(rounds, name, "idle", "p50_us"),
                "idle_p90_us": median_of(rounds, name, "idle", "p90_us"),
                "idle_p99_us": median_of(rounds, name, "idle", "p99_us"),
                "idle_cpu_per_request_us": median_of(rounds, name, "idle", "cpu_per_request_us"),
                "burst_cpu_per_request_us": median_of(rounds, name, "burst", "cpu_per_request_us"),
                "burst_wall_p50_us": median_of(rounds, name, "burst", "burst_wall_p50_us"),
            }
            for name in names
        }
        print(f"medians of {args.rounds} rounds ({args.idle} idle POSTs every {args.interval_ms} ms, "
              f"{args.requests} POSTs in bursts of {args.burst} over {args.conns} connections):")
        print(f"{'server':8} {'idle p50':>9} {'p90':>8} {'p99':>8} {'idle cpu':>9} {'burst cpu':>10}   (µs)")
        for name, s in summary.items():
            print(f"{name:8} {s['idle_p50_us']:9.1f} {s['idle_p90_us']:8.1f} {s['idle_p99_us']:8.1f} "
                  f"{s['idle_cpu_per_request_us']:9.1f} {s['burst_cpu_per_request_us']:10.1f}")
        if "bruto" in summary and "gevent" in summary:
            b, g = summary["bruto"], summary["gevent"]
            print(f"bruto/gevent: idle p50 {b['idle_p50_us'] / g['idle_p50_us']:.2f}x, "
                  f"burst cpu {b['burst_cpu_per_request_us'] / g['burst_cpu_per_request_us']:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "rounds": rounds, "args": vars(args)}, indent=1))
        return 0
    finally:
        if profiler:
            stop_profiler(profiler)
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
