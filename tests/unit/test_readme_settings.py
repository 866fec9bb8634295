"""README's configuration table is bruto.config: every setting, no other, each with its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bruto.config import Settings
from bruto.config import env_name

README = Path(__file__).resolve().parents[2] / "README.md"
# Defaults the table writes otherwise than as they are, each made from bruto.config's value.
IN_WORDS = {
    # the port alone: the host is the default processor's
    "fallback_url": "`:%s`" % Settings.fallback_url.rpartition(":")[2],
    # empty: resolved from purge_token
    "purge_access": "`open` (`token` when a token is set)" if Settings.purge_access == "" else None,
    "purge_token": "unset" if Settings.purge_token == "" else None,
    "database_url": "unset" if Settings.database_url == "" else None,
}


def table() -> dict[str, str]:
    """Each variable of README's configuration table and the default written beside it."""
    rows = {}
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`BRUTO_"):
            continue
        names = re.findall(r"`(BRUTO_[A-Z_]+)`", cells[0])
        defaults = cells[1].split(", ") if len(names) > 1 else [cells[1]]
        assert len(defaults) == len(names), line
        rows.update(zip(names, defaults))
    return rows


def written(value: object) -> str:
    """A default as the table writes it: code in backticks, numbers bare."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"`{value}`"
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_table_lists_every_setting_and_nothing_else():
    assert sorted(table()) == sorted(env_name(field.name) for field in dataclasses.fields(Settings))


def test_each_default_is_the_one_bruto_config_declares():
    rows = table()
    for field in dataclasses.fields(Settings):
        expected = IN_WORDS.get(field.name) or written(field.default)
        assert rows[env_name(field.name)] == expected, field.name


def test_the_check_reads_a_row_of_two_variables():
    assert table()["BRUTO_DEFAULT_FEE"] == "0.05" and table()["BRUTO_FALLBACK_FEE"] == "0.15"
