"""The services of the stack: what each runs, how it is confined, how to tell it is ready.

The topology is the compose file's: a load balancer on :9999
(``bruto.balancer``, or nginx with ``--balancer nginx``) in front of two
gunicorn instances on unix sockets, one dispatcher, and (unless processor URLs
are given) two processor emulators, default on 8001 and fallback on 8002.
On request, a Prometheus (Debian's ``prometheus``) scrapes GET /metrics
through the balancer, as the compose file's ``metrics`` profile does.
Every bruto process runs from this Python (``python -m``), so the stack works
from a virtual environment that is not on PATH.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from bruto.testbed.stack.runner import Service
from bruto.testbed.stack.runner import StackError

HERE = Path(__file__).resolve().parent
NGINX_CONF = HERE / "nginx.conf"
ADMIN_TOKEN = "123"


# (CPUs, MB) per service, as docker-compose.yml's `deploy.resources.limits`
# say: the compose file is where the split is decided and explained, and
# tests/testbed/test_stack.py fails when the two disagree.
SERVICE_LIMITS = {
    "balancer": (0.20, 30),
    "api1": (0.45, 100),
    "api2": (0.45, 100),
    "dispatcher": (0.40, 120),
}
# bruto.balancer hands connections to the instances; nginx proxies requests.
BALANCERS = ("bruto", "nginx")


def emulator_services(default_port: int = 8001, fallback_port: int = 8002,
                      fees: tuple[str, str] = ("0.05", "0.15")) -> list[Service]:
    """The two processor emulators (never confined: they are the test's, not bruto's), with their fees."""
    services = []
    for name, port, fee in (("default", default_port, fees[0]), ("fallback", fallback_port, fees[1])):
        url = f"http://127.0.0.1:{port}"
        services.append(
            Service(
                name=f"emulator-{name}",
                argv=[sys.executable, "-m", "bruto.testbed.emulator.server",
                      "--host", "127.0.0.1", "--port", str(port), "--fee", fee],
                env={},
                ready=("http", f"{url}/admin/payments-summary", {"X-Rinha-Token": ADMIN_TOKEN}),
                limited=False,
            )
        )
    return services


def bruto_services(
    run_dir: Path,
    shm_dir: str,
    default_url: str,
    fallback_url: str,
    port: int = 9999,
    workers: int = 1,
    balancer: str = "bruto",
    standby: bool = False,
) -> list[Service]:
    """Dispatcher, two API instances on unix sockets, then the balancer, in start order.

    With ``standby``, a second dispatcher right after the first: it waits on
    the shared directory's dispatcher lock and takes over the moment the
    active one dies (bruto.dispatcher.service), confined with it (one cgroup,
    the dispatcher's limits).
    """
    env = {
        "BRUTO_SHM_DIR": shm_dir,
        "BRUTO_DEFAULT_URL": default_url,
        "BRUTO_FALLBACK_URL": fallback_url,
        "BRUTO_WORKERS": str(workers),
    }
    services = [
        Service("dispatcher", [sys.executable, "-m", "bruto.dispatcher"], dict(env), ready=("alive", 1.0)),
    ]
    if standby:
        services.append(Service("dispatcher-standby", [sys.executable, "-m", "bruto.dispatcher"], dict(env),
                                ready=("alive", 0.5), cgroup="dispatcher"))
    for name in ("api1", "api2"):
        sock = run_dir / f"{name}.sock"
        services.append(
            Service(
                name,
                [sys.executable, "-m", "gunicorn", "-c", "python:bruto.gateway.gunicorn_conf"],
                dict(env, BRUTO_BIND=f"unix:{sock}"),
                ready=("unix", str(sock), "/payments-summary"),
            )
        )
    # NOTE: the balancer starts last, once the sockets answer: nginx would mark
    # an instance dead for 10 s if it sent it traffic before its socket exists, and
    # bruto's balancer would close the clients it could not hand over.
    if balancer == "nginx":
        conf = render_nginx_conf(NGINX_CONF, run_dir, port, socket_dir=run_dir)
        services.append(nginx_service("balancer", conf, run_dir, port))
    else:
        services.append(Service(
            "balancer",
            [sys.executable, "-m", "bruto.balancer", "--bind", f"127.0.0.1:{port}", "--channels", str(workers),
             str(run_dir / "api1.sock"), str(run_dir / "api2.sock")],
            {},
            ready=("http", f"http://127.0.0.1:{port}/payments-summary", {}),
        ))
    return services


def prometheus_service(run_dir: Path, bruto_port: int, port: int, interval_s: float = 5.0) -> Service:
    """Prometheus scraping bruto's GET /metrics through the balancer on ``bruto_port``.

    Never confined: it watches bruto, it is not part of what the challenge
    limits. Its data (a TSDB) stays in the run directory.

    Args:
        run_dir: Where its config and data go.
        bruto_port: The balancer's port.
        port: Where its own HTTP API and UI listen (127.0.0.1).
        interval_s: Scrape interval.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "prometheus.yml"
    conf.write_text(yaml.safe_dump(prometheus_config(f"127.0.0.1:{bruto_port}", interval_s), sort_keys=False))
    return Service(
        "prometheus",
        ["prometheus", f"--config.file={conf}", f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        {},
        ready=("http", f"http://127.0.0.1:{port}/-/ready", {}),
        limited=False,
    )


def prometheus_config(target: str, interval_s: float = 5.0) -> dict:
    """A Prometheus config with one job, ``bruto``, scraping ``target`` (host:port); conf/prometheus.yml's shape."""
    interval = f"{interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": "bruto",
            "metrics_path": "/metrics",
            "scrape_timeout": f"{min(interval_s, 2.0):g}s",
            "static_configs": [{"targets": [target]}],
        }],
    }


