"""Generate the Python gRPC code for every proto under protos/ into server/generated/.

One command (``make proto`` or ``python protos/codegen.py``) writes ``*_pb2.py``,
``*_pb2.pyi`` and ``*_pb2_grpc.py``. ``--check`` regenerates into a temporary
folder and fails when the committed files differ, so stubs never drift from the
protos. Imports are rewritten from ``recsys.v1`` to ``server.generated.recsys.v1``
so the generated code lives inside the server package.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_DIR = ROOT / "server" / "generated"
PACKAGE_PREFIX = "server.generated"
# Top-level proto packages (folders under protos/) whose generated imports are rewritten.
PROTO_PACKAGES = ("recsys", "inference")


def generate(out_dir: Path) -> list[Path]:
    """Run grpc_tools.protoc over every proto and fix imports; return written files."""
    from grpc_tools import protoc  # imported lazily: a build-time tool only

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        text = path.read_text()
        fixed = text
        for package in PROTO_PACKAGES:
            fixed = re.sub(
                rf"^from {package}([. ])",
                rf"from {PACKAGE_PREFIX}.{package}\1",
                fixed,
                flags=re.MULTILINE,
            )
        path.write_text(fixed)
        written.append(path)
    for folder in {p.parent for p in written} | {out_dir}:
        init = folder / "__init__.py"
        while folder != out_dir.parent:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated gRPC code; regenerate with `make proto`."""\n')
            folder = folder.parent
    return written


def check() -> int:
    """Regenerate into a temporary folder and compare with the committed files."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = {p.relative_to(tmp) for p in Path(tmp).rglob("*.py*")}
        committed = {p.relative_to(OUT_DIR) for p in OUT_DIR.rglob("*.py*")}
        committed = {p for p in committed if "__pycache__" not in p.parts}
        stale = sorted(
            str(p)
            for p in fresh | committed
            if p not in fresh
            or p not in committed
            or not filecmp.cmp(Path(tmp) / p, OUT_DIR / p, shallow=False)
        )
    if stale:
        print("generated code is out of sync with protos/: " + ", ".join(stale), file=sys.stderr)
        print("run `make proto` and commit the result", file=sys.stderr)
        return 1
    print("generated code is in sync with protos/")
    return 0


def main() -> int:
    """Entry point: generate, or --check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if args.check:
        return check()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for stale in OUT_DIR.rglob("*_pb2*.py*"):
        stale.unlink()
    for path in generate(OUT_DIR):
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
