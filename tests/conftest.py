"""Shared fixtures: a tiny BERT built on the fly, a trained run, an exported bundle, a live server.

Everything is session-scoped and built once (~20 s): the real training, export
and serving code runs on a 2-layer, 32-wide BERT and a small demo dataset.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_USERS = 600


def _test_head():  # type: ignore[no-untyped-def]
    from training.sequence_head import HeadConfig

    # lr_floor 1.0: no budget-aware decay, whose rate follows the wall clock, so a busy
    # machine trains the same model as a quiet one.
    return HeadConfig(
        dim=32,
        max_length=50,
        batch_size=32,
        dropout=0.1,
        epochs=12,
        eval_every=2,
        patience=3,
        lr_floor=1.0,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo_data import generate_demo
    from training.text import render_items
    from training.tiny_model import build_tiny_bert

    texts = render_items(generate_demo(num_users=10).items)
    return build_tiny_bert(texts, tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.run import EncoderConfig, TrainConfig, train

    return train(
        TrainConfig(
            data=f"demo:{TEST_USERS}",
            out=tmp_path_factory.mktemp("runs") / "tiny",
            model=str(tiny_model_dir),
            encoder=EncoderConfig(treatment="finetune", refresh_every=4, learning_rate=1e-3),
            head=_test_head(),
            # The epochs bound it (~1 min on 2 quiet cores), not the clock: on a busy machine
            # a 2-minute budget trained fewer epochs and shipped a different model.
            minutes=10.0,
            clusters=12,
            validation_users=200,
            progress=False,
        )
    )


@pytest.fixture(scope="session")
def bundle_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle; with IREC_TEST_BUNDLE_CACHE=DIR, built once into DIR and reused.

    The cache is for `make mutation`, which reruns a few test files per mutant: the
    training (~20 s) would otherwise dominate each run. Tests never write into a bundle.
    """
    import shutil

    from export.bundle_writer import export_run

    cache = os.environ.get("IREC_TEST_BUNDLE_CACHE")
    if cache and (Path(cache) / "tiny" / "manifest.json").exists():
        return Path(cache) / "tiny"
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_run(request.getfixturevalue("trained_run"), out)
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
        shutil.copytree(out, Path(cache) / "tiny.partial", dirs_exist_ok=True)
        (Path(cache) / "tiny.partial").rename(Path(cache) / "tiny")
    return out


@pytest.fixture(scope="session")
def demo_dataset():  # type: ignore[no-untyped-def]
    from training.demo_data import generate_demo

    return generate_demo(num_users=TEST_USERS)


@dataclass
class LiveServer:
    """A server running on its own event loop thread."""

    target: str
    port: int
    running: object  # server.grpc.app.RunningServer


@contextmanager
def background_server(
    bundle: Path, span_exporter: object = None, **options: object
) -> Iterator[LiveServer]:
    """The real grpc.aio server on 127.0.0.1:0, in its own event-loop thread."""
    from server.config import ServerConfig
    from server.grpc.app import start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = ServerConfig(bundle=bundle, host="127.0.0.1", port=0, device="cpu", **options)  # type: ignore[arg-type]
    running = asyncio.run_coroutine_threadsafe(start_server(config, span_exporter), loop).result(
        timeout=60
    )
    try:
        yield LiveServer(target=f"127.0.0.1:{running.port}", port=running.port, running=running)
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(1.0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(bundle_dir: Path) -> Iterator[LiveServer]:
    """The session's shared server over the tiny bundle."""
    with background_server(bundle_dir) as server:
        yield server
