"""`irec demo`: the whole path on the built-in demo data, ending with answers from a live server.

train (brief fine-tune) → export (verified bundle) → `irec serve` in a child
process on a free loopback port → unary and streaming Recommend calls for a few
demo users → SIGTERM, drained stop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from export.bundle_writer import export_run
from irec.client import RecommenderClient, format_response, make_request
from irec.server_process import ServerStartError, spawn_server
from server.bundle.manifest import read_manifest
from server.config import option
from training.demo_data import generate_demo
from training.run import EncoderConfig, TrainConfig, train
from training.sequence_head import HeadConfig

log = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DemoConfig:
    """What `irec demo` takes."""

    # Field metadata makes a field an option of `irec demo` (irec.options).
    workdir: Path = field(
        default=Path("demo-output"), metadata=option("where the run and bundle go")
    )
    model: str | None = field(
        default=None,
        metadata=option("Hugging Face encoder folder (default: packaged all-MiniLM-L6-v2)"),
    )
    # Sequence-head epochs (the encoder's top layers train with it).
    epochs: int = field(default=6, metadata=option("sequence-head epochs (brief on purpose)"))
    minutes: float = field(default=3.0, metadata=option("time budget of training"))
    users: int = field(default=5, metadata=option("demo users to show"))
    seed: int = field(default=0, metadata=option("random seed"))


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def _pick_users(count: int) -> list[tuple[str, list[str], list[str]]]:
    """Demo users with one, two and three interests: (user, item IDs, their categories)."""
    dataset = generate_demo()
    category = dict(
        zip(dataset.items["item_id"], (c[0] for c in dataset.items["categories"]), strict=True)
    )
    by_interests: dict[int, list[tuple[str, list[str], list[str]]]] = {1: [], 2: [], 3: []}
    for user, items in dataset.sequences().items():
        cats = [category[i] for i in items]
        n = len(set(cats))
        if n in by_interests and len(items) >= 12:
            by_interests[n].append((user, items, cats))
    picked: list[tuple[str, list[str], list[str]]] = []
    while len(picked) < count and any(by_interests.values()):
        for n in (1, 2, 3):
            if by_interests[n] and len(picked) < count:
                picked.append(by_interests[n].pop(0))
    return picked


def _start_server(bundle: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    server_log = (workdir / "server.log").open("wb")
    try:
        return spawn_server(
            ["--bundle", str(bundle)], workdir / "server.port", server_log, SERVER_START_TIMEOUT_S
        )
    except ServerStartError as exc:
        raise RuntimeError(f"{exc}; see {workdir / 'server.log'}") from exc


def run_demo(config: DemoConfig) -> int:
    """Run the demo; return the exit code."""
    started = time.perf_counter()
    workdir = config.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    _banner("1/4 train: demo data → encoder fine-tuned with the sequence head → clusters")
    run = train(
        TrainConfig(
            data="demo",
            out=workdir / "runs" / "demo",
            model=config.model,
            encoder=EncoderConfig(treatment="finetune", refresh_every=8),
            head=HeadConfig(epochs=config.epochs, eval_every=1, patience=2),
            minutes=config.minutes,
            clusters=None,
            seed=config.seed,
            validation_users=500,
        )
    )

    _banner("2/4 export: ONNX int8 + fp16, parity gate, HNSW indexes, manifest")
    bundle = workdir / "bundles" / "demo"
    export_run(run, bundle)

    _banner("3/4 serve: irec serve on a free loopback port")
    process, port = _start_server(bundle, workdir)
    target = f"127.0.0.1:{port}"
    log.info("server pid %d listening on %s", process.pid, target)
    try:
        with RecommenderClient(target) as client:
            client.wait_ready(30)
            info = client.info()
            print(
                f"bundle {info.bundle_version}: {info.model_name}, {info.num_items} items, "
                f"{len(info.clusters)} clusters, providers {', '.join(info.providers)}"
            )
            for c in info.clusters:
                print(f"  cluster #{c.cluster_id:<3} {c.size:>5} users  {c.description}")

            _banner("4/4 query: unary Recommend per demo user, then one RecommendStream")
            users = _pick_users(config.users)
            # Users with several interests are answered per interest (needs the head).
            has_head = read_manifest(bundle).sequence_head is not None
            for user, items, cats in users:
                mix = ", ".join(f"{c} ×{n}" for c, n in Counter(cats).most_common())
                interests = len(set(cats)) if has_head and len(set(cats)) > 1 else 0
                print(
                    f"\nuser {user}: {len(items)} items ({mix})"
                    + (f", asked for {interests} interests" if interests else "")
                )
                response = client.recommend(
                    make_request(items, k=6, request_id=f"user-{user}", num_interests=interests)
                )
                print(format_response(response))

            requests = [make_request(items, k=3, request_id=f"user-{u}") for u, items, _ in users]
            requests.append(make_request([], k=3, request_id="bad-empty-history"))
            requests.append(
                make_request(
                    history_texts=["space opera with androids"], k=3, request_id="free-text"
                )
            )
            print("\nRecommendStream (one bad request included; the stream carries on):")
            for response in client.recommend_stream(requests):
                top = ", ".join(i.title for i in response.items)
                if response.HasField("error"):
                    print(f"  {response.request_id}: error: {response.error.message}")
                else:
                    print(
                        f"  {response.request_id}: cluster #{response.clusters[0].cluster_id} "
                        f"({response.clusters[0].description}) → {top}"
                    )
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        log.info("server stopped (exit %d); log in %s", code, workdir / "server.log")
    log.info("demo finished in %.0f s", time.perf_counter() - started)
    return 0 if code == 0 else 1
