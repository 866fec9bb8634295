"""Shared pytest fixtures: local payment processors (bruto-emulator processes).

- `processors` (session): a default (fee 0.05) and a fallback (fee 0.15)
  emulator, started once per test session on free ports; a
  `bruto.testbed.emulator.control.Processors` with `.default` and `.fallback`, each an
  `Emulator` with `.url`, `.port`, `.pid`, `.fee`, `.token` and the helpers
  `admin_summary(from_=None, to=None)`, `admin_summary_text(...)`,
  `set_delay(ms)`, `set_failure(bool)`, `set_token(token)`, `purge()`,
  `get_payment(id)` (dict or None) and `reset()`.
  Their service-health window is 5 s, as the real processors'.
- `clean_processors` (function): the same pair, reset first (purged, delay 0,
  not failing, token 123). Use this one unless a test means to see the state
  another left.
- `start_emulator` (function): a factory `start_emulator(fee="0.05", *,
  token="123", health_window=5.0, extra_args=())` for a test that needs its own
  emulator (a short health window, a tiny concurrency limit); every emulator it
  started is stopped when the test ends.
"""

from __future__ import annotations

import pytest

from bruto.testbed.emulator.control import Emulator
from bruto.testbed.emulator.control import Processors


@pytest.fixture(scope="session")
def processors():
    """A default and a fallback emulator for the whole session, stopped by PID at the end."""
    pair = Processors.start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def clean_processors(processors):
    """The session's processors, reset to a fresh state before the test."""
    processors.reset()
    return processors


@pytest.fixture
def start_emulator():
    """Factory for emulators private to one test; all are stopped after it."""
    started: list[Emulator] = []

    def start(fee: str = "0.05", **kwargs) -> Emulator:
        emulator = Emulator.start(fee, **kwargs)
        started.append(emulator)
        return emulator

    try:
        yield start
    finally:
        for emulator in started:
            emulator.stop()


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of the test session's own, removed at the end."""
    from postgres import PostgresServer

    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database_url(postgres):
    """An empty database for one test; the server is started again if a test left it stopped."""
    if not postgres.running():
        postgres.start_again()
    return postgres.create_database()
