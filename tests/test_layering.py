"""The library's layering rules (docs/CONTRACTS.md), checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted((ROOT / "pipeline").rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_tracking_package_imports_mlflow_or_dvc(path):
    if (ROOT / "pipeline" / "tracking") in path.parents:
        return
    offending = {name for name in imported_modules(path) if name.split(".")[0] in {"mlflow", "dvc"}}
    assert not offending, f"{path.relative_to(ROOT)} imports {sorted(offending)}"
