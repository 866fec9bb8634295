"""Benchmark: CPU a gunicorn worker spends per POST /payments, in bursts.

    python tools/bench_worker.py [--worker-class gevent] [--requests 20000] [--burst 12]
                                 [--conns 64] [--profile out.txt [--perf]] [--nginx [CONF]]

Starts one gunicorn instance (bruto.gateway.gunicorn_conf, one worker) on a unix socket,
on a fresh shared directory and without a dispatcher, optionally behind
conf/nginx.conf (``--nginx``: then the client speaks TCP to nginx and nginx
speaks to the socket). The client keeps ``--conns`` keep-alive connections
and sends bursts of ``--burst`` requests on distinct connections at once, then
reads every answer: the shape of k6's VUs falling into step. It prints the CPU
seconds the worker (and nginx) used per request, read from /proc, which is
much steadier on a noisy machine than any latency (the worker's system share
apart); and the wall time per burst. ``--profile`` records the worker with
py-spy during the run (``--perf``: with perf, for C and kernel time). Run it
under the bench lock like any load test:
``flock /tmp/bruto-bench.lock python tools/bench_worker.py ...``.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bruto.testbed.stack import runner as stack_mod  # noqa: E402


def cpu_seconds(pid: int, which: slice = slice(11, 13)) -> float:
    """User + system CPU seconds of a process (``which``: fields 11 user, 12 system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[which]) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def request_bytes(host: str) -> bytes:
    body = b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode()
    return (
        b"POST /payments HTTP/1.1\r\nHost: %s\r\nUser-Agent: Grafana k6/1.1.0\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
    )


def read_response(sock: socket.socket, pending: bytearray) -> int:
    """Read one response (no body expected beyond Content-Length); return its status."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-class", help="BRUTO_WORKER_CLASS (default: bruto.gateway.gunicorn_conf's)")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--conns", type=int, default=64)
    parser.add_argument("--profile", help="py-spy record the worker into this file (raw/collapsed)")
    parser.add_argument("--perf", action="store_true", help="with --profile: perf record -g instead (C and kernel)")
    parser.add_argument("--nginx", nargs="?", const="nginx.conf", metavar="CONF",
                        help="go through nginx (conf/nginx.conf, or this file of conf/) on a TCP port")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bruto-bw-"))
    sock_path = tmp / "api1.sock"
    env = dict(os.environ, BRUTO_SHM_DIR=str(tmp / "shm"), BRUTO_BIND=f"unix:{sock_path}",
               BRUTO_WORKERS="1", BRUTO_LOG_LEVEL="warning",
               BRUTO_INTAKE_CAPACITY=str(max(65536, 1 << (args.requests + 1000).bit_length())))
    if args.worker_class:
        env["BRUTO_WORKER_CLASS"] = args.worker_class
    procs: list[subprocess.Popen] = []
    spy = None
    log = open(tmp / "gunicorn.log", "wb")
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(gunicorn)
    try:
        deadline = time.monotonic() + 20
        while stack_mod.probe(("unix", str(sock_path), "/payments-summary")) is not None:
            if gunicorn.poll() is not None or time.monotonic() > deadline:
                print((tmp / "gunicorn.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.05)
        worker = children(gunicorn.pid)[0]
        measured = [worker]
        if args.nginx:
            port = 19000 + random.randrange(900)
            conf = stack_mod.render_nginx_conf(REPO / "conf" / args.nginx, tmp, port, socket_dir=tmp)
            # The config names two instances; point both at the one we run.
            conf.write_text(conf.read_text().replace(f"{tmp}/api2.sock", f"{tmp}/api1.sock"))
            service = stack_mod.nginx_service("nginx", conf, tmp, port)
            nginx = subprocess.Popen(service.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(nginx)
            while stack_mod.probe(service.ready) is not None:
                time.sleep(0.05)
            measured += children(nginx.pid)
            address, family = ("127.0.0.1", port), socket.AF_INET
        else:
            address, family = str(sock_path), socket.AF_UNIX
        conns = []
        for _ in range(args.conns):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.connect(address)
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append((s, bytearray()))
        payloads = [request_bytes("localhost") for _ in range(args.requests)]
        # Warm up (imports, first allocations) outside the measurement.
        for s, pending in conns[:4]:
            s.sendall(request_bytes("localhost"))
            read_response(s, pending)
        if args.profile and args.perf:
            spy = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", str(worker), "-o", args.profile],
                                   stdout=subprocess.DEVNULL, stderr=open(args.profile + ".log", "wb"))
            procs.append(spy)
            time.sleep(1.0)
        elif args.profile:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(worker), "--rate", "1000", "--format", "raw",
                                    "--output", args.profile, "--nonblocking"], stdout=subprocess.DEVNULL,
                                   stderr=open(args.profile + ".log", "wb"))
            procs.append(spy)
            time.sleep(1.0)
        cpu0 = {pid: cpu_seconds(pid) for pid in measured}
        system0 = cpu_seconds(worker, slice(12, 13))
        wall0 = time.perf_counter()
        statuses: dict[int, int] = {}
        sent = 0
        burst_walls = []
        while sent < args.requests:
            n = min(args.burst, args.requests - sent)
            batch = random.sample(conns, n)
            t0 = time.perf_counter()
            for (s, _), payload in zip(batch, payloads[sent:sent + n]):
                s.sendall(payload)
            for s, pending in batch:
                status = read_response(s, pending)
                statuses[status] = statuses.get(status, 0) + 1
            burst_walls.append(time.perf_counter() - t0)
            sent += n
        wall = time.perf_counter() - wall0
        cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in measured}
        system = cpu_seconds(worker, slice(12, 13)) - system0
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        burst_walls.sort()
        worker_us = cpu[worker] / sent * 1e6
        nginx_us = sum(v for p, v in cpu.items() if p != worker) / sent * 1e6
        print(f"worker_class={args.worker_class or '(conf default)'} requests={sent} burst={args.burst} statuses={statuses}")
        print(f"worker cpu/request {worker_us:.1f} us (system {system / sent * 1e6:.1f})" + (f"  nginx cpu/request {nginx_us:.1f} us" if args.nginx else ""))
        print(f"wall {wall:.2f} s; burst wall p50 {burst_walls[len(burst_walls) // 2] * 1e3:.2f} ms"
              f" p99 {burst_walls[int(len(burst_walls) * 0.99)] * 1e3:.2f} ms")
        for s, _ in conns:
            s.close()
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                # gunicorn and nginx lead their own sessions: stop each whole group.
                kill = (lambda sig: os.killpg(p.pid, sig)) if p is not spy else p.send_signal
                try:
                    kill(signal.SIGTERM)
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    kill(signal.SIGKILL)
                    p.wait()
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
