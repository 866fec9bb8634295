"""bruto's layering, read from the imports: the roles meet only in the shared-memory formats.

bruto.shm (the regions' layouts, their readers and writers) imports no role;
the gateway and the dispatcher import nothing of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("bruto.gateway", "bruto.dispatcher", "bruto.testbed", "bruto.balancer", "bruto.inspector")


def imported(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def of(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def reaching(path: Path, packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported(path) if m.startswith(packages))


@pytest.mark.parametrize("path", of("bruto.shm"), ids=lambda path: path.name)
def test_shared_memory_imports_no_role(path):
    assert reaching(path, ROLES) == []


@pytest.mark.parametrize("path, other", [(path, "bruto.dispatcher") for path in of("bruto.gateway")]
                         + [(path, "bruto.gateway") for path in of("bruto.dispatcher")],
                         ids=lambda value: value.name if isinstance(value, Path) else value)
def test_the_gateway_and_the_dispatcher_import_nothing_of_each_other(path, other):
    assert reaching(path, (other,)) == []


def test_the_check_sees_an_import_of_a_role(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from bruto.dispatcher.dedup import DedupIndex\nimport bruto.gateway.app\n")
    assert reaching(module, ROLES) == ["bruto.dispatcher.dedup", "bruto.dispatcher.dedup.DedupIndex",
                                       "bruto.gateway.app"]
