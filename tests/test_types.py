"""The product type-checks: mypy as pyproject.toml configures it (strict for bruto/shm, bruto/dispatcher,
the HTTP protocol and the descriptor hand-off; mypy's defaults for the rest of the product; stubs for the
libraries that ship no types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_nothing():
    checked = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_strict_modules_are_checked_strictly(tmp_path):
    # An unannotated function passes mypy's defaults; in bruto/shm and bruto/dispatcher it must not.
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "bruto").mkdir()
    (tmp_path / "bruto" / "__init__.py").write_text("")
    untyped = "def untyped(x):\n    return x\n"
    for strict in ("shm", "dispatcher"):
        (tmp_path / "bruto" / strict).mkdir()
        (tmp_path / "bruto" / strict / "__init__.py").write_text("")
        (tmp_path / "bruto" / strict / "probe.py").write_text(untyped)
    (tmp_path / "bruto" / "elsewhere.py").write_text(untyped)
    checked = subprocess.run([sys.executable, "-m", "mypy", "bruto/shm/probe.py", "bruto/dispatcher/probe.py",
                              "bruto/elsewhere.py"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    flagged = sorted(line.split(":")[0] for line in checked.stdout.splitlines() if ": error:" in line)
    assert flagged == ["bruto/dispatcher/probe.py", "bruto/shm/probe.py"]
