"""Settings from the environment: one declaration each, converted by type, refused with a clear message."""

from __future__ import annotations

import dataclasses

import pytest

from bruto.config import SettingError
from bruto.config import Settings
from bruto.config import env_name


def test_every_setting_reads_its_variable_by_its_type():
    settings = Settings.from_env({
        "BRUTO_SHM_DIR": "/tmp/x", "BRUTO_BIND": "unix:/run/a.sock", "BRUTO_WORKERS": "3",
        "BRUTO_SETTLEMENT_BOUND_S": "2.5", "BRUTO_LOG_LEVEL": "warning", "BRUTO_SENDERS": " 64 ",
    })
    assert (settings.shm_dir, settings.bind, settings.workers) == ("/tmp/x", "unix:/run/a.sock", 3)
    assert (settings.settlement_bound_s, settings.log_level, settings.senders) == (2.5, "warning", 64)


def test_unset_or_empty_variables_keep_the_defaults():
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"BRUTO_WORKERS": "", "BRUTO_SHM_DIR": "  "}) == Settings()


def test_every_field_has_a_bruto_variable():
    names = [env_name(field.name) for field in dataclasses.fields(Settings)]
    assert "BRUTO_WORKER_CLASS" in names and all(name.startswith("BRUTO_") for name in names)


@pytest.mark.parametrize("variable, value, message", [
    ("BRUTO_WORKERS", "two", "BRUTO_WORKERS must be an integer, not 'two'"),
    ("BRUTO_WORKERS", "1.5", "BRUTO_WORKERS must be an integer, not '1.5'"),
    ("BRUTO_SETTLEMENT_BOUND_S", "soon", "BRUTO_SETTLEMENT_BOUND_S must be a number, not 'soon'"),
    ("BRUTO_INTAKE_CAPACITY", "0", "BRUTO_INTAKE_CAPACITY must be positive, not 0"),
    ("BRUTO_SENDERS", "-4", "BRUTO_SENDERS must be positive, not -4"),
])
def test_a_bad_value_is_refused_naming_the_variable(variable, value, message):
    with pytest.raises(SettingError) as raised:
        Settings.from_env({variable: value})
    assert str(raised.value) == message
