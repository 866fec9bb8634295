"""Benchmark: the dispatcher's CPU per payment, and what the HTTP client costs of it.

    python tools/bench_dispatcher.py [--payments 5000]

Starts one emulator (delay 0), then in this process (gevent-patched):
1. the CPU cost of one POST /payments through `requests.Session.post`,
   through the urllib3 pool the session's adapter holds, and through
   `ProcessorClient.pay` (bruto's own transport, whatever it is now),
   16 greenlets sending concurrently;
2. a real `Dispatcher` over a fresh shared directory draining N pre-filled
   intake records to the emulator: CPU microseconds per payment and payments
   per second of wall time.
CPU is this process's (time.process_time), so the emulator's work is not in it.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import urllib3  # noqa: E402

from bruto.config import Settings  # noqa: E402
from bruto.dispatcher.processor import ProcessorClient  # noqa: E402
from bruto.dispatcher.processor import make_session  # noqa: E402
from bruto.dispatcher.service import Dispatcher  # noqa: E402
from bruto.shm.intake import IntakeWriter  # noqa: E402
from bruto.shm.layout import create_all  # noqa: E402
from bruto.testbed.emulator.control import Emulator  # noqa: E402
from bruto.timefmt import now_us  # noqa: E402


def _body() -> bytes:
    return (b'{"correlationId":"%s","amount":19.90,"requestedAt":"2025-07-15T12:34:56.000Z"}'
            % str(uuid.uuid4()).encode())


def client_cost(url: str, calls: int = 2000) -> dict[str, float]:
    session = make_session(64)
    pool = session.get_adapter(url).poolmanager.connection_from_url(url)
    headers = {"Content-Type": "application/json"}

    def via_session():
        return session.post(url + "/payments", data=_body(), headers=headers, timeout=(1, 7)).status_code

    def via_pool():
        body = _body()
        return pool.urlopen("POST", "/payments", body=body, retries=False, redirect=False,
                            headers={**headers, "Content-Length": str(len(body))},
                            timeout=urllib3.Timeout(connect=1, read=7)).status

    client = ProcessorClient(url, session)

    def via_client():
        return client.pay(uuid.uuid4().bytes, 1990, 1_752_582_896_000_000, 7.0)

    costs = {}
    for name, call in (("requests.Session.post", via_session), ("urllib3 pool.urlopen", via_pool),
                       ("ProcessorClient.pay", via_client)):
        for _ in range(100):
            call()  # warm the connections
        started = time.process_time()
        gevent.joinall([gevent.spawn(lambda: [call() for _ in range(calls // 16)]) for _ in range(16)])
        costs[name] = (time.process_time() - started) / calls * 1e6
    return costs


def dispatcher_cost(url: str, payments: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="bruto-bench-") as shm_dir:
        return _drain(Settings(shm_dir=shm_dir, default_url=url, fallback_url=url, intake_slots=1), payments)


def _drain(settings: Settings, payments: int) -> tuple[float, float]:
    create_all(settings)
    writer = IntakeWriter.claim(settings)
    dispatcher = Dispatcher(settings)
    dispatcher.recover()
    for _ in range(payments):
        writer.append(uuid.uuid4().bytes, 1990, now_us())
    cpu, wall = time.process_time(), time.perf_counter()
    while dispatcher.outbox.stored < payments:
        dispatcher.step()
        gevent.sleep(0.001)
    return (time.process_time() - cpu) / payments * 1e6, payments / (time.perf_counter() - wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5000)
    args = parser.parse_args()
    emulator = Emulator.start("0.05")
    try:
        for name, cost in client_cost(emulator.url).items():
            print(f"{name}: {cost:.0f} us CPU per payment POST")
        emulator.purge()
        per_payment, rate = dispatcher_cost(emulator.url, args.payments)
        print(f"dispatcher: {per_payment:.0f} us CPU per payment, {rate:.0f} payments/s "
              f"({args.payments} payments, delay 0)")
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
