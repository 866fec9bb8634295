"""GET /payments/{correlationId} on a running stack, checked against the processors' own GET.

Real gunicorn workers, a real dispatcher and the session's two emulators: each
state is reached by what the processors do (failing, slow, paused with
SIGSTOP, healthy again), and every answer bruto gives is held against what the
processor itself says it stored at that moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from gateway import Gateway
from gateway import assert_stored_as_bruto_says
from gateway import state_of
from gateway import wait_state

from bruto.shm.snapshot import read as snapshot

pytestmark = pytest.mark.slow  # real processes


def test_a_payment_followed_from_202_to_confirmed_through_failing_slow_and_healthy(gateway, clean_processors):
    default, fallback = clean_processors.default, clean_processors.fallback
    default.set_failure(True)
    fallback.set_failure(True)
    payment = uuid.uuid4()
    assert gateway.pay(payment, "12.34").status_code == 202
    waiting = wait_state(gateway, payment, "waiting")
    assert waiting == {"correlationId": str(payment), "state": "waiting", "amount": 12.34}
    time.sleep(0.5)  # tried, and refused, a few times over
    assert wait_state(gateway, payment, "waiting") == waiting
    assert default.get_payment(str(payment)) is None and fallback.get_payment(str(payment)) is None

    default.set_delay(2500)  # slow, healthy: the next probe goes out and waits there
    default.set_failure(False)
    in_flight = wait_state(gateway, payment, "in_flight", processor="default", unresolved=False)
    assert default.get_payment(str(payment)) is None  # the emulator stores at the end of its delay
    confirmed = wait_state(gateway, payment, "confirmed")
    assert confirmed["requestedAt"] == in_flight["requestedAt"]  # the one that was sent
    assert confirmed["amount"] == 12.34
    assert_stored_as_bruto_says(clean_processors, confirmed)


def test_a_payment_whose_processor_is_paused_is_in_flight_then_unresolved_then_confirmed(gateway, clean_processors):
    default = clean_processors.default
    payment = uuid.uuid4()
    os.kill(default.pid, signal.SIGSTOP)  # it takes the request and answers nothing
    try:
        assert gateway.pay(payment, "5.00").status_code == 202
        sent = wait_state(gateway, payment, "in_flight", processor="default", unresolved=False)
        # The attempt times out (routing.TIMEOUT_FLOOR_S): the outcome is unknown, looked up.
        unresolved = wait_state(gateway, payment, "in_flight", timeout=20, processor="default", unresolved=True)
        assert unresolved["requestedAt"] == sent["requestedAt"]
    finally:
        os.kill(default.pid, signal.SIGCONT)
    # Resumed, it reads the request bruto gave up on, and may store it: a lookup
    # says whether (and then bruto keeps that attempt's requestedAt) or proves
    # its absence (and bruto sends it again, with a new one).
    confirmed = wait_state(gateway, payment, "confirmed", timeout=40)
    assert_stored_as_bruto_says(clean_processors, confirmed)


def test_a_payment_accepted_twice_answers_with_the_one_sent(gateway, clean_processors):
    payment = uuid.uuid4()
    assert gateway.pay(payment, "10.00").status_code == 202
    first = wait_state(gateway, payment, "confirmed")
    assert gateway.pay(payment, "20.00").status_code == 202  # 202: accepted, then dropped as a duplicate
    deadline = time.monotonic() + 10
    while snapshot(gateway.env["BRUTO_SHM_DIR"])["dispatcher"]["duplicates_dropped"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert state_of(gateway, payment) == (200, first)
    assert first["amount"] == 10.00
    assert_stored_as_bruto_says(clean_processors, first)


def test_purged_payments_are_404_and_say_so_and_their_id_is_new_again(gateway, clean_processors):
    confirmed, queued = uuid.uuid4(), uuid.uuid4()
    assert gateway.pay(confirmed).status_code == 202
    wait_state(gateway, confirmed, "confirmed")
    clean_processors.default.set_failure(True)
    clean_processors.fallback.set_failure(True)
    assert gateway.pay(queued).status_code == 202
    wait_state(gateway, queued, "waiting")
    assert gateway.http.post(gateway.url + "/purge-payments", timeout=10).status_code == 200
    for name, payment in (("confirmed", confirmed), ("queued", queued)):
        # A probe out at the purge stays in flight until the processor refuses it: then it goes.
        deadline = time.monotonic() + 5
        while (answer := state_of(gateway, payment))[0] != 404:
            assert answer[1]["state"] == "in_flight" and time.monotonic() < deadline, (name, answer)
            time.sleep(0.02)
        assert answer[1]["reason"] == "purged", (name, answer)
        assert str(payment) in answer[1]["error"]
    clean_processors.default.set_failure(False)
    clean_processors.fallback.set_failure(False)
    assert gateway.pay(queued, "7.00").status_code == 202  # accepted as new after the purge
    assert_stored_as_bruto_says(clean_processors, wait_state(gateway, queued, "confirmed", amount=7.00))


def test_ids_never_accepted_or_malformed_are_answered_as_post_answers_them(gateway):
    status, body = state_of(gateway, uuid.uuid4())
    assert status == 404 and body["reason"] == "never_accepted"
    for bad in ("not-a-uuid", "4a7901b8-7d26-4d9d-aa19-4dc1c7cf60bz", "4a7901b87d264d9daa194dc1c7cf60b3"):
        got = gateway.http.get(f"{gateway.url}/payments/{bad}", timeout=5)
        posted = gateway.http.post(gateway.url + "/payments", timeout=5,
                                   data=json.dumps({"correlationId": bad, "amount": 1}))
        assert (got.status_code, got.json()) == (posted.status_code, posted.json()) == (
            422, {"error": "correlationId must be a UUID"}), bad
    upper = str(uuid.uuid4()).upper()
    assert gateway.pay(upper).status_code == 202
    assert wait_state(gateway, upper, "confirmed")["correlationId"] == upper.lower()
    assert gateway.http.post(f"{gateway.url}/payments/{upper}", timeout=5).status_code == 405


def test_the_inspector_answers_what_http_answers(gateway):
    payment = uuid.uuid4()
    assert gateway.pay(payment, "3.21").status_code == 202
    answer = wait_state(gateway, payment, "confirmed")

    def inspect(*args):
        return subprocess.run([sys.executable, "-m", "bruto.inspector", *args], env=gateway.env,
                              capture_output=True, text=True, timeout=30)

    shown = inspect("--payment", str(payment), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == answer
    words = inspect("--payment", str(payment))
    assert words.returncode == 0
    assert f"payment {payment}: confirmed, amount 3.21, processor default" in words.stdout
    missing = inspect("--payment", str(uuid.uuid4()))
    assert missing.returncode == 1 and "reason: never_accepted" in missing.stdout
    bad = inspect("--payment", "nope")
    assert bad.returncode == 2 and "correlationId must be a UUID" in bad.stderr


def test_answers_stay_right_across_a_dispatcher_crash_and_the_standby_taking_over(tmp_path, clean_processors):
    gw = Gateway.start(tmp_path, clean_processors, workers=2)
    try:
        standby = gw.start_dispatcher()
        done = [uuid.uuid4() for _ in range(20)]
        for payment in done:
            assert gw.pay(payment).status_code == 202
        gw.wait_settled(clean_processors, expected=len(done))
        before = {payment: wait_state(gw, payment, "confirmed") for payment in done}
        clean_processors.default.set_delay(3000)
        out = uuid.uuid4()
        assert gw.pay(out, "8.88").status_code == 202
        sent = wait_state(gw, out, "in_flight", processor="default", unresolved=False)
        # Paused, the processor answers neither the attempt nor the standby's
        # lookups: the payment stays unresolved until it is resumed.
        os.kill(clean_processors.default.pid, signal.SIGSTOP)
        try:
            os.kill(gw.dispatchers[0].pid, signal.SIGKILL)
            gw.dispatchers[0].wait()
            # The standby rebuilds the index (answers come from a scan meanwhile) and
            # takes the attempt it never saw for unresolved: it looks it up.
            unresolved = wait_state(gw, out, "in_flight", processor="default", unresolved=True)
            assert unresolved["requestedAt"] == sent["requestedAt"]
            assert {payment: state_of(gw, payment)[1] for payment in done} == before
        finally:
            os.kill(clean_processors.default.pid, signal.SIGCONT)
        confirmed = wait_state(gw, out, "confirmed", timeout=40)
        assert_stored_as_bruto_says(clean_processors, confirmed)
        assert standby.poll() is None
        for answer in list(before.values())[::5]:
            assert_stored_as_bruto_says(clean_processors, answer)
    finally:
        gw.stop()
