"""Instructions per idle request of the whole gunicorn worker, under callgrind.

    python tools/callgrind_idle.py [--src CHECKOUT] [--requests 300,3300] [--interval-ms 20] [--keep DIR]

tools/callgrind_post.py counts the protocol and the app alone; this counts
everything the worker process executes while it serves POST /payments that
each find it asleep (one keep-alive connection, a request every
``--interval-ms``): the gevent loop's wake-up, the transport, the protocol,
the app, intake, the watcher's ticks. The worker runs under callgrind for the
whole of its life, once per request count, and the difference between the two
runs' totals over the difference of their counts is the cost of one request
(start-up and imports cancel out; PYTHONHASHSEED=0 keeps them equal).

``--src``: another checkout to measure (put first on PYTHONPATH), e.g. a
``git worktree`` of an older revision. Needs valgrind. Slow (valgrind runs
Python ~50x slower), but a count, not a timing: it may run beside other work.
``--keep``: leave callgrind's files there, for callgrind_annotate.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(connection: socket.socket) -> None:
    body = b'{"correlationId":"%s","amount":19.90}' % str(uuid.uuid4()).encode()
    connection.sendall(b"POST /payments HTTP/1.1\r\nHost: localhost:9999\r\nUser-Agent: k6/1.1.0\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = connection.recv(4096)
        if not chunk:
            raise RuntimeError("the worker closed the connection")
        answer += chunk
    if not answer.startswith(b"HTTP/1.1 202"):
        raise RuntimeError(f"unexpected answer: {answer[:80]!r}")


def worker_instructions(src: Path, requests: int, interval_s: float, out_dir: Path) -> int:
    """The instructions the worker process executed in a life that served ``requests`` POSTs."""
    port = free_port()
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="bruto-cg-") as shm_dir:
        env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0", BRUTO_SHM_DIR=shm_dir,
                   BRUTO_BIND=f"127.0.0.1:{port}", BRUTO_WORKERS="1", BRUTO_LOG_LEVEL="warning")
        log = out_dir / f"valgrind-{requests}.log"
        with log.open("w") as sink:
            master = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p.out",
                 sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"],
                env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
                    post(connection)  # answered: the worker is up
                    break
                except OSError:
                    if time.monotonic() > deadline or master.poll() is not None:
                        raise RuntimeError(f"the worker never answered; see {log}") from None
                    time.sleep(1)
            with connection:
                for _ in range(requests - 1):
                    time.sleep(interval_s)
                    post(connection)
        finally:
            master.terminate()
            master.wait(120)
    found = [(int(pid), int(n.replace(",", ""))) for pid, n in
             re.findall(r"==(\d+)== Collected : ([\d,]+)", log.read_text())]
    if len(found) != 2:
        raise RuntimeError(f"expected the master's and the worker's totals in {log}, found {found}")
    return max(found)[1]  # the worker was forked after the master: the larger PID


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--requests", default="300,3300", help="the two request counts")
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--keep", type=Path, help="keep callgrind's files in this directory")
    args = parser.parse_args()
    low, high = (int(n) for n in args.requests.split(","))
    with tempfile.TemporaryDirectory(prefix="bruto-cg-out-") as scratch:
        out = args.keep or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        counts = [worker_instructions(args.src.resolve(), n, args.interval_ms / 1000, out) for n in (low, high)]
    print(f"{args.src}: worker {counts[0]:,} instructions for {low} requests, {counts[1]:,} for {high}: "
          f"{(counts[1] - counts[0]) / (high - low):,.0f} per idle request")


if __name__ == "__main__":
    main()
