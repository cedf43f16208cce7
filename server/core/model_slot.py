"""What is served right now, and how it is replaced without dropping a request.

A :class:`Loaded` pairs an engine with its two batchers (histories, texts). Each request
takes the current one once (server.core.dispatch) and uses it to the end, so a reload that
swaps in a new one lets in-flight requests finish on the old bundle; the old batchers
drain and stop after the swap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from server.bundle.loader import load_bundle
from server.bundle.manifest import MANIFEST_FILE, Manifest, ManifestError, read_manifest
from server.config import ServerConfig
from server.core.batcher import MicroBatcher
from server.core.engine import (
    Limits,
    PreparedQuery,
    Recommendation,
    RecommenderEngine,
    RecommendQuery,
)
from server.errors import IrecError, Unavailable
from server.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Loaded:
    """One loaded, warmed bundle with the batchers that feed its encoder.

    `batcher` gathers Recommend queries (histories → user vectors); `text_batcher`
    gathers the texts of Embed calls, one item per text, so Embed batches across calls
    and streams just as Recommend does.
    """

    engine: RecommenderEngine
    batcher: MicroBatcher[PreparedQuery, Recommendation]
    text_batcher: MicroBatcher[str, np.ndarray]

    async def drain_and_close(self) -> None:
        """After a swap: let both batchers finish their work, then stop them."""
        await asyncio.gather(self.batcher.drain_and_close(), self.text_batcher.drain_and_close())

    async def close(self) -> None:
        """Stop both batchers."""
        await asyncio.gather(self.batcher.close(), self.text_batcher.close())

    @property
    def version(self) -> str:
        """The bundle version being served."""
        return self.engine.bundle.version


def load_engine(path: Path, config: ServerConfig) -> RecommenderEngine:
    """Load and verify a bundle, then warm it (first ONNX runs allocate); blocking."""
    bundle = load_bundle(path, config.device, config.intra_op_threads)
    engine = RecommenderEngine(bundle, Limits(max_k=config.max_k), config.catalogue_log)
    ids = [item.item_id for item in bundle.items[:8]]
    for size in (1, min(8, config.max_batch), config.max_batch):
        queries = [engine.prepare(RecommendQuery(history_item_ids=ids, k=5))] * size
        users = engine.user_vectors(queries)
        engine.finish(queries[0], users[0])
    return engine


class ServingState:
    """Holds the current Loaded; swaps are atomic (one reference assignment)."""

    def __init__(
        self, config: ServerConfig, executor: Executor, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.executor = executor
        self.metrics = metrics or Metrics()
        self.metrics.watch_queue(
            lambda: (
                self._loaded.batcher.depth + self._loaded.text_batcher.depth if self._loaded else 0
            )
        )
        self._loaded: Loaded | None = None
        self._reload_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Whether a bundle is loaded and warmed."""
        return self._loaded is not None

    def current(self) -> Loaded:
        """The served bundle, or UNAVAILABLE while none is loaded."""
        loaded = self._loaded
        if loaded is None:
            raise Unavailable("not ready: the bundle is still loading")
        return loaded

    async def load(self, path: Path) -> tuple[Loaded, Loaded | None, float]:
        """Load `path` off the event loop, swap it in; returns (new, old, load ms).

        Raises BundleError (nothing changes) when the bundle is bad.
        """
        async with self._reload_lock:
            started = time.perf_counter()
            loop = asyncio.get_running_loop()
            engine = await loop.run_in_executor(None, load_engine, path, self.config)
            batcher: MicroBatcher[PreparedQuery, Recommendation] = self._batcher(
                engine,
                engine.recommend_batch,
                lambda q: q.cost,
                engine.is_cheap if self.config.lone_requests == "loop" else None,
            )
            text_batcher: MicroBatcher[str, np.ndarray] = self._batcher(
                engine, lambda texts: list(engine.encode_texts(texts)), len
            )
            new = Loaded(engine, batcher, text_batcher)
            old, self._loaded = self._loaded, new
            self.metrics.serving(new.version)
            load_ms = (time.perf_counter() - started) * 1e3
            log.info(
                "serving bundle %s (was %s), loaded in %.0f ms",
                new.version,
                old.version if old else "none",
                load_ms,
            )
            if old is not None:
                loop.create_task(old.drain_and_close())
            return new, old, load_ms

    def _batcher(
        self,
        engine: RecommenderEngine,
        run: Callable[[Sequence[T]], Sequence[R]],
        cost: Callable[[T], int],
        inline: Callable[[T], bool] | None = None,
    ) -> MicroBatcher[T, R]:
        """A batcher over `run` with the server's batching, queue and worker limits.

        `inline`: which lone items may run on the event loop (MicroBatcher).
        """
        return MicroBatcher(
            run,
            cost,
            self.executor,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            max_queue=self.config.max_queue,
            on_batch=self.metrics.batch_size.observe,
            tokenize_clock=engine.take_tokenize_ms,
            max_running=self.config.workers,
            inline=inline,
        )

    async def watch(self, folder: Path, interval_s: float = 2.0) -> None:
        """Serve the newest bundle (by manifest created_at) among folder's subfolders.

        A bundle that fails verification is remembered and not retried until its
        manifest changes; the served one keeps serving.
        """
        refused: set[tuple[Path, float]] = set()
        while True:
            newest = _newest_bundle(folder)
            if newest is not None:
                path, manifest, mtime = newest
                served = self._loaded.version if self._loaded else None
                if manifest.bundle_version != served and (path, mtime) not in refused:
                    try:
                        await self.load(path)
                    except IrecError as exc:
                        refused.add((path, mtime))
                        log.error("refused bundle %s: %s", path, exc)
                    except Exception:  # a surprise must not end the watch: log it, go on
                        refused.add((path, mtime))
                        log.exception("refused bundle %s", path)
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        """Stop the current batcher."""
        if self._loaded is not None:
            await self._loaded.close()


def _newest_bundle(folder: Path) -> tuple[Path, Manifest, float] | None:
    """(path, manifest, manifest mtime) of the newest readable bundle under folder."""
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or not (path / MANIFEST_FILE).is_file():
            continue  # staging folders of an export in progress start with "."
        try:
            manifest = read_manifest(path)
        except ManifestError:
            continue
        found.append((manifest.created_at, path, manifest, (path / MANIFEST_FILE).stat().st_mtime))
    if not found:
        return None
    _, path, manifest, mtime = max(found, key=lambda f: (f[0], f[1].name))
    return path, manifest, mtime
