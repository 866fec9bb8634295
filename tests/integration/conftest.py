"""Fixtures of the integration tests: a real gateway on the session's processors."""

from __future__ import annotations

import pytest
from gateway import Gateway


@pytest.fixture
def gateway(tmp_path, clean_processors):
    """gunicorn with two workers and a dispatcher, on a fresh shared directory; stopped after the test."""
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    try:
        yield gw
    finally:
        gw.stop()
