"""Durability on the process stack: BRUTO_SHM_DIR on a disk filesystem, everything stopped, then started.

What was accepted is sent after the restart, once; what was confirmed stays
as it was: the summary of every window that closed before the stop is the
same number after the start.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import requests
from gateway import free_port
from test_stack import get_json
from test_stack import recorded
from test_supervision import wait_until

from bruto.shm import snapshot
from bruto.testbed.stack import cli

pytestmark = pytest.mark.slow  # real processes


def filesystem_type(path: str) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts (the longest mount point above it)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int(t % 1 * 1000)


def test_stop_everything_then_start_loses_nothing_and_changes_no_summary(tmp_path, clean_processors):
    shm_dir = str(tmp_path / "shm")
    assert filesystem_type(str(tmp_path)) not in ("tmpfs", "ramfs", ""), "this test needs a disk under tmp_path"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--run-dir", str(tmp_path / "run"), "--shm-dir", shm_dir, "--port", str(port),
            "--default-url", clean_processors.default.url, "--fallback-url", clean_processors.fallback.url]
    http = requests.Session()

    def pay(n: int) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(n)]
        for correlation_id in ids:
            answer = http.post(f"{base}/payments", timeout=10,
                               data='{"correlationId":"%s","amount":19.90}' % correlation_id)
            assert answer.status_code == 202
        return ids

    def summary(window=None) -> dict:
        return get_json(f"{base}/payments-summary" + (f"?from={window[0]}&to={window[1]}" if window else ""))

    assert cli.main(["up"] + args) == 0
    try:
        confirmed = pay(30)
        wait_until(lambda: summary()["default"]["totalRequests"] == 30, what="30 payments confirmed")
        time.sleep(0.01)
        window = (iso(time.time() - 3600), iso(time.time()))
        before = summary(window)
        # Payments waiting when everything stops: both processors fail. (In flight at a stop is the
        # dispatcher-kill row of the fault matrix: the stop is a SIGTERM, no gentler.)
        clean_processors.default.set_failure(True)
        clean_processors.fallback.set_failure(True)
        waiting = pay(20)
        wait_until(lambda: snapshot.read(shm_dir)["outbox"]["in_use"] == 20, what="20 payments in the outbox")
        assert cli.main(["down"] + args) == 1  # keeps the directory: it holds accepted, unsent payments
        assert cli.unsent_payments(shm_dir) == 20
        assert os.path.isdir(shm_dir)
        assert not (tmp_path / "run" / "state.json").exists()

        assert cli.main(["up"] + args) == 0
        assert summary(window) == before
        clean_processors.default.set_failure(False)
        clean_processors.fallback.set_failure(False)
        wait_until(lambda: summary()["default"]["totalRequests"] == 50, what="the 20 waiting ones sent")
        assert summary(window) == before
        assert clean_processors.default.admin_summary()["totalRequests"] == 50
        assert clean_processors.fallback.admin_summary()["totalRequests"] == 0
        assert summary()["default"]["totalAmount"] == pytest.approx(50 * 19.90)
        for correlation_id in confirmed + waiting:
            assert clean_processors.default.get_payment(correlation_id) is not None
        assert all(p["name"] != "emulator-default" for p in recorded(tmp_path / "run")["processes"])
    finally:
        code = cli.main(["down"] + args)
    assert code == 0 and not os.path.exists(shm_dir)
