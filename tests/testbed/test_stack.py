"""`bruto-stack up/down`: the whole local stack as processes, a few payments through its balancer."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from gateway import free_port

from bruto.testbed.bench.run import FLOOR_CONF
from bruto.testbed.stack import cgroups
from bruto.testbed.stack import cli
from bruto.testbed.stack import runner
from bruto.testbed.stack import services

pytestmark = pytest.mark.slow  # real processes

CGROUPS_UNAVAILABLE = cgroups.unavailable_reason()
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def get_json(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def post_payment(base_url):
    body = json.dumps({"correlationId": str(uuid.uuid4()), "amount": 19.90}).encode()
    request = urllib.request.Request(
        f"{base_url}/payments", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def live_children_cmdlines():
    """Command lines of this test process's children that are still running."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.append(Path(f"/proc/{entry}/cmdline").read_bytes())
        except OSError:
            continue
    return found


def recorded(run_dir):
    return json.loads((Path(run_dir) / "state.json").read_text())


def check_payments_flow(info):
    """Five payments through the balancer; the summary ends up equal to the processors' own."""
    assert all(post_payment(info["base_url"]) == 202 for _ in range(5))
    admin = {"X-Rinha-Token": "123"}
    deadline = time.monotonic() + 15
    while True:
        ours = get_json(f"{info['base_url']}/payments-summary")
        theirs = {
            name: get_json(f"{url}/admin/payments-summary", admin)
            for name, url in info["processors"].items()
        }
        settled = ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"] == 5
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name in ("default", "fallback"):
        assert ours[name]["totalRequests"] == theirs[name]["totalRequests"]
        assert ours[name]["totalAmount"] == pytest.approx(theirs[name]["totalAmount"])
    assert ours["default"]["totalRequests"] + ours["fallback"]["totalRequests"] == 5
    assert ours["default"]["totalAmount"] + ours["fallback"]["totalAmount"] == pytest.approx(99.50)


def check_down(info, state):
    assert cli.main(["down"] + info["args"]) == 0
    for record in state["processes"]:
        assert runner.group_members(record["pid"]) == [], record["name"]
    assert not (info["run_dir"] / "state.json").exists()
    assert not os.path.exists(info["shm_dir"])


@pytest.mark.parametrize("balancer", ["bruto", pytest.param("nginx", marks=needs_nginx)])
def test_up_payments_down(stack_args, balancer):
    assert cli.main(["up", "--balancer", balancer] + stack_args["args"]) == 0
    state = recorded(stack_args["run_dir"])
    names = [p["name"] for p in state["processes"]]
    assert names == ["emulator-default", "emulator-fallback", "dispatcher", "dispatcher-standby", "api1", "api2",
                     "balancer", "supervisor"]
    assert state["processes"][-2]["argv"][:3 if balancer == "bruto" else 1] == (
        [sys.executable, "-m", "bruto.balancer"] if balancer == "bruto" else ["nginx"])
    assert state["cgroups"] == {}
    rows = {row["name"]: row for row in runner.Stack(stack_args["run_dir"]).status()}
    assert all(row["alive"] for row in rows.values())
    assert rows["balancer"]["answers"] == "ok" and rows["api1"]["answers"] == "ok"
    check_payments_flow(stack_args)
    check_down(stack_args, state)


@pytest.mark.skipif(CGROUPS_UNAVAILABLE is not None, reason=f"--limits: {CGROUPS_UNAVAILABLE}")
def test_up_with_limits(stack_args):
    assert cli.main(["up", "--limits"] + stack_args["args"]) == 0
    state = recorded(stack_args["run_dir"])
    groups = state["cgroups"]
    assert set(groups) == {"", "balancer", "api1", "api2", "dispatcher"}

    def quota(name):
        return int(Path(groups[name]["cpu"], "cpu.cfs_quota_us").read_text())

    def limit(name):
        return int(Path(groups[name]["memory"], "memory.limit_in_bytes").read_text())

    assert quota("") == 150_000 and limit("") == 350 * 2**20
    assert sum(quota(n) for n in services.SERVICE_LIMITS) == 150_000
    assert sum(limit(n) for n in services.SERVICE_LIMITS) == 350 * 2**20
    for record in state["processes"]:
        if record["name"].startswith("emulator") or record["name"] == "supervisor":
            assert not record["limited"]
            continue
        # Every process of the service, forked children included, is confined
        # (the standby dispatcher in the dispatcher's group).
        members = set(runner.group_members(record["pid"]))
        assert members and members <= set(cgroups.pids(groups[record["cgroup"]])), record["name"]
    check_payments_flow(stack_args)
    check_down(stack_args, state)
    for paths in groups.values():
        assert not any(os.path.exists(p) for p in paths.values())


