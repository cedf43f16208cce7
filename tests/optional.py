"""Optional dependencies in tests: skipped on a developer's machine, required in CI.

`make` installs every extra and tool the suite uses (tritonclient, Ray, OpenTelemetry,
kubectl, hadolint, ...). Locally a test that needs one that is missing is skipped; in CI
(`CI=true`, as GitHub Actions and most CI systems set it) it fails instead, so a broken
install (an ImportError inside the package, a missing binary) never passes as "skipped".
Only an absent package is a skip locally: a package that is there but fails to import
fails everywhere, with its traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest


def in_ci() -> bool:
    """True where CI says so (`CI=true`, `CI=1`)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str) -> None:
    """Skip (locally) or fail (in CI): `what` is not installed."""
    if in_ci():
        pytest.fail(f"{what} is not installed, and CI=true requires it (make venv)")
    pytest.skip(f"{what} not installed (make venv)", allow_module_level=True)


def require_module(name: str, extra: str) -> ModuleType:
    """Import `name`; if its top-level package is absent: skip locally, fail in CI.

    A package that is installed but raises on import is never skipped: the error propagates.
    """
    top = name.split(".")[0]
    if importlib.util.find_spec(top) is None:
        missing(f"{top} ({extra})")
    return importlib.import_module(name)


def module_present(name: str) -> bool:
    """Whether the top-level package of `name` is installed (import errors not hidden)."""
    return importlib.util.find_spec(name.split(".")[0]) is not None


def require_binary(name: str, extra: str) -> str:
    """Path of executable `name` (the venv's first, then PATH); skip locally, fail in CI."""
    pinned = Path(sys.executable).parent / name
    found = str(pinned) if pinned.exists() else shutil.which(name)
    if found is None:
        missing(f"{name} ({extra})")
        raise AssertionError("unreachable")  # pragma: no cover  (skip/fail raise)
    return found
