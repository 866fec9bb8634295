"""The supervised stack (bruto-stack up): every process that dies comes back, a standby dispatcher takes
over, `status` fails while something is down, `down` keeps a directory that holds unsent payments."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_stack import check_payments_flow
from test_stack import get_json
from test_stack import post_payment
from test_stack import recorded

from bruto.shm import snapshot
from bruto.testbed.stack import cli
from bruto.testbed.stack import runner
from bruto.testbed.stack import supervisor

pytestmark = pytest.mark.slow  # real processes


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def record_of(run_dir, name: str) -> dict:
    return next(p for p in recorded(run_dir)["processes"] if p["name"] == name)


def restarted(run_dir, name: str, old_pid: int):
    """The service's new record once it runs again under another PID and the whole stack is whole again."""
    def check():
        record = record_of(run_dir, name)
        if record["pid"] != old_pid and runner.Stack.alive(record) and cli.main(["status", "--run-dir", str(run_dir)]) == 0:
            return record
        return None
    return wait_until(check, what=f"{name} restarted and the stack whole")


@pytest.fixture
def supervised(stack_args):
    assert cli.main(["up"] + stack_args["args"]) == 0
    return stack_args


def test_every_process_that_dies_comes_back_and_status_says_when_one_is_down(supervised, capsys):
    info = supervised
    run_dir = info["run_dir"]
    state = recorded(run_dir)
    assert state["supervised"] is True
    assert [p["name"] for p in state["processes"]] == [
        "emulator-default", "emulator-fallback", "dispatcher", "dispatcher-standby", "api1", "api2", "balancer",
        "supervisor"]
    capsys.readouterr()
    assert cli.main(["status"] + info["args"]) == 0
    shown = capsys.readouterr().out
    assert "name=dispatcher " in shown and "answers=active" in shown and "answers=standby" in shown

    # The standby takes over the moment the active dispatcher dies; the dead one comes back as the standby.
    active, standby = record_of(run_dir, "dispatcher"), record_of(run_dir, "dispatcher-standby")
    os.kill(active["pid"], signal.SIGKILL)
    wait_until(lambda: snapshot.read(info["shm_dir"])["dispatcher"]["pid"] == standby["pid"]
               and snapshot.read(info["shm_dir"])["dispatcher"]["alive"], what="the standby holds the lock")
    check_payments_flow(info)
    back = restarted(run_dir, "dispatcher", active["pid"])
    assert back["restarts"] == 1
    capsys.readouterr()
    assert cli.main(["status"] + info["args"]) == 0
    # Rows are named by role: the one that took over is now `dispatcher`, the restarted one its standby.
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("name=dispatcher")]
    assert rows[0].startswith(f"name=dispatcher  pid={standby['pid']}  ") and "answers=active" in rows[0]
    assert rows[1].startswith(f"name=dispatcher-standby  pid={back['pid']}  ") and "answers=standby" in rows[1]

    # The balancer, a gunicorn master alone (its workers follow it out), a whole instance, an emulator.
    kills = [("balancer", False), ("api1", False), ("api2", True), ("emulator-default", False)]
    for name, whole_group in kills:
        old = record_of(run_dir, name)
        if whole_group:
            os.killpg(old["pid"], signal.SIGKILL)
        else:
            os.kill(old["pid"], signal.SIGKILL)
        back = restarted(run_dir, name, old["pid"])
        assert back["restarts"] == 1, name
        assert post_payment(info["base_url"]) == 202, name
    emulator = info["processors"]["default"]
    assert get_json(f"{emulator}/admin/payments-summary", {"X-Rinha-Token": "123"})["totalRequests"] >= 0

    # With its supervisor stopped, a dead process stays dead, and status says so until it is back.
    watcher = record_of(run_dir, "supervisor")
    os.kill(watcher["pid"], signal.SIGSTOP)
    try:
        balancer = record_of(run_dir, "balancer")
        os.kill(balancer["pid"], signal.SIGKILL)
        wait_until(lambda: not runner.Stack.alive(balancer) or runner.group_members(balancer["pid"]) == [],
                   what="the balancer gone")
        capsys.readouterr()
        assert cli.main(["status"] + info["args"]) == 1
        assert "not running: balancer" in capsys.readouterr().err
    finally:
        os.kill(watcher["pid"], signal.SIGCONT)
    restarted(run_dir, "balancer", balancer["pid"])
    assert post_payment(info["base_url"]) == 202


def test_a_dead_supervisor_makes_status_fail_and_down_still_stops_everything(supervised, capsys):
    info = supervised
    state = recorded(info["run_dir"])
    os.kill(record_of(info["run_dir"], "supervisor")["pid"], signal.SIGKILL)
    capsys.readouterr()
    wait_until(lambda: cli.main(["status"] + info["args"]) == 1, what="status failing")
    assert "not running: supervisor" in capsys.readouterr().err
    assert cli.main(["down"] + info["args"]) == 0
    for record in state["processes"]:
        assert runner.group_members(record["pid"]) == [], record["name"]
    assert not os.path.exists(info["shm_dir"])


