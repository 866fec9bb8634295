"""Fixtures of the testbed tests."""

from __future__ import annotations

import uuid

import pytest
from gateway import free_port

from bruto.testbed.stack import cli


@pytest.fixture
def stack_args(tmp_path):
    port, default_port, fallback_port = free_port(), free_port(), free_port()
    shm_dir = f"/dev/shm/bruto-test-{uuid.uuid4().hex[:8]}"
    args = [
        "--run-dir", str(tmp_path / "run"),
        "--shm-dir", shm_dir,
        "--port", str(port),
        "--emulator-ports", f"{default_port},{fallback_port}",
    ]
    info = {
        "args": args,
        "run_dir": tmp_path / "run",
        "shm_dir": shm_dir,
        "base_url": f"http://127.0.0.1:{port}",
        "processors": {
            "default": f"http://127.0.0.1:{default_port}",
            "fallback": f"http://127.0.0.1:{fallback_port}",
        },
    }
    yield info
    # Whatever the test did, nothing it started outlives it, not even payments it left unsent.
    cli.main(["down", "--force"] + args)
