"""The baseline a team would write first: FastAPI + uvicorn + sentence-transformers.

One endpoint, `POST /embed {"texts": [...]}` → `{"embeddings": [[...], ...]}`, on the
same all-MiniLM-L6-v2 weights (a local folder; nothing is downloaded). A plain `def`
endpoint, so FastAPI runs each request in its thread pool, as most first versions do.
Runs in .venv-peer (benchmarks/setup_peer_venv.sh), never in the project venv:

    .venv-peer/bin/python benchmarks/peer_fastapi_app.py --model DIR --fd N
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Peer-only packages (installed in .venv-peer); mypy resolves them as Any.
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer


class EmbedRequest(BaseModel):
    """Texts to embed."""

    texts: list[str]


class EmbedResponse(BaseModel):
    """One L2-normalised embedding per text, in request order."""

    embeddings: list[list[float]]


def create_app(model_dir: Path) -> Any:
    """The FastAPI app serving `model_dir` on the CPU."""
    model = SentenceTransformer(str(model_dir), device="cpu")
    app = FastAPI(title="peer: FastAPI + sentence-transformers")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(request: EmbedRequest) -> EmbedResponse:
        vectors = model.encode(request.texts, normalize_embeddings=True)
        return EmbedResponse(embeddings=vectors.tolist())

    return app


def main() -> None:
    """Serve the app with uvicorn on an already-bound socket (--fd) or a host and port."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="sentence-transformers folder")
    parser.add_argument("--fd", type=int, help="listening socket inherited from the parent")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()

    import uvicorn

    app = create_app(args.model)
    if args.fd is not None:
        uvicorn.run(app, fd=args.fd, log_level="warning")
    else:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
