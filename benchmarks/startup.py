"""How long `irec serve` takes to become SERVING, and its memory, against catalogue size.

    .venv/bin/python -m benchmarks.startup [--sizes 10000,100000,1000000]
        [--source BUNDLE] [--repeats 3] [--breakdown]

For each size a bundle is made from a source bundle (its tokenizer, encoders, sequence
head and centroids) with its items replaced by N synthetic ones: vectors drawn around
the source's own item vectors, texts shaped like rendered catalogue items, clusters by
nearest centroid, and items, clusters, HNSW indexes, checksums and manifest written with
the export's own functions (export.bundle_writer, export.item_index; indexes with
ef_construction INDEX_EF_CONSTRUCTION, which does not change load cost). Each bundle is
served by a fresh `irec serve` child process (irec.server_process.spawn_server); the time is
from spawning it to the first health check answering SERVING for
recsys.v1.RecommenderService, and RSS / peak RSS are read from /proc/PID/status then.
Medians of --repeats starts. Without --source a tiny-BERT bundle is trained and exported
once (as tests/conftest.py does). Bundles are cached (default ~/.cache/irec-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import results as results_file
from export.bundle_writer import (
    checksum_files,
    new_version,
    write_cluster_indexes,
    write_clusters,
    write_items,
)
from export.item_index import build_index, save_index
from server.bundle import manifest as fmt

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
# Issue 12's goals: seconds to SERVING and RSS at these catalogue sizes.
GOALS_S = {100_000: 4.0, 1_000_000: 20.0}
GOALS_RSS_MIB = {1_000_000: 1536.0}
DEFAULT_REPEATS = 3
SERVICE = "recsys.v1.RecommenderService"
# Synthetic item vectors: a source item vector plus Gaussian noise of this fraction of the
# source's per-dimension spread, so the catalogue keeps the source's shape and norms.
NOISE = 0.3
# ef_construction of the synthetic bundles' indexes. Loading an index costs the same
# whatever its search quality (the file's layout and size depend on N and M only), and a
# low value builds a 1M-item bundle several times faster on 2 cores; the manifest records it.
INDEX_EF_CONSTRUCTION = 40
WORDS = (
    "night river shadow golden last secret city love war star silent lost game road dark "
    "house summer king dream blue wild heart time stone fire winter glass iron paper ghost"
).split()
GENRES = (
    "Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()


@dataclass(frozen=True)
class Startup:
    """One `irec serve` start: seconds to SERVING, then RSS and peak RSS in bytes."""

    seconds: float
    rss: int
    peak_rss: int


@dataclass(frozen=True)
class SizeResult:
    """All starts of one bundle."""

    label: str
    items: int
    bundle_bytes: int
    starts: list[Startup]


def _synthetic_rows(source: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """N vectors around randomly picked source rows; unit length if the source's are."""
    spread = source.std(axis=0, keepdims=True).astype(np.float32) * np.float32(NOISE)
    out = np.empty((n, source.shape[1]), dtype=np.float32)
    unit = bool(np.abs(np.linalg.norm(source, axis=1) - 1.0).max() < 1e-3)
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        rows = source[rng.integers(0, len(source), size=stop - start)]
        noise = rng.standard_normal((stop - start, source.shape[1]), dtype=np.float32)
        out[start:stop] = rows + spread * noise
        if unit:
            out[start:stop] /= np.linalg.norm(out[start:stop], axis=1, keepdims=True)
    return out


def _synthetic_records(n: int, rng: np.random.Generator) -> list[dict[str, str]]:
    """Items rendered like the catalogue's: `Title (Year). Genre, Genre` (~60–90 chars)."""
    words = rng.integers(0, len(WORDS), size=(n, 4))
    counts = rng.integers(2, 5, size=n)
    years = rng.integers(1920, 2025, size=n)
    genres = rng.integers(0, len(GENRES), size=(n, 3))
    records = []
    for row in range(n):
        title = " ".join(WORDS[w].capitalize() for w in words[row, : counts[row]]) + f" {row}"
        kinds = ", ".join(dict.fromkeys(GENRES[g] for g in genres[row]))
        records.append(
            {"id": f"s{row}", "title": title, "text": f"{title} ({years[row]}). {kinds}"}
        )
    return records