def nginx_service(name: str, conf: Path, run_dir: Path, port: int) -> Service:
    """nginx in the foreground, its pid file and error log in the run directory."""
    error_log = run_dir / f"{name}-error.log"
    directives = f"daemon off; pid {run_dir / name}.pid; error_log {error_log} warn;"
    if os.geteuid() == 0:
        # NOTE: started by root, nginx runs its worker as 'nobody', which cannot
        # reach sockets under a private directory (pytest's tmp, mkdtemp). The
        # worker keeps the starting user instead; this is a local stack on
        # 127.0.0.1, and the compose file runs nginx its own way.
        directives += " user root;"
    return Service(
        name,
        ["nginx", "-p", str(run_dir), "-c", str(conf), "-g", directives],
        {},
        ready=("http", f"http://127.0.0.1:{port}/payments-summary", {}),
        extra_logs=[str(error_log)],
    )


def render_nginx_conf(template: Path, run_dir: Path, port: int, socket_dir: Path | None = None) -> Path:
    """Write a copy of an nginx config with the listen port and socket directory replaced.

    Args:
        template: bruto/testbed/stack/nginx.conf or bruto/testbed/bench/nginx-floor.conf.
        run_dir: Where the copy is written.
        port: The port to listen on.
        socket_dir: Replaces ``/run/bruto/`` (the compose file's shared volume).

    Returns:
        The path of the copy.

    Raises:
        StackError: If the template no longer has what is replaced.
    """
    text = template.read_text()
    listens = [line for line in text.splitlines() if line.strip().startswith("listen ")]
    if len(listens) != 1:
        raise StackError(f"{template}: expected one 'listen' line, found {len(listens)}")
    old_port = listens[0].split()[1].rstrip(";")
    text = text.replace(listens[0], listens[0].replace(old_port, str(port), 1))
    if socket_dir is not None:
        if "/run/bruto/" not in text:
            raise StackError(f"{template}: no /run/bruto/ socket path to rewrite")
        text = text.replace("/run/bruto/", f"{socket_dir}/")
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / template.name
    out.write_text(text)
    return out
