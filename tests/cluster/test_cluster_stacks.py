"""Two `bruto-stack up` side by side on one BRUTO_DATABASE_URL are one payment system.

What README.md ("Two hosts on one database") tells a user to run: each stack
its own run directory, shared directory and port, the database URL and the
two processors in common. Each stack is the whole local topology (balancer,
two instances, dispatcher and its standby, supervisor), as `bruto-stack`
starts it.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from gateway import free_port
from test_cluster_hosts import Load
from test_cluster_hosts import assert_each_stored_once
from test_cluster_hosts import post_alternated_and_shared
from test_cluster_hosts import stored
from test_cluster_hosts import wait_converged

from bruto.testbed.stack import cli

pytestmark = pytest.mark.slow  # real processes


class Stack:
    """One `bruto-stack` host, driven as the cluster tests drive a host."""

    def __init__(self, tmp_path, name: str, processors):
        port = free_port()
        self.run_dir = tmp_path / name
        self.url = f"http://127.0.0.1:{port}"
        self.args = ["--run-dir", str(self.run_dir), "--shm-dir", f"/dev/shm/bruto-test-{uuid.uuid4().hex[:8]}",
                     "--port", str(port), "--default-url", processors.default.url,
                     "--fallback-url", processors.fallback.url]
        self.http = requests.Session()

    def pay(self, correlation_id) -> requests.Response:
        return self.http.post(self.url + "/payments", data='{"correlationId":"%s","amount":19.90}' % correlation_id,
                              headers={"Content-Type": "application/json"}, timeout=5)

    def log(self, name: str) -> str:
        """The tail of the log of a service (a dispatcher's, whatever its number)."""
        path = self.run_dir / ("dispatcher.log" if name.startswith("dispatcher") else f"{name}.log")
        return path.read_text(errors="replace")[-4000:] if path.exists() else f"(no {path})"


def test_two_stacks_on_one_database_give_one_summary_store_once_and_converge_after_postgres_stops(
        tmp_path, clean_processors, postgres, database_url, monkeypatch):
    monkeypatch.setenv("BRUTO_DATABASE_URL", database_url)  # bruto-stack passes its environment through
    monkeypatch.setenv("BRUTO_LOG_LEVEL", "warning")
    hosts = [Stack(tmp_path, name, clean_processors) for name in ("a", "b")]
    try:
        for host in hosts:
            assert cli.main(["up"] + host.args) == 0
        post_alternated_and_shared(hosts, clean_processors, alternated=200, shared=100)

        # PostgreSQL stopped for 5 s under load, then started: nothing lost or doubled, no operator action.
        with Load(hosts, 1000) as load:
            while load.sent() < 200:
                time.sleep(0.05)
            postgres.stop("fast")
            time.sleep(5.0)
            postgres.start_again()
        assert load.statuses == [202] * 1000  # POST never waits for the database
        wait_converged(hosts, clean_processors, 1300, timeout=90)
        assert stored(clean_processors) == 1300
        assert_each_stored_once(clean_processors, load.ids)
    finally:
        for host in hosts:
            cli.main(["down", "--force"] + host.args)