def test_down_keeps_a_directory_holding_unsent_payments_unless_forced(supervised, capsys):
    info = supervised
    admin = {"X-Rinha-Token": "123", "Content-Type": "application/json"}
    for url in info["processors"].values():  # nothing can be sent
        put(f"{url}/admin/configurations/failure", b'{"failure": true}', admin)
    assert all(post_payment(info["base_url"]) == 202 for _ in range(7))
    capsys.readouterr()
    assert cli.main(["down"] + info["args"]) == 1
    told = capsys.readouterr().err
    assert f"kept {info['shm_dir']}: it holds 7 accepted payments not sent" in told
    assert "`bruto-stack up` sends them, `bruto-stack down --force` drops them" in told
    assert os.path.isdir(info["shm_dir"])
    assert not (info["run_dir"] / "state.json").exists()
    # A new stack on the same directory (fresh emulators, not failing) sends them; then down removes it.
    assert cli.main(["up"] + info["args"]) == 0
    wait_until(lambda: get_json(f"{info['base_url']}/payments-summary")["default"]["totalRequests"] == 7,
               what="the kept payments sent")
    assert cli.main(["down"] + info["args"]) == 0
    assert not os.path.exists(info["shm_dir"])


def test_down_force_drops_them(supervised, capsys):
    info = supervised
    admin = {"X-Rinha-Token": "123", "Content-Type": "application/json"}
    for url in info["processors"].values():
        put(f"{url}/admin/configurations/failure", b'{"failure": true}', admin)
    assert post_payment(info["base_url"]) == 202
    assert cli.main(["down", "--force"] + info["args"]) == 0
    assert not os.path.exists(info["shm_dir"])


def test_stop_keeps_the_ledger_and_up_continues_from_it_then_down_deletes_it(supervised, capsys):
    info = supervised
    check_payments_flow(info)
    before = get_json(f"{info['base_url']}/payments-summary")
    capsys.readouterr()
    assert cli.main(["stop", "--via-make"] + info["args"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "stack stopped",
        f"kept {info['shm_dir']}: 5 confirmed payments, 0 accepted and not sent to a processor yet; "
        "`make up` continues from it, `make down` deletes it"]
    assert not (info["run_dir"] / "state.json").exists()
    assert cli.main(["up"] + info["args"]) == 0
    assert (f"continued from {info['shm_dir']}: 5 confirmed payments, 0 accepted and not sent"
            in capsys.readouterr().out)
    assert get_json(f"{info['base_url']}/payments-summary") == before
    # Stopped again, then down: nothing runs, and down still deletes what the stack left.
    assert cli.main(["stop"] + info["args"]) == 0
    capsys.readouterr()
    assert cli.main(["down"] + info["args"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"nothing running from {info['run_dir']}",
        f"deleted {info['shm_dir']}: 5 confirmed payments, 0 accepted and not sent to a processor yet"]
    assert not os.path.exists(info["shm_dir"])


def test_down_names_make_commands_when_make_runs_it(supervised, capsys):
    info = supervised
    admin = {"X-Rinha-Token": "123", "Content-Type": "application/json"}
    for url in info["processors"].values():
        put(f"{url}/admin/configurations/failure", b'{"failure": true}', admin)
    assert post_payment(info["base_url"]) == 202
    capsys.readouterr()
    assert cli.main(["down", "--via-make"] + info["args"]) == 1
    assert "`make up` sends them, `make down FORCE=1` drops them" in capsys.readouterr().err
    assert cli.main(["up"] + info["args"]) == 0
    capsys.readouterr()
    assert cli.main(["up", "--via-make"] + info["args"]) == 1
    assert "`make stop` or `make down` first" in capsys.readouterr().err


def test_down_leaves_a_directory_no_stack_created(stack_args, capsys):
    os.makedirs(stack_args["shm_dir"])
    try:
        assert cli.main(["up"] + stack_args["args"]) == 0
        assert cli.main(["down"] + stack_args["args"]) == 0
        assert f"left {stack_args['shm_dir']} as it is: no stack created it" in capsys.readouterr().out
        assert os.path.isdir(stack_args["shm_dir"])
    finally:
        shutil.rmtree(stack_args["shm_dir"], ignore_errors=True)


def put(url: str, body: bytes, headers: dict) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


# ------------------------------------------------------------- the backoff, deterministic


def test_backoff_doubles_up_to_its_ceiling():
    assert [supervisor.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert supervisor.backoff(20) == supervisor.MAX_BACKOFF_S


def test_a_service_that_keeps_dying_is_restarted_later_each_time(tmp_path):
    """pass_once with a given clock: the restart waits out the backoff, which doubles while it keeps dying."""
    flaky = runner.Service("flaky", [sys.executable, "-c", "raise SystemExit(3)"], {}, ready=("alive", 0),
                           limited=False)
    stack = runner.Stack(tmp_path / "run", [flaky])
    stack.run_dir.mkdir()
    state = {"run_dir": str(stack.run_dir), "processes": [stack._start(flaky, {})], "cgroups": {}, "scratch_dirs": []}
    stack._save(state)
    watcher = supervisor.Supervisor(stack)
    now = 1000.0
    restarts_at = []
    for _ in range(4):
        first = stack.load_state()["processes"][0]
        wait_until(lambda: stack._exit_status(first["pid"]) is not None, 30, "the flaky process exited")
        watcher.pass_once(now)  # notes the death
        delay = supervisor.backoff(len(restarts_at) + 1)
        watcher.pass_once(now + delay - 0.01)
        assert stack.load_state()["processes"][0]["pid"] == first["pid"]  # not yet
        watcher.pass_once(now + delay)
        again = stack.load_state()["processes"][0]
        assert again["pid"] != first["pid"] and again["restarts"] == len(restarts_at) + 1
        restarts_at.append(delay)
        now += delay
    assert restarts_at == [0.5, 1.0, 2.0, 4.0]
    stack.down()
    assert not Path(stack.state_file).exists()
