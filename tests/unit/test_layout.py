"""The layout's rules that import-linter cannot see (the import contracts are in pyproject.toml)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("irec", "benchmarks", "export", "training", "server")
# Client code, and names that said nothing the package did not (now grpc/recsys_v1.py and
# core/model_slot.py), have no place directly under server/.
CLIENT_OR_AMBIGUOUS_MODULES = ("client", "loadgen", "service", "serving")


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


def test_architecture_md_names_every_module_and_only_files_that_exist() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([\w/.-]+\.(?:py|proto))`", text))
    named |= {f"benchmarks/{m}" for m in re.findall(r"`(\w+\.py)`", text)}  # listed by name
    missing = sorted(
        str(p.relative_to(ROOT)) for p in _modules().values() if p.name != "__init__.py"
    )
    missing = [m for m in missing if m not in named]
    assert not missing, f"not in ARCHITECTURE.md: {missing}"
    for path in re.findall(r"`([\w-]+/[\w/.-]+)`", text):
        assert (ROOT / path).exists(), f"ARCHITECTURE.md names {path}, which does not exist"


def test_the_server_package_holds_the_server_and_nothing_else() -> None:
    # Front ends, the gRPC-free core and the bundle each have a folder; client code lives
    # with the commands (irec/), deployment files beside the Dockerfile (deploy/).
    server = ROOT / "server"
    folders = {p.name for p in server.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {"grpc", "core", "bundle", "generated"}
    stray = [p.name for p in server.glob("*.py") if p.stem in CLIENT_OR_AMBIGUOUS_MODULES]
    assert not stray, stray
    assert (ROOT / "deploy" / "kubernetes").is_dir()
