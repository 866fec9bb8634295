"""The product installs and runs with its own dependencies alone, as in its image.

`pip install .` into an empty virtual environment (what the Dockerfile's
product stage installs), then the gateway, the dispatcher and the balancer
start from it and serve a payment, and no testbed dependency is there.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from gateway import free_port
from gateway import terminate

pytestmark = pytest.mark.slow  # real processes, and a pip install

ROOT = Path(__file__).resolve().parents[2]
TESTBED_ONLY = ("aiohttp", "yaml", "pytest", "hypothesis")


@pytest.fixture(scope="module")
def product_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("product") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                               capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_no_testbed_dependency_is_installed(product_python):
    for module in TESTBED_ONLY:
        found = subprocess.run([str(product_python), "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is installed with the product"


def test_the_product_alone_serves_a_payment(product_python, tmp_path, clean_processors):
    processors = clean_processors
    bin_dir = product_python.parent
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "BRUTO_SHM_DIR": str(tmp_path / "shm"),
        "BRUTO_DEFAULT_URL": processors.default.url,
        "BRUTO_FALLBACK_URL": processors.fallback.url,
        "BRUTO_BIND": f"unix:{tmp_path / 'api.sock'}",
        "BRUTO_LOG_LEVEL": "warning",
    }
    port = free_port()
    started = []
    try:
        # The commands the compose file runs, from the product's environment only.
        for name, argv in [
            ("api", [str(bin_dir / "gunicorn"), "-c", "python:bruto.gateway.gunicorn_conf"]),
            ("dispatcher", [str(bin_dir / "bruto-dispatcher")]),
        ]:
            log = open(tmp_path / f"{name}.log", "wb")
            started.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 20
        while not (tmp_path / "api.sock").exists():
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            assert started[0].poll() is None, (tmp_path / "api.log").read_text()
            time.sleep(0.05)
        log = open(tmp_path / "balancer.log", "wb")
        started.append(subprocess.Popen(
            [str(bin_dir / "bruto-balancer"), "--bind", f"127.0.0.1:{port}", str(tmp_path / "api.sock")],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
        http = requests.Session()
        body = '{"correlationId":"%s","amount":19.90}' % uuid.uuid4()
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = http.post(f"http://127.0.0.1:{port}/payments", data=body, timeout=2,
                                   headers={"Content-Type": "application/json"})
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "balancer.log").read_text()
                time.sleep(0.05)
        assert answer.status_code == 202
        # The processor stores the payment before the dispatcher has its answer back:
        # wait for bruto's own summary, then check it against what the processor stored.
        deadline = time.monotonic() + 20
        while (summary := http.get(f"http://127.0.0.1:{port}/payments-summary", timeout=2).json())["default"][
                "totalRequests"] < 1:
            assert time.monotonic() < deadline, (tmp_path / "dispatcher.log").read_text()
            time.sleep(0.05)
        assert summary["default"] == {"totalRequests": 1, "totalAmount": 19.9}
        assert processors.default.admin_summary()["totalRequests"] == 1
    finally:
        for process in reversed(started):
            terminate(process)