def synthetic_bundle(
    source: Path,
    n: int,
    out: Path,
    seed: int = 0,
    ef_construction: int = INDEX_EF_CONSTRUCTION,
) -> Path:
    """Write a bundle at `out`: the source's models with N synthetic items; reused if present."""
    if (out / fmt.MANIFEST_FILE).is_file():
        return out
    manifest = fmt.read_manifest(source)
    stage = out.with_name(f".{out.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    head = manifest.sequence_head
    kept = {fmt.TOKENIZER_FILE, fmt.CENTROIDS_FILE, *manifest.encoders.values()}
    if head is not None:
        kept |= {head.file, *([head.projection] if head.projection else [])}
    for name in kept:
        shutil.copy(source / name, stage / name)

    vectors = _synthetic_rows(np.load(source / fmt.ITEM_EMBEDDINGS_FILE), n, rng)
    np.save(stage / fmt.ITEM_EMBEDDINGS_FILE, vectors)
    if head is not None:
        text = _synthetic_rows(np.load(source / head.text_embeddings), n, rng)
        np.save(stage / head.text_embeddings, text)
        del text
    write_items(stage, _synthetic_records(n, rng))

    centroids = np.load(source / fmt.CENTROIDS_FILE)
    nearest = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65_536):
        chunk = vectors[start : start + 65_536]
        unit = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        nearest[start : start + 65_536] = np.argmax(unit @ centroids.T, axis=1)
    source_clusters = json.loads((source / fmt.CLUSTERS_FILE).read_text())["clusters"]
    clusters = []
    for c in source_clusters:
        rows = np.flatnonzero(nearest == int(c["id"])).tolist()
        clusters.append(
            {"id": c["id"], "description": c["description"], "size": len(rows), "item_rows": rows}
        )
    write_clusters(stage, clusters)

    hnsw = replace(manifest.hnsw, ef_construction=ef_construction)
    if hnsw.mips_max_norm > 0:  # as the export: the bound must cover the new vectors
        hnsw = replace(hnsw, mips_max_norm=float(np.linalg.norm(vectors, axis=1).max()) * 1.0001)
    save_index(build_index(vectors, range(n), hnsw), stage / fmt.ALL_ITEMS_INDEX_FILE)
    write_cluster_indexes(stage, vectors, clusters, hnsw)
    del vectors, clusters

    files = checksum_files(stage)
    synthetic = replace(
        manifest,
        bundle_version=new_version(files),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        num_items=n,
        hnsw=hnsw,
        files=files,
        sequence_head=(
            replace(head, trained_items=min(head.trained_items, n)) if head is not None else None
        ),
        training={"synthetic_items": n, "seed": seed, "source": manifest.bundle_version},
    )
    (stage / fmt.MANIFEST_FILE).write_text(synthetic.to_json())
    shutil.rmtree(out, ignore_errors=True)
    stage.rename(out)
    return out


def tiny_bundle(work: Path) -> Path:
    """A tiny-BERT bundle trained and exported with the real code (as tests/conftest.py)."""
    bundle = work / "tiny-bundle"
    if (bundle / fmt.MANIFEST_FILE).is_file():
        return bundle
    from export.bundle_writer import export_run
    from training.demo_data import generate_demo
    from training.run import EncoderConfig, TrainConfig, train
    from training.sequence_head import HeadConfig
    from training.text import render_items
    from training.tiny_model import build_tiny_bert

    model = build_tiny_bert(render_items(generate_demo(num_users=10).items), work / "tiny-bert")
    run = train(
        TrainConfig(
            data="demo:600",
            out=work / "tiny-run",
            model=str(model),
            clusters=12,
            validation_users=200,
            encoder=EncoderConfig(treatment="frozen"),
            head=HeadConfig(dim=32, max_length=50, epochs=2),
            progress=False,
        )
    )
    export_run(run, bundle)
    return bundle


