"""The compose files can be started as written: every `depends_on` names a service that will run and a
condition that service can meet (a `service_healthy` on a service without a health check never is,
as the `metrics` profile once had)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[2]
COMPOSE_FILES = sorted(path.name for path in REPO.glob("docker-compose*.yml"))


def dependencies(service: dict) -> dict[str, str]:
    """``{dependency: condition}`` of a service, whichever of compose's two forms its depends_on uses."""
    found = service.get("depends_on") or {}
    if isinstance(found, list):
        return {name: "service_started" for name in found}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in found.items()}


def unmet(services: dict) -> list[str]:
    """Why each `depends_on` of a compose file's services could not be met; empty if all can be."""
    problems = []
    for name, service in services.items():
        for dependency, condition in dependencies(service).items():
            other = services.get(dependency)
            where = f"{name} depends on {dependency} ({condition})"
            if other is None:
                problems.append(f"{where}: no such service")
                continue
            theirs, ours = set(other.get("profiles", [])), set(service.get("profiles", []))
            if theirs and not theirs & ours:
                problems.append(f"{where}: {dependency} runs only under the profiles {sorted(theirs)}")
            check = other.get("healthcheck") or {}
            if condition == "service_healthy" and (not check or check.get("disable")):
                problems.append(f"{where}: {dependency} has no health check, so it is never healthy")
            elif condition == "service_completed_successfully" and other.get("restart", "no") not in ("no", "on-failure"):
                problems.append(f"{where}: {dependency} restarts ({other['restart']}), so it never completes")
            elif condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                problems.append(f"{where}: unknown condition")
    return problems


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_every_depends_on_of_the_compose_files_can_be_met(file):
    services = yaml.safe_load((REPO / file).read_text())["services"]
    assert unmet(services) == []


def test_the_compose_files_are_the_two_documented():
    assert COMPOSE_FILES == ["docker-compose.processors.yml", "docker-compose.yml"]


def test_an_unmet_condition_is_found():
    """The check itself: the profile's old depends_on (healthy, with no health check) and its other failures."""
    services = {
        "balancer": {"restart": "unless-stopped"},
        "prometheus": {"profiles": ["metrics"], "depends_on": {"balancer": {"condition": "service_healthy"}}},
        "api": {"depends_on": ["prometheus", "ghost"]},
        "job": {"depends_on": {"balancer": {"condition": "service_completed_successfully"}}},
    }
    assert unmet(services) == [
        "prometheus depends on balancer (service_healthy): balancer has no health check, so it is never healthy",
        "api depends on prometheus (service_started): prometheus runs only under the profiles ['metrics']",
        "api depends on ghost (service_started): no such service",
        "job depends on balancer (service_completed_successfully): balancer restarts (unless-stopped), "
        "so it never completes",
    ]
    services["balancer"]["healthcheck"] = {"test": ["CMD", "true"]}
    services["api"]["profiles"] = ["metrics"]
    services["api"]["depends_on"] = ["prometheus"]
    del services["job"]
    assert unmet(services) == []


def as_the_judge_reads(text: str) -> dict:
    """A compose file with every ``${VAR:-default}`` at its default: what compose makes of it with nothing set."""
    return yaml.safe_load(re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text))


def test_unset_the_port_and_network_variables_leave_the_challenges_names():
    """The variables that let a second stack run beside a first (tests/compose) change nothing by default."""
    product = as_the_judge_reads((REPO / "docker-compose.yml").read_text())
    assert product["services"]["balancer"]["ports"] == ["9999:9999"]
    assert product["services"]["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert product["networks"]["payment-processor"] == {"external": True, "name": "payment-processor"}
    processors = as_the_judge_reads((REPO / "docker-compose.processors.yml").read_text())
    for name, port in (("payment-processor-default", 8001), ("payment-processor-fallback", 8002)):
        assert processors["services"][name]["container_name"] == name
        assert processors["services"][name]["ports"] == [f"127.0.0.1:{port}:8080"]
    assert processors["networks"]["payment-processor"]["name"] == "payment-processor"
