"""The product type-checks: mypy as pyproject.toml configures it (strict for bruto/shm, the HTTP protocol
and the descriptor hand-off; mypy's defaults for the rest of the product; stubs for the libraries that
ship no types)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_nothing():
    checked = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_strict_modules_are_checked_strictly(tmp_path):
    # An unannotated function passes mypy's defaults; in bruto/shm it must not.
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    package = tmp_path / "bruto" / "shm"
    package.mkdir(parents=True)
    for init in (tmp_path / "bruto" / "__init__.py", package / "__init__.py"):
        init.write_text("")
    untyped = "def untyped(x):\n    return x\n"
    (package / "probe.py").write_text(untyped)
    (tmp_path / "bruto" / "elsewhere.py").write_text(untyped)
    checked = subprocess.run([sys.executable, "-m", "mypy", "bruto/shm/probe.py", "bruto/elsewhere.py"],
                             cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert [line.split(":")[0] for line in checked.stdout.splitlines() if ": error:" in line] == ["bruto/shm/probe.py"]