def _status_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def wait_serving(port: int, timeout_s: float) -> None:
    """Poll grpc.health.v1 until SERVICE answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{SERVICE} not SERVING after {timeout_s:.0f} s")
            time.sleep(0.02)


@contextmanager
def _served(bundle: Path, timeout_s: float, prefix: str) -> Iterator[tuple[int, int, float]]:
    """`irec serve` on the bundle until SERVING: (pid, port, seconds from spawn); then stopped."""
    from irec.server_process import spawn_server

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        log_path = Path(tmp) / "serve.log"
        with log_path.open("w") as log:
            started = time.perf_counter()
            try:
                process, port = spawn_server(
                    ["--bundle", str(bundle), "--device", "cpu"],
                    Path(tmp) / "port",
                    stdout=log,
                    timeout_s=timeout_s,
                )
            except Exception as exc:
                raise RuntimeError(f"{exc}; server log:\n{log_path.read_text()[-3000:]}") from exc
            try:
                wait_serving(port, timeout_s)
                yield process.pid, port, time.perf_counter() - started
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except Exception:
                    process.kill()
                    process.wait()


def measure_start(bundle: Path, timeout_s: float = 600.0) -> Startup:
    """Spawn `irec serve` on the bundle, time it to SERVING, read its memory, stop it."""
    with _served(bundle, timeout_s, "irec-startup-") as (pid, _, seconds):
        rss, peak = _status_bytes(pid)
    return Startup(seconds, rss, peak)


def measure_reload(bundle: Path, timeout_s: float = 600.0) -> Startup:
    """Serve the bundle, then ReloadBundle it again (both held while the new one loads).

    Seconds are the reload's; RSS and peak RSS are read once it has returned.
    """
    import grpc

    from server.generated.recsys.v1 import recommender_pb2 as pb
    from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc

    with _served(bundle, timeout_s, "irec-reload-") as (pid, port, _):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = pb_grpc.RecommenderAdminStub(channel)
            started = time.perf_counter()
            admin.ReloadBundle(pb.ReloadBundleRequest(path=str(bundle)), timeout=timeout_s)
            seconds = time.perf_counter() - started
        rss, peak = _status_bytes(pid)
    return Startup(seconds, rss, peak)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(
    label: str, bundle: Path, items: int, repeats: int, log: Callable[[str], None]
) -> SizeResult:
    """All starts of one bundle."""
    starts = []
    for attempt in range(repeats):
        starts.append(measure_start(bundle))
        log(f"{label} {items:,}: start {attempt + 1}: {starts[-1].seconds:.2f} s")
    return SizeResult(label, items, _folder_bytes(bundle), starts)


@contextmanager
def _timing(targets: Sequence[tuple[Any, str]], totals: dict[str, float]) -> Iterator[None]:
    """Replace module attributes by wrappers that add their wall time to totals."""
    originals = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - started

        return timed

    for owner, name, function in originals:
        setattr(owner, name, wrap(name, function))
    try:
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def load_breakdown(bundle: Path) -> dict[str, float]:
    """Seconds per stage of the server's bundle load (in this process; one run)."""
    import server.bundle.loader as loader
    import server.core.engine as engine
    from server.config import ServerConfig
    from server.core.model_slot import load_engine

    totals: dict[str, float] = {}
    targets = [
        (loader.fmt, "verify_checksums"),
        (loader, "_load_items"),
        (loader, "load_index"),
        (loader, "create_session"),
        (loader, "_load_head"),
        (engine, "Catalogue"),
    ]
    started = time.perf_counter()
    with _timing(targets, totals):
        load_engine(bundle, ServerConfig(bundle=bundle, device="cpu"))
    totals["load_engine (total)"] = time.perf_counter() - started
    return totals


