"""The dispatcher under the processors' failures, on real processes.

Time is compressed: the official stages last 10 s each, here a few seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from gateway import Gateway
from gateway import iso

pytestmark = pytest.mark.slow  # real processes


class Load:
    """Background payments at a steady rate from a few threads; remembers what was accepted."""

    def __init__(self, gateway: Gateway, rate: float = 150.0, threads: int = 8):
        self.gateway = gateway
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._interval = threads / rate
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            correlation_id = str(uuid.uuid4())
            try:
                response = session.post(self.gateway.url + "/payments", timeout=5,
                                        data='{"correlationId":"%s","amount":19.90}' % correlation_id)
                if response.status_code == 202:
                    with self._lock:
                        self.accepted.append(correlation_id)
            except requests.RequestException:
                pass
            self._stop.wait(self._interval)


def inconsistency(gateway: Gateway, processors) -> int:
    """The official probe: |Δdefault + Δfallback| over now-15 s .. now-1.5 s, asked concurrently."""
    now = time.time()
    window = (iso(now - 15), iso(now - 1.5))
    with ThreadPoolExecutor(3) as pool:
        ours = pool.submit(gateway.summary, *window)
        default = pool.submit(processors.default.admin_summary, *window)
        fallback = pool.submit(processors.fallback.admin_summary, *window)
        ours, default, fallback = ours.result(), default.result(), fallback.result()
    return abs((ours["default"]["totalRequests"] - default["totalRequests"])
               + (ours["fallback"]["totalRequests"] - fallback["totalRequests"]))


def assert_each_stored_once(processors, ids, only=None):
    for correlation_id in ids:
        on_default = processors.default.get_payment(correlation_id) is not None
        on_fallback = processors.fallback.get_payment(correlation_id) is not None
        assert on_default != on_fallback, (correlation_id, on_default, on_fallback)
        if only == "default":
            assert on_default, correlation_id


# (seconds from start, default delay, default failing, fallback delay, fallback failing)
OFFICIAL_STAGES = [
    (0, 0, False, 0, False),
    (3, 100, False, 0, False),
    (6, 100, True, 0, False),
    (9, 2000, True, 1000, True),
    (12, 20, False, 20, False),
    (15, 0, False, 5000, False),
]
STAGES_END = 18


def test_the_official_timeline_stays_consistent_and_pays_only_default(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    probes = []
    try:
        started = time.monotonic()
        with Load(gw) as load:
            for at, d_delay, d_failing, f_delay, f_failing in OFFICIAL_STAGES:
                time.sleep(max(0.0, started + at - time.monotonic()))
                clean_processors.default.set_delay(d_delay)
                clean_processors.default.set_failure(d_failing)
                clean_processors.fallback.set_delay(f_delay)
                clean_processors.fallback.set_failure(f_failing)
                probes.append(inconsistency(gw, clean_processors))
            while time.monotonic() < started + STAGES_END:
                time.sleep(1)
                probes.append(inconsistency(gw, clean_processors))
        gw.wait_settled(clean_processors, expected=len(load.accepted), timeout=60)
        for _ in range(3):
            probes.append(inconsistency(gw, clean_processors))

        assert probes == [0] * len(probes)
        assert clean_processors.fallback.admin_summary()["totalRequests"] == 0
        assert clean_processors.default.admin_summary()["totalRequests"] == len(load.accepted)
        assert_each_stored_once(clean_processors, load.accepted[::10], only="default")
    finally:
        gw.stop()


def test_default_down_for_good_sends_the_load_to_fallback_after_the_patience(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=1, settlement_bound_s=17)  # patience 17 × 0.10 / 0.85 = 2 s
    try:
        clean_processors.default.set_failure(True)
        ids = [str(uuid.uuid4()) for _ in range(100)]
        for correlation_id in ids:
            assert gw.pay(correlation_id).status_code == 202
        time.sleep(1)
        assert clean_processors.fallback.admin_summary()["totalRequests"] == 0  # still patient
        gw.wait_settled(clean_processors, expected=100, timeout=20)
        assert clean_processors.fallback.admin_summary()["totalRequests"] == 100
        assert_each_stored_once(clean_processors, ids)
    finally:
        gw.stop()


def test_both_down_then_both_up_loses_and_doubles_nothing(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    try:
        clean_processors.default.set_failure(True)
        clean_processors.fallback.set_failure(True)
        ids = [str(uuid.uuid4()) for _ in range(200)]
        for correlation_id in ids:
            assert gw.pay(correlation_id).status_code == 202
        time.sleep(2)
        assert clean_processors.default.admin_summary()["totalRequests"] == 0
        clean_processors.default.set_failure(False)
        clean_processors.fallback.set_failure(False)
        ours = gw.wait_settled(clean_processors, expected=200, timeout=20)
        assert ours["default"]["totalRequests"] == 200
        assert_each_stored_once(clean_processors, ids, only="default")
    finally:
        gw.stop()


def test_a_dispatcher_killed_mid_load_and_restarted_loses_and_doubles_nothing(tmp_path, clean_processors):
    clean_processors.default.set_delay(100)  # so that payments are in flight when it dies
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    try:
        with Load(gw, rate=200) as load:
            time.sleep(2)
            os.kill(gw.dispatchers[0].pid, signal.SIGKILL)
            gw.dispatchers[0].wait()
            time.sleep(0.5)
            gw.start_dispatcher()
            time.sleep(1.5)
        gw.wait_settled(clean_processors, expected=len(load.accepted), timeout=30)
        assert clean_processors.default.admin_summary()["totalRequests"] == len(load.accepted)
        assert_each_stored_once(clean_processors, load.accepted, only="default")
        assert inconsistency(gw, clean_processors) == 0
    finally:
        gw.stop()


def test_a_standby_dispatcher_takes_over_when_the_active_one_dies(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=1)
    try:
        standby = gw.start_dispatcher()
        assert gw.pay().status_code == 202
        gw.wait_settled(clean_processors, expected=1)
        os.kill(gw.dispatchers[0].pid, signal.SIGKILL)
        assert standby.poll() is None
        assert gw.pay().status_code == 202
        gw.wait_settled(clean_processors, expected=2)
    finally:
        gw.stop()


def test_health_is_polled_within_the_rate_limit_across_a_dispatcher_takeover(tmp_path, start_emulator):
    logs = {name: tmp_path / f"{name}-health.log" for name in ("default", "fallback")}
    pair = types.SimpleNamespace(
        default=start_emulator("0.05", extra_args=("--health-log", str(logs["default"]))),
        fallback=start_emulator("0.15", extra_args=("--health-log", str(logs["fallback"]))))
    gw = Gateway.start(tmp_path, pair, workers=1)
    try:
        time.sleep(0.5)
        gw.start_dispatcher()  # the candidate standing by
        time.sleep(6)
        os.kill(gw.dispatchers[0].pid, signal.SIGKILL)
        time.sleep(10)
        assert gw.pay().status_code == 202
        gw.wait_settled(pair, expected=1)
    finally:
        gw.stop()
    for name, log in logs.items():
        calls = [float(line) for line in log.read_text().split()]
        assert len(calls) >= 3, (name, calls)  # polled before and after the takeover
        gaps = [later - earlier for earlier, later in zip(calls, calls[1:])]
        assert min(gaps) >= 5.0, (name, gaps)


def test_a_purge_answered_503_while_the_dispatcher_is_stopped_never_happens(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=1, purge_timeout_s=1)
    try:
        before = [str(uuid.uuid4()) for _ in range(20)]
        for correlation_id in before:
            assert gw.pay(correlation_id).status_code == 202
        gw.wait_settled(clean_processors, expected=20)
        dispatcher = gw.dispatchers[0].pid
        os.kill(dispatcher, signal.SIGSTOP)
        try:
            response = gw.http.post(gw.url + "/purge-payments", timeout=10)
            assert response.status_code == 503, response.text
            after = [str(uuid.uuid4()) for _ in range(20)]
            for correlation_id in after:
                assert gw.pay(correlation_id).status_code == 202
        finally:
            os.kill(dispatcher, signal.SIGCONT)
        ours = gw.wait_settled(clean_processors, expected=40)
        assert ours["default"]["totalRequests"] == 40  # nothing was purged, then or later
        assert_each_stored_once(clean_processors, before + after, only="default")
        assert gw.http.post(gw.url + "/purge-payments", timeout=10).status_code == 200
        assert gw.summary()["default"]["totalRequests"] == 0
    finally:
        gw.stop()
