"""Benchmark: POST /payments straight into gunicorn (no load balancer) at a fixed rate.

    python tools/bench_post.py [--rate 500] [--seconds 20] [--workers 1] [--worker-class gevent] [--slow-clients N]

Starts two emulators, one gunicorn instance on a TCP port and the dispatcher
(all on a fresh shared directory), then k6 sends POST /payments at a constant
arrival rate with a fresh UUID each. Prints p50/p90/p99/max of the request
duration in milliseconds and the count of non-2XX answers, then checks that
every accepted payment reached the default processor. ``--slow-clients N``
holds N slow connections (bruto.testbed.slowloris: 60 % slow heads, 30 % slow
bodies, 10 % never reading) on the same port while k6 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from gateway import free_port  # noqa: E402

from bruto.testbed.emulator.control import Processors  # noqa: E402
from bruto.testbed.slowloris import SlowClients  # noqa: E402

# k6 cannot fetch remote modules here: the UUID is made in the script itself.
K6_SCRIPT = r"""
import http from 'k6/http';
import crypto from 'k6/crypto';

export const options = {
  discardResponseBodies: true,
  scenarios: {
    post: {
      executor: 'constant-arrival-rate',
      rate: __ENV.RATE, timeUnit: '1s', duration: __ENV.SECONDS + 's',
      preAllocatedVUs: 200, maxVUs: 1000,
    },
  },
  summaryTrendStats: ['p(50)', 'p(90)', 'p(99)', 'max', 'count'],
};

function uuid4() {
  const b = new Uint8Array(crypto.randomBytes(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export default function () {
  http.post(__ENV.TARGET + '/payments', JSON.stringify({ correlationId: uuid4(), amount: 19.90 }),
    { headers: { 'Content-Type': 'application/json' }, timeout: '1500ms' });
}

export function handleSummary(data) {
  return { [__ENV.OUT]: JSON.stringify(data) };
}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-class", default="gevent")
    parser.add_argument("--slow-clients", type=int, default=0, help="slow connections held during the run")
    args = parser.parse_args()

    processors = Processors.start()
    work = Path(tempfile.mkdtemp(prefix="bruto-bench-post-"))
    port = free_port()
    env = dict(os.environ, BRUTO_SHM_DIR=str(work / "shm"), BRUTO_BIND=f"127.0.0.1:{port}",
               BRUTO_WORKERS=str(args.workers), BRUTO_WORKER_CLASS=args.worker_class,
               BRUTO_DEFAULT_URL=processors.default.url, BRUTO_FALLBACK_URL=processors.fallback.url,
               BRUTO_LOG_LEVEL="warning")
    logs = open(work / "processes.log", "ab")
    started = [
        subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"], cwd=REPO, env=env,
                         stdout=logs, stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "-m", "bruto.dispatcher"], cwd=REPO, env=env,
                         stdout=logs, stderr=subprocess.STDOUT),
    ]
    target = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                requests.get(target + "/payments-summary", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        script = work / "post.js"
        script.write_text(K6_SCRIPT)
        out = work / "summary.json"
        n = args.slow_clients
        with SlowClients("127.0.0.1", port, heads=n * 6 // 10, bodies=n * 3 // 10, readers=n - n * 6 // 10 - n * 3 // 10):
            subprocess.run(["k6", "run", "--quiet", "--no-usage-report", "--address", "127.0.0.1:0",
                            "-e", f"RATE={args.rate}", "-e", f"SECONDS={args.seconds}", "-e", f"TARGET={target}",
                            "-e", f"OUT={out}", str(script)], check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads(out.read_text())["metrics"]
        duration = metrics["http_req_duration"]["values"]
        failed = metrics["http_req_failed"]["values"].get("passes", 0)
        print(f"POST /payments into gunicorn ({args.workers} x {args.worker_class}, {n} slow clients) at {args.rate}/s for "
              f"{args.seconds} s: {int(duration['count'])} requests, {failed} failed; "
              f"p50 {duration['p(50)']:.2f} ms, p90 {duration['p(90)']:.2f} ms, "
              f"p99 {duration['p(99)']:.2f} ms, max {duration['max']:.2f} ms")
        accepted = int(duration["count"]) - failed
        deadline = time.monotonic() + 30
        while processors.default.admin_summary()["totalRequests"] < accepted and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"default processor holds {processors.default.admin_summary()['totalRequests']} "
              f"of {accepted} accepted payments")
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=10)
        processors.stop()


if __name__ == "__main__":
    main()
