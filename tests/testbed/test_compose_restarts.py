"""What compose does when a container dies: docker-compose.yml's restart policies (the figures of a real
kill under load: ``bruto-compose-faults``, docs/RELIABILITY.md)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
BRUTO = [name for name, service in COMPOSE["services"].items() if not service.get("profiles")]


def test_every_bruto_container_comes_back_after_a_crash():
    assert set(BRUTO) == {"balancer", "api1", "api2", "dispatcher"}
    for name in BRUTO:
        assert COMPOSE["services"][name].get("restart") == "unless-stopped", name


def test_no_container_has_a_health_check():
    # Each check is a `docker exec` on the cores the test measures (docs/BENCHMARKS.md, the compose stack).
    for name in BRUTO:
        assert "healthcheck" not in COMPOSE["services"][name], name