def markdown(results: Sequence[SizeResult]) -> str:
    """One row per bundle: median time to SERVING, RSS and peak RSS."""
    lines = [
        "| bundle | items | bundle MiB | start → SERVING s, median (min–max) "
        "| RSS MiB, median | peak RSS MiB, median |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        seconds = [s.seconds for s in r.starts]
        lines.append(
            f"| {r.label} | {r.items:,} | {r.bundle_bytes / 2**20:,.0f} | "
            f"{statistics.median(seconds):.2f} ({min(seconds):.2f}–{max(seconds):.2f}) | "
            f"{statistics.median(s.rss for s in r.starts) / 2**20:,.0f} | "
            f"{statistics.median(s.peak_rss for s in r.starts) / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def as_json(result: SizeResult) -> dict[str, Any]:
    """One size's figures as startup.json records them (medians; MiB)."""
    return {
        "label": result.label,
        "items": result.items,
        "bundle_mib": result.bundle_bytes / 2**20,
        "seconds_to_serving": statistics.median(s.seconds for s in result.starts),
        "rss_mib": statistics.median(s.rss for s in result.starts) / 2**20,
        "peak_rss_mib": statistics.median(s.peak_rss for s in result.starts) / 2**20,
        "starts_s": [s.seconds for s in result.starts],
        "goal_s": GOALS_S.get(result.items),
        "goal_rss_mib": GOALS_RSS_MIB.get(result.items),
    }


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the bundles, start each --repeats times, print the table."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    parser.add_argument("--sizes", type=_ints, default=list(DEFAULT_SIZES), help="item counts")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="starts per bundle")
    parser.add_argument(
        "--source",
        type=Path,
        default=_optional_path(env("IREC_BENCH_SOURCE_BUNDLE")),
        help="bundle whose models are reused (default: a tiny-BERT bundle built once) "
        "[env: IREC_BENCH_SOURCE_BUNDLE]",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(env("IREC_BENCH_CACHE", "~/.cache/irec-bench")).expanduser(),
        help="where the synthetic bundles are kept [env: IREC_BENCH_CACHE]",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the load stages of the largest bundle"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, help="where startup.json goes")
    parser.add_argument(
        "--reload", action="store_true", help="also hot-reload the largest bundle once, measured"
    )
    args = parser.parse_args(argv)
    before = results_file.machine()

    def log(message: str) -> None:
        print(f"[startup] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    source = args.source or tiny_bundle(args.cache_dir / "tiny")
    manifest = fmt.read_manifest(source)
    name = manifest.model_name.split("/")[-1] + (" + head" if manifest.sequence_head else "")
    results = [measure(f"source ({name})", source, manifest.num_items, args.repeats, log)]
    sources = {manifest.num_items}
    bundles = []
    for n in args.sizes:
        out = (
            args.cache_dir
            / "bundles"
            / f"{manifest.bundle_version}-n{n}-s{args.seed}-efc{INDEX_EF_CONSTRUCTION}"
        )
        log(f"synthetic {n:,}: bundle at {out}")
        bundles.append(synthetic_bundle(source, n, out, args.seed))
        results.append(measure(f"synthetic ({name})", bundles[-1], n, args.repeats, log))
    print(
        f"`irec serve --device cpu`: spawn → health SERVING for {SERVICE}; memory from "
        f"/proc/PID/status once SERVING; median of {args.repeats} starts; "
        f"{os.cpu_count()} cores on this machine.\n"
    )
    print(markdown(results))
    stages: dict[str, float] = {}
    if args.breakdown and bundles:
        stages = load_breakdown(bundles[-1])
        print(f"\nLoad stages of the {args.sizes[-1]:,}-item bundle (in-process, one run):\n")
        print("| stage | s |\n|---|---:|")
        for stage, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
            print(f"| {stage} | {seconds:.2f} |")
    reload: dict[str, float] = {}
    if args.reload and bundles:
        done = measure_reload(bundles[-1])
        reload = {
            "reload_s": done.seconds,
            "rss_after_reload_mib": done.rss / 2**20,
            "peak_rss_during_reload_mib": done.peak_rss / 2**20,
        }
        print(f"\nReload of the {args.sizes[-1]:,}-item bundle into itself: {reload}")
    entries = {
        str(r.items): {
            **as_json(r),
            "source": r.items in sources and r.label.startswith("source"),
            **({"load_stages_s": stages} if stages and r is results[-1] else {}),
            **(reload if reload and r is results[-1] else {}),
        }
        for r in results
    }
    path = results_file.record(
        "startup", "sizes", entries, before, args.results_dir, list(argv) if argv else None
    )
    print(f"\nrecorded in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
