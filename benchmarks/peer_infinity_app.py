"""infinity-emb's own server on a local model folder, on an inherited listening socket.

What `infinity_emb v2 --model-id DIR --engine torch --device cpu` runs (its FastAPI
app from `create_server`, uvicorn with httptools and uvloop), except that uvicorn
takes the socket the benchmark already bound (`--fd`), so no port is guessed. The
OpenAI-style route is `POST /embeddings {"model": NAME, "input": [...]}`. Runs in
.venv-peer with HF_HUB_OFFLINE=1; nothing is downloaded:

    .venv-peer/bin/python benchmarks/peer_infinity_app.py --model DIR --fd N
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

SERVED_MODEL_NAME = "all-MiniLM-L6-v2"


def main() -> None:
    """Build infinity's app for one torch CPU engine and serve it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="sentence-transformers folder")
    parser.add_argument("--fd", type=int, required=True, help="listening socket from the parent")
    parser.add_argument("--batch-size", type=int, default=32, help="infinity's max batch")
    args = parser.parse_args()

    # Peer-only packages (installed in .venv-peer).
    import uvicorn
    import uvloop
    from infinity_emb.args import EngineArgs
    from infinity_emb.infinity_server import create_server

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    engine_args = EngineArgs(
        model_name_or_path=str(args.model),
        served_model_name=SERVED_MODEL_NAME,
        engine="torch",
        device="cpu",
        batch_size=args.batch_size,
    )
    app = create_server(engine_args_list=[engine_args])
    uvicorn.run(app, fd=args.fd, log_level="warning", http="httptools", loop="uvloop")


if __name__ == "__main__":
    main()
