"""The layout's rules that import-linter cannot see (the import contracts are in pyproject.toml)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("irec", "benchmarks", "export", "training", "server")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "generated" in parts:
                continue
            found[".".join(p for p in parts if p != "__init__")] = path
    return found


def test_no_private_name_is_imported_from_another_module() -> None:
    # A name with a leading underscore belongs to its module; another module that needs it
    # needs a public name (or the code belongs elsewhere).
    crossings = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                continue
            if node.module.split(".")[0] not in PACKAGES or node.module == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    crossings.append(f"{module}: from {node.module} import {alias.name}")
    assert not crossings, crossings