def test_failed_start_names_the_service_and_shows_its_log(tmp_path):
    port = free_port()
    services = [
        runner.Service("sleeper", ["sleep", "60"], {}, ready=("alive", 0.2), limited=False),
        runner.Service(
            "broken",
            ["sh", "-c", "echo 'bind: address already in use' >&2; exit 3"],
            {},
            ready=("http", f"http://127.0.0.1:{port}/", {}),
            limited=False,
        ),
    ]
    stack = runner.Stack(tmp_path / "run", services)
    with pytest.raises(runner.StackError) as raised:
        stack.up()
    message = str(raised.value)
    assert "broken exited (3)" in message
    assert "bind: address already in use" in message
    # What had started is stopped again, and nothing is left recorded.
    assert not (tmp_path / "run" / "state.json").exists()
    sleeper_log = tmp_path / "run" / "sleeper.log"
    assert sleeper_log.exists()
    assert b"sleep\x0060\x00" not in live_children_cmdlines()


def test_service_that_never_answers_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "READY_TIMEOUT_S", 0.5)
    port = free_port()
    services = [
        runner.Service("mute", ["sleep", "60"], {}, ready=("http", f"http://127.0.0.1:{port}/", {}), limited=False)
    ]
    with pytest.raises(runner.StackError, match=r"mute did not answer within"):
        runner.Stack(tmp_path / "run", services).up()
    assert not (tmp_path / "run" / "state.json").exists()


@needs_nginx
def test_rendered_nginx_configs_are_valid(tmp_path):
    conf = services.render_nginx_conf(services.NGINX_CONF, tmp_path, 12345, socket_dir=tmp_path)
    text = conf.read_text()
    assert "listen 12345 " in text
    assert f"server unix:{tmp_path}/api1.sock;" in text and "/run/bruto/" not in text
    floor = services.render_nginx_conf(FLOOR_CONF, tmp_path, 12346)
    for path in (conf, floor):
        result = subprocess.run(
            ["nginx", "-t", "-p", str(tmp_path), "-c", str(path), "-g",
             f"pid {tmp_path}/t.pid; error_log {tmp_path}/t.log;"],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr


def test_refuses_a_port_something_else_answers(tmp_path):
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        services = [runner.Service("late", ["sleep", "60"], {}, ready=("http", url, {}), limited=False)]
        with pytest.raises(runner.StackError, match="late: .* already answers"):
            runner.Stack(tmp_path / "run", services).up()
    finally:
        server.shutdown()
        server.server_close()
    assert b"sleep\x0060\x00" not in live_children_cmdlines()


def test_limits_are_the_compose_files():
    """The stack confines each service as docker-compose.yml does, and the totals are the challenge's."""
    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    declared = {}
    for name, service in compose["services"].items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits")
        if limits:
            memory = limits["memory"]
            assert memory.endswith("MB"), f"{name}: memory limit {memory!r} in MB, please"
            declared[name] = (float(limits["cpus"]), int(memory[:-2]))
    assert declared == services.SERVICE_LIMITS
    assert round(sum(cpus for cpus, _ in declared.values()), 2) == 1.5
    assert sum(mb for _, mb in declared.values()) == 350


# Debian's prometheus: `make test` installs it, so CI runs these; a machine
# without it skips them, saying so.
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None and not os.environ.get("CI"),
    reason="Debian's prometheus is not installed (make test installs it: apt-get install prometheus)")
REPO = Path(__file__).parents[2]
DASHBOARD = REPO / "conf" / "grafana" / "bruto.json"


def prometheus_query(base_url: str, expr: str) -> list:
    """An instant query through Prometheus' HTTP API; the result's samples."""
    url = f"{base_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = get_json(url)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, with Grafana's rate window made concrete."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"].replace("$__rate_interval", "1m")
            for panel in dashboard["panels"] for target in panel["targets"]]


