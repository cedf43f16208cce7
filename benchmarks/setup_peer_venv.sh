#!/usr/bin/env bash
# Build .venv-peer: the peer embedding servers for benchmarks/peer.py
# (FastAPI + uvicorn + sentence-transformers, and infinity-emb), kept apart from
# .venv so the project's pinned versions never move. Idempotent: a stamp file
# records the requirement set; a second run with the same set does nothing.
#
#   bash benchmarks/setup_peer_venv.sh [VENV_DIR]   (default: .venv-peer)
#
# Versions: the set pip resolves for infinity-emb 0.0.78 with torch 2.13.0 (the
# local CPU wheel; an unpinned torch can pull a multi-GB CUDA build). infinity-emb
# 0.0.78 caps sentence-transformers < 4 and transformers < 5.
set -euo pipefail

cd "$(dirname "$0")/../.."
VENV="${1:-.venv-peer}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS=(
  "torch==2.13.0"
  "sentence-transformers==3.4.1"
  "transformers==4.57.6"
  "fastapi==0.165.0"
  "uvicorn[standard]==0.32.1"
  "orjson==3.13.0"
  "infinity-emb[server,torch]==0.0.78"
)
STAMP="$VENV/.peer-installed"
WANT="${REQUIREMENTS[*]}"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[peer] $VENV is up to date"
  exit 0
fi

echo "[peer] building $VENV (first time: about a minute)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check -q)
# torch first, alone, so the resolver never looks for another build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "${REQUIREMENTS[@]}"
"$VENV/bin/pip" check
echo "$WANT" > "$STAMP"
echo "[peer] $VENV ready"
