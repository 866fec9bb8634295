"""Fixtures of the cluster's tests: hosts on the session's PostgreSQL and processors."""

from __future__ import annotations

import pytest
from gateway import Gateway


@pytest.fixture
def two_hosts(tmp_path, clean_processors, database_url):
    """Two bruto hosts (gunicorn + dispatcher each, their own shared directory) on one fresh database."""
    hosts = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            hosts.append(Gateway.start(tmp_path / name, clean_processors, workers=1, database_url=database_url))
        yield hosts
    finally:
        for host in hosts:
            host.stop()