@needs_prometheus
def test_prometheus_scrapes_the_stack_and_bruto_shm_reads_it(stack_args):
    """A real Prometheus beside the stack gets the payments sent; so does bruto-shm, with no flag."""
    assert cli.main(["up", "--prometheus", "--prometheus-interval", "1"] + stack_args["args"]) == 0
    state = recorded(stack_args["run_dir"])
    assert [p["name"] for p in state["processes"]][-2:] == ["prometheus", "supervisor"]
    prometheus = next(p for p in state["processes"] if p["name"] == "prometheus")
    assert not prometheus["limited"]
    base_url = prometheus["ready"][1].removesuffix("/-/ready")
    check_payments_flow(stack_args)  # five payments of 19.90, confirmed

    # Prometheus scrapes every second; give it a bounded while to see the last state.
    deadline = time.monotonic() + 30
    while True:
        confirmed = prometheus_query(base_url, "sum(bruto_payments_confirmed_total)")
        accepted = prometheus_query(base_url, 'sum(bruto_http_requests_total{route="payments",status="202"})')
        seen = (confirmed and float(confirmed[0]["value"][1]), accepted and float(accepted[0]["value"][1]))
        if seen == (5.0, 5.0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert seen == (5.0, 5.0)
    up = prometheus_query(base_url, 'up{job="bruto"}')
    assert [float(s["value"][1]) for s in up] == [1.0]
    cents = prometheus_query(base_url, "sum(bruto_ledger_amount_cents)")
    assert float(cents[0]["value"][1]) == 5 * 1990
    # Every panel of the dashboard is a query Prometheus accepts, over metrics that exist.
    for expr in dashboard_expressions():
        prometheus_query(base_url, expr)
    for name in ("bruto_breaker_state", "bruto_intake_backlog", "bruto_payment_send_duration_seconds_bucket",
                 "bruto_outbox_wait_seconds_bucket", "bruto_payment_outcomes_total", "bruto_dispatcher_up"):
        assert prometheus_query(base_url, name), name

    # bruto-shm finds the stack's regions through BRUTO_SHM_DIR, as it finds /dev/shm/bruto by default.
    env = dict(os.environ, BRUTO_SHM_DIR=stack_args["shm_dir"])
    shown = subprocess.run([sys.executable, "-m", "bruto.inspector", "--json"], env=env,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    snap = json.loads(shown.stdout)
    assert snap["gateway"]["accepted"] == 5
    assert snap["gateway"]["workers_alive"] == 2
    assert snap["dispatcher"]["alive"] is True
    confirmed = {name: p["confirmed"] for name, p in snap["processors"].items()}
    assert sum(confirmed.values()) == 5
    assert {name: p["ledger"]["totalRequests"] for name, p in snap["processors"].items()} == confirmed
    watched = subprocess.run([sys.executable, "-m", "bruto.inspector", "--watch", "0.2", "--count", "2"], env=env,
                             capture_output=True, text=True, timeout=30)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count("payments/s") == 2 and "dispatcher alive" in watched.stdout
    check_down(stack_args, state)


@needs_prometheus
def test_prometheus_configs_are_valid(tmp_path):
    """conf/prometheus.yml (compose) and the stack's own pass promtool, and scrape the same way."""
    rendered = services.prometheus_service(tmp_path, 9999, 9090)
    conf = Path(rendered.argv[1].removeprefix("--config.file="))
    for path in (REPO / "conf" / "prometheus.yml", conf):
        result = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    compose_job = yaml.safe_load((REPO / "conf" / "prometheus.yml").read_text())["scrape_configs"][0]
    stack_job = yaml.safe_load(conf.read_text())["scrape_configs"][0]
    assert compose_job["static_configs"] == [{"targets": ["balancer:9999"]}]
    for key in ("job_name", "metrics_path", "scrape_timeout"):
        assert compose_job[key] == stack_job[key]


def test_prometheus_stays_out_of_the_challenges_services():
    """The compose file starts Prometheus only under its profile, and gives it no share of the limits."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert "deploy" not in prometheus
    assert "./conf/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert all("profiles" not in s for name, s in compose["services"].items() if name != "prometheus")
