"""POST /purge-payments behind BRUTO_PURGE_ACCESS / BRUTO_PURGE_TOKEN (bruto.gateway.admin), in-process."""

from __future__ import annotations

import falcon
import falcon.testing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bruto.config import SettingError
from bruto.config import Settings
from bruto.gateway.admin import TOKEN_HEADER
from bruto.gateway.admin import GuardedPurge
from bruto.gateway.app import create_app
from bruto.gateway.counters import GatewayCounters
from bruto.shm import snapshot
from bruto.shm.layout import create_all
from bruto.shm.layout import open_intake

TOKEN = "s3cret-purge-token"


def test_access_is_open_by_default_and_a_token_turns_the_check_on():
    assert Settings().purge_access == "open"
    assert Settings.from_env({"BRUTO_PURGE_TOKEN": TOKEN}).purge_access == "token"
    assert Settings.from_env({"BRUTO_PURGE_ACCESS": "off"}).purge_access == "off"


@pytest.mark.parametrize("env, message", [
    ({"BRUTO_PURGE_ACCESS": "closed"}, "BRUTO_PURGE_ACCESS must be one of open, token, off, not 'closed'"),
    ({"BRUTO_PURGE_ACCESS": "token"}, "BRUTO_PURGE_ACCESS=token needs BRUTO_PURGE_TOKEN"),
    ({"BRUTO_PURGE_ACCESS": "open", "BRUTO_PURGE_TOKEN": TOKEN},
     "BRUTO_PURGE_TOKEN is set but BRUTO_PURGE_ACCESS is 'open': the token would check nothing"),
])
def test_contradictory_purge_settings_are_refused(env, message):
    with pytest.raises(SettingError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message
    assert TOKEN not in str(raised.value)


def test_the_token_is_in_no_repr():
    assert TOKEN not in repr(Settings.from_env({"BRUTO_PURGE_TOKEN": TOKEN}))


class RecordingPurge:
    """Stands for the real purge (which needs a dispatcher): records that it was reached."""

    def __init__(self):
        self.calls = 0

    def on_post(self, req, resp):
        self.calls += 1
        resp.data = b'{"message":"All payments purged."}'


def guarded_client(tmp_path, **settings) -> tuple[falcon.testing.TestClient, RecordingPurge, Settings]:
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=4, ledger_capacity=4, **settings)
    create_all(settings)
    purge = RecordingPurge()
    app = falcon.App()
    app.add_route("/purge-payments", GuardedPurge(purge, settings, GatewayCounters(open_intake(settings, 0))))
    return falcon.testing.TestClient(app), purge, settings


def purge_answers(tmp_path) -> dict:
    return snapshot.read(str(tmp_path))["intake"][0]["requests"]["purge_payments"]


def test_open_access_purges_for_anyone(tmp_path):
    client, purge, _ = guarded_client(tmp_path)
    assert client.simulate_post("/purge-payments").status_code == 200
    assert purge.calls == 1


def test_off_refuses_everyone_with_403_even_with_a_token_header(tmp_path):
    client, purge, _ = guarded_client(tmp_path, purge_access="off")
    result = client.simulate_post("/purge-payments", headers={TOKEN_HEADER: "anything"})
    assert result.status_code == 403
    assert result.json == {"error": "POST /purge-payments is turned off on this gateway"}
    assert purge.calls == 0
    assert purge_answers(tmp_path)["403"] == 1


@pytest.mark.parametrize("headers", [{}, {TOKEN_HEADER: ""}, {TOKEN_HEADER: TOKEN[:-1]}, {TOKEN_HEADER: TOKEN + "x"},
                                     {TOKEN_HEADER: TOKEN.upper()}, {"X-Rinha-Token": TOKEN}])
def test_a_missing_or_wrong_token_gets_401_and_purges_nothing(tmp_path, headers):
    client, purge, _ = guarded_client(tmp_path, purge_token=TOKEN)
    result = client.simulate_post("/purge-payments", headers=headers)
    assert result.status_code == 401
    assert result.json == {"error": f"POST /purge-payments needs a valid {TOKEN_HEADER} header"}
    assert TOKEN not in result.text
    assert purge.calls == 0
    assert purge_answers(tmp_path)["401"] == 1


def test_the_right_token_reaches_the_purge(tmp_path):
    client, purge, _ = guarded_client(tmp_path, purge_token=TOKEN)
    assert client.simulate_post("/purge-payments", headers={TOKEN_HEADER: TOKEN}).status_code == 200
    assert purge.calls == 1


def test_any_header_value_is_refused_or_accepted_never_an_error(tmp_path):
    """Non-ASCII, control characters, empty: compare_digest on bytes, never a TypeError (a 500)."""
    client, purge, _ = guarded_client(tmp_path, purge_token=TOKEN)

    @given(st.one_of(st.text(max_size=64), st.just(TOKEN)))
    def check(value):
        raw = value.encode("utf-8", "surrogatepass").decode("latin-1")  # as the worker hands header bytes on
        if any(ch in raw for ch in "\r\n\0"):
            return  # not a header value a client can send
        result = client.simulate_post("/purge-payments", headers={TOKEN_HEADER: raw})
        assert result.status_code == (200 if value == TOKEN else 401)

    check()


def test_the_app_guards_its_purge_route(tmp_path):
    settings = Settings(shm_dir=str(tmp_path), intake_slots=1, intake_capacity=2, ledger_capacity=4, purge_access="off")
    create_all(settings)
    client = falcon.testing.TestClient(create_app(settings))
    assert client.simulate_post("/purge-payments").status_code == 403
