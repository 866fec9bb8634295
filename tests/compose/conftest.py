"""The compose files started with real Docker, as the judge starts them: `make test-compose`.

Not part of `make test` (pyproject.toml ignores this directory unless it is
named): these need a Docker engine, compose v2 and the images
tools/build_images.sh builds; `make test-compose` sets all three up the way
docs/CONTAINERS.md does, and .ci/run calls it.

Every test runs its own compose projects beside anything already running:
project names, the processors' network and container names, and every host
port come from this session (the compose files' variables, unset for the
judge), so a stack on 9999/8001/8002/9090 is left alone.

- `processors` (session): docker-compose.processors.yml up, two emulators
  reached as `processors.default` / `.fallback` (control.Emulator).
- `compose_stack` (function): a factory `compose_stack(*profiles)` that runs
  `docker compose up -d` of docker-compose.yml, waits until it answers a
  summary and a purge, and returns a `ComposeStack`; everything it started is
  removed with `down -v` when the test ends.
- `compose_cluster` (function): a factory that runs `docker compose up -d` of
  docker-compose.cluster.yml (two hosts on PostgreSQL behind one balancer),
  waits until the balancer and each host answer a summary and a purge, and
  returns a `ComposeCluster`; removed with `down -v` when the test ends.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from gateway import free_port

from bruto.testbed.bench.compose import PROCESSORS_FILE
from bruto.testbed.bench.compose import PRODUCT_FILE
from bruto.testbed.bench.compose import Compose
from bruto.testbed.bench.compose import wait_ready
from bruto.testbed.emulator.control import Emulator
from bruto.testbed.emulator.control import Processors

REPO = Path(__file__).resolve().parents[2]
PROJECT = f"bruto-test-{uuid.uuid4().hex[:8]}"
CLUSTER_FILE = "docker-compose.cluster.yml"
# What tools/build_images.sh --cluster makes (`make test-compose` runs it).
CLUSTER_IMAGES = ("bruto-cluster:latest", "postgres:15", "nginx:1.22")
HOSTS = ("a", "b")


@pytest.fixture(scope="session")
def compose_env(tmp_path_factory) -> dict[str, str]:
    """The compose files' variables for this session: its own ports, network and container names."""
    found = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(f"no Docker engine answers ({found.stderr.strip()}): run these through `make test-compose`")
    for image in ("bruto:latest", "bruto-emulator:latest"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            pytest.fail(f"no image {image}: tools/build_images.sh builds it (`make test-compose` runs it)")
    return {
        "BRUTO_PORT": str(free_port()),
        # docker-compose.cluster.yml's hosts, each published on 127.0.0.1.
        **{f"BRUTO_HOST_{host.upper()}_PORT": str(free_port()) for host in HOSTS},
        "BRUTO_PROMETHEUS_PORT": str(free_port()),
        "PROCESSOR_DEFAULT_PORT": str(free_port()),
        "PROCESSOR_FALLBACK_PORT": str(free_port()),
        "BRUTO_PROCESSOR_NETWORK": f"{PROJECT}-payment-processor",
        "PROCESSOR_CONTAINER_PREFIX": f"{PROJECT}-",
    }


@pytest.fixture(scope="session")
def compose_log(tmp_path_factory) -> Path:
    """Every docker command's output, for the failure messages (Compose.run names it)."""
    return tmp_path_factory.mktemp("compose") / "compose.log"


@pytest.fixture(scope="session")
def processors(compose_env, compose_log):
    project = Compose(REPO, PROCESSORS_FILE, compose_log, project=f"{PROJECT}-processors", env=compose_env)
    try:
        project.run("up", "-d")
        pair = Processors(Emulator.at(f"http://127.0.0.1:{compose_env['PROCESSOR_DEFAULT_PORT']}", "0.05"),
                          Emulator.at(f"http://127.0.0.1:{compose_env['PROCESSOR_FALLBACK_PORT']}", "0.15"))
        wait_answering(pair)
        yield pair
    finally:
        problems = project.down()
        assert problems == [], problems


def wait_answering(pair: Processors, timeout_s: float = 60.0) -> None:
    """Until both emulators answer their admin API (a bound, not a measure)."""
    deadline = time.monotonic() + timeout_s
    for emulator in (pair.default, pair.fallback):
        while True:
            try:
                emulator.admin_summary()
                break
            except OSError:
                assert time.monotonic() < deadline, f"{emulator.url} did not answer within {timeout_s:.0f} s"
                time.sleep(0.25)


@dataclasses.dataclass
class ComposeStack:
    """docker-compose.yml up under this session's project: its URL, its containers, the project."""

    url: str
    project: Compose
    profiles: tuple[str, ...]

    def containers(self) -> dict[str, str]:
        return self.project.containers()

    def run(self, *args: str, capture: bool = False) -> str:
        return self.project.run(*self.profile_args(), *args, capture=capture)

    def profile_args(self) -> list[str]:
        return [arg for profile in self.profiles for arg in ("--profile", profile)]


@pytest.fixture
def compose_stack(compose_env, compose_log, processors):
    started: list[ComposeStack] = []

    def start(*profiles: str) -> ComposeStack:
        processors.reset()
        stack = ComposeStack(f"http://127.0.0.1:{compose_env['BRUTO_PORT']}",
                             Compose(REPO, PRODUCT_FILE, compose_log, project=PROJECT, env=compose_env), profiles)
        started.append(stack)
        stack.run("up", "-d")
        wait_ready(stack.url)
        return stack

    yield start
    for stack in started:
        # With its profiles, so that down removes their services' containers too.
        problems = []
        try:
            stack.run("down", "-v", "--timeout", "10")
        except Exception as error:  # noqa: BLE001 - reported below, after every stack was tried
            problems.append(str(error))
        assert problems == [], problems


@dataclasses.dataclass
class ComposeCluster:
    """docker-compose.cluster.yml up under this session's project: the balancer's URL, each host's, the project."""

    url: str
    hosts: dict[str, str]
    project: Compose

    def containers(self) -> dict[str, str]:
        return self.project.containers()

    def run(self, *args: str, capture: bool = False) -> str:
        return self.project.run(*args, capture=capture)

    def shared_memory(self, host: str) -> dict:
        """``bruto-shm --json`` inside the host's dispatcher container: what its shared memory holds."""
        return json.loads(self.run("exec", "-T", f"host-{host}-dispatcher", "bruto-shm", "--json", capture=True))

    def sql(self, statement: str) -> list[str]:
        """The rows of one statement in the cluster's database (psql inside its container), one string each."""
        out = self.run("exec", "-T", "postgres", "psql", "-U", "bruto", "-d", "bruto", "-At", "-v", "ON_ERROR_STOP=1",
                       "-c", statement, capture=True)
        return out.splitlines()


@pytest.fixture
def compose_cluster(compose_env, compose_log, processors):
    for image in CLUSTER_IMAGES:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            pytest.fail(f"no image {image}: tools/build_images.sh --cluster makes it (`make test-compose` runs it)")
    started: list[ComposeCluster] = []

    def start() -> ComposeCluster:
        processors.reset()
        cluster = ComposeCluster(
            f"http://127.0.0.1:{compose_env['BRUTO_PORT']}",
            {host: f"http://127.0.0.1:{compose_env[f'BRUTO_HOST_{host.upper()}_PORT']}" for host in HOSTS},
            Compose(REPO, CLUSTER_FILE, compose_log, project=f"{PROJECT}-cluster", env=compose_env))
        started.append(cluster)
        cluster.run("up", "-d")
        # Each host on its own first: a summary needs PostgreSQL up and the schema made.
        for url in (*cluster.hosts.values(), cluster.url):
            wait_ready(url)
        return cluster

    yield start
    problems = [problem for cluster in started for problem in cluster.project.down()]
    assert problems == [], problems
