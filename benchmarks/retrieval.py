"""HNSW as the export builds it against exact search: recall@10 and QPS per core.

    .venv/bin/python -m benchmarks.retrieval [--sizes 10000,100000,1000000]
        [--queries N] [--ef 16,32,64,128,256] [--m 16] [--real-bundle DIR]

Catalogues: seeded synthetic 384-d unit vectors (a Gaussian mixture, so neighbours are
not trivially separated) at each size, and the real catalogue of a bundle (its item
vectors; queries are the bundle's user vectors for real histories when it has a
sequence head). Indexes come from export.item_index.build_index with the export's
HnswParams, so what is measured is what ships. Everything timed runs on ONE thread
(hnswlib set_num_threads(1), BLAS limited with threadpoolctl): QPS is per core. One
query per call for both HNSW and exact search, as the server runs them; exact search
with a batch of queries per matmul is shown as well. Times are medians of repeats.
Built synthetic indexes are cached (default ~/.cache/irec-bench), so reruns are fast.

Issue goal: at 1M items the default ef_search gives recall@10 ≥ 0.99 at ≥ 20× the
exact-search QPS (one query per call).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import hnswlib
import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks import results as results_file
from export.item_index import build_index, save_index
from server.bundle.loader import load_index
from server.bundle.manifest import HnswParams

DIMENSION = 384  # all-MiniLM-L6-v2's embedding size, the encoder the demo serves
K = 10
DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DEFAULT_EFS = (16, 32, 64, 128, 256)
DEFAULT_QUERIES = 1000
DEFAULT_REPEATS = 3
# Issue 5: the default ef_search must give recall@10 ≥ 0.99 at ≥ 20× exact QPS at 1M items.
GOAL_ITEMS = 1_000_000
GOAL_RECALL = 0.99
GOAL_SPEEDUP = 20.0
# Mixture components per item count (√n: 100 at 10k, 1,000 at 1M) and the noise around
# each centre: cosine(item, its centre) ≈ 0.7, so clusters overlap and HNSW has work to do.
MIXTURE_NOISE = 1.0
# Exact search, one query per call, reads the whole matrix per query: time about this many
# bytes of item vectors per repeat (≥ 20 queries), so 1M items stays within seconds.
EXACT_BYTES_PER_REPEAT = 2e10
EXACT_BATCH = 64  # queries per matmul for the batched exact variant
DEFAULT_HISTORIES = Path("../shared/data/ml-1m-sasrec/ml-1m.txt.gz")


@dataclass(frozen=True)
class VectorCatalogue:
    """Item vectors, queries and the HNSW parameters the export would use for them."""

    name: str
    vectors: np.ndarray
    queries: np.ndarray
    params: HnswParams
    cache_key: str | None = None  # synthetic catalogues are cached by this key


@dataclass(frozen=True)
class Build:
    """How one index was built (or that it came from the cache)."""

    seconds: float
    threads: int
    size_bytes: int
    cached: bool


@dataclass(frozen=True)
class EfResult:
    """Recall and single-thread speed of one ef."""

    ef: int
    recall: float
    qps: float


@dataclass
class Result:
    """Everything measured on one catalogue with one M."""

    catalogue: str
    items: int
    dimension: int
    params: HnswParams
    build: Build
    exact_qps: float
    exact_batched_qps: float
    sweep: list[EfResult] = field(default_factory=list)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (in place for float32 input)."""
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(n: int, num_queries: int, dim: int = DIMENSION, seed: int = 0) -> VectorCatalogue:
    """Seeded unit vectors from a Gaussian mixture of √n components; queries from the same law."""
    rng = np.random.default_rng(seed)
    components = max(10, round(n**0.5))
    centres = unit_rows(rng.standard_normal((components, dim), dtype=np.float32))
    sigma = np.float32(MIXTURE_NOISE / np.sqrt(dim))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 65_536):  # chunks keep the peak memory at the output
            stop = min(count, start + 65_536)
            rows = centres[rng.integers(0, components, size=stop - start)]
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
            out[start:stop] = unit_rows(rows + sigma * noise)
        return out

    vectors = draw(n)
    queries = draw(num_queries)
    return VectorCatalogue(
        name="synthetic",
        vectors=vectors,
        queries=queries,
        params=HnswParams(),
        cache_key=f"synthetic-n{n}-d{dim}-s{seed}-c{components}-sig{MIXTURE_NOISE}",
    )


def real_catalogue(
    bundle_dir: Path, num_queries: int, histories: Path | None = None, seed: int = 0
) -> VectorCatalogue:
    """A bundle's item vectors; queries are user vectors of real histories where possible.

    With a sequence head and a SASRec-format file (`user item` lines, time-ordered, item
    ids = the bundle's item ids), each query is the head's user vector for a sampled user's
    history without its last (test) item. Otherwise queries are item vectors plus noise.
    Parameters follow the export: unnormalised vectors get the MIPS augmentation.
    """
    from server.bundle.loader import load_bundle

    bundle = load_bundle(bundle_dir, device="cpu")
    vectors = bundle.item_embeddings
    rng = np.random.default_rng(seed)
    params = bundle.manifest.hnsw
    norms = np.linalg.norm(vectors, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3 and params.mips_max_norm <= 0:
        params = replace(params, mips_max_norm=float(norms.max()) * 1.0001)
    name = f"real ({bundle.manifest.model_name.split('/')[-1]})"
    if bundle.head is not None and histories is not None and histories.is_file():
        sequences: dict[str, list[int]] = {}
        with gzip.open(histories, "rt") if histories.suffix == ".gz" else histories.open() as f:
            for line in f:
                user, item = line.split()
                row = bundle.row_of_item.get(item)
                if row is not None:
                    sequences.setdefault(user, []).append(row)
        users = sorted(u for u, rows in sequences.items() if len(rows) >= 3)
        picked = rng.choice(len(users), size=min(num_queries, len(users)), replace=False)
        head = bundle.head
        chosen = [sequences[users[int(i)]][:-1][-head.max_length :] for i in picked]
        queries = np.vstack(
            [
                head.user_vectors([(rows, None) for rows in chosen[s : s + 64]])
                for s in range(0, len(chosen), 64)
            ]
        ).astype(np.float32)
        name += ", user vectors of real histories"
    else:
        rows = rng.integers(0, len(vectors), size=num_queries)
        spread = float(vectors.std())
        noise = rng.normal(scale=0.5 * spread, size=(num_queries, vectors.shape[1]))
        queries = (vectors[rows] + noise).astype(np.float32)
        name += ", noisy item vectors as queries"
    return VectorCatalogue(
        name=name, vectors=np.ascontiguousarray(vectors), queries=queries, params=params
    )


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Exact top-k rows by dot product, best first: the ground truth (BLAS threads allowed)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), EXACT_BATCH):
        out[start : start + EXACT_BATCH] = _top_k_rows(
            queries[start : start + EXACT_BATCH] @ vectors.T, k
        )
    return out


def _top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def exact_qps(vectors: np.ndarray, queries: np.ndarray, repeats: int, k: int = K) -> float:
    """Exact search, one query per call (matvec + partial sort), on one thread."""
    count = max(20, int(EXACT_BYTES_PER_REPEAT // vectors.nbytes))
    sample = queries[: min(len(queries), count)]

    def run() -> None:
        for q in sample:
            scores = vectors @ q
            top = np.argpartition(-scores, k - 1)[:k]
            top[np.argsort(-scores[top])]

    with threadpool_limits(limits=1):
        run()  # warm-up: page in the matrix
        return len(sample) / _median_seconds(run, repeats)


def exact_batched_qps(vectors: np.ndarray, queries: np.ndarray, repeats: int, k: int = K) -> float:
    """Exact search, EXACT_BATCH queries per matmul, on one thread."""
    count = max(EXACT_BATCH, int(EXACT_BATCH * EXACT_BYTES_PER_REPEAT // (4 * vectors.nbytes)))
    sample = queries[: min(len(queries), count)]

    def run() -> None:
        for start in range(0, len(sample), EXACT_BATCH):
            _top_k_rows(sample[start : start + EXACT_BATCH] @ vectors.T, k)

    with threadpool_limits(limits=1):
        return len(sample) / _median_seconds(run, repeats)


def build_or_load(
    catalogue: VectorCatalogue, params: HnswParams, cache_dir: Path | None
) -> tuple[hnswlib.Index, Build]:
    """Build with the export's builder (all cores, as the export does) or load a cached build."""
    n, dim = catalogue.vectors.shape
    key = (
        f"{catalogue.cache_key}-M{params.m}-efc{params.ef_construction}"
        if catalogue.cache_key and cache_dir is not None
        else None
    )
    if key is not None and cache_dir is not None:
        path, meta_path = cache_dir / f"{key}.hnsw", cache_dir / f"{key}.json"
        if path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            index = load_index(path, dim, n, params)
            return index, Build(meta["seconds"], meta["threads"], path.stat().st_size, cached=True)
    started = time.perf_counter()
    index = build_index(catalogue.vectors, range(n), params)
    seconds = time.perf_counter() - started
    threads = os.cpu_count() or 1
    if key is not None and cache_dir is not None:
        save_index(index, cache_dir / f"{key}.hnsw")
        (cache_dir / f"{key}.json").write_text(json.dumps({"seconds": seconds, "threads": threads}))
        size = (cache_dir / f"{key}.hnsw").stat().st_size
    else:
        with tempfile.TemporaryDirectory() as tmp:
            save_index(index, Path(tmp) / "index.hnsw")
            size = (Path(tmp) / "index.hnsw").stat().st_size
    index.set_num_threads(1)
    return index, Build(seconds, threads, size, cached=False)


def ef_sweep(
    index: hnswlib.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    params: HnswParams,
    efs: Sequence[int],
    repeats: int,
    k: int = K,
) -> list[EfResult]:
    """Recall@k and one-query-per-call QPS on one thread, for each ef."""
    searched = np.ascontiguousarray(np.stack([params.query_vector(q) for q in queries]))
    index.set_num_threads(1)
    results = []
    for ef in efs:
        index.set_ef(max(ef, k))
        found = np.vstack([index.knn_query(q[None, :], k=k)[0] for q in searched])
        hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, truth, strict=True)]
        recall = float(np.mean(hits)) / k

        def run() -> None:
            for q in searched:
                index.knn_query(q[None, :], k=k)

        results.append(EfResult(ef, recall, len(searched) / _median_seconds(run, repeats)))
    index.set_ef(params.ef_search)
    return results


def measure(
    catalogue: VectorCatalogue,
    efs: Sequence[int],
    ms: Sequence[int],
    repeats: int,
    cache_dir: Path | None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Result]:
    """Ground truth, exact QPS, then per M: build (or load) and sweep ef."""
    n, dim = catalogue.vectors.shape
    log(f"{catalogue.name} {n:,}: ground truth")
    truth = exact_top_k(catalogue.vectors, catalogue.queries)
    log(f"{catalogue.name} {n:,}: exact search timing")
    single = exact_qps(catalogue.vectors, catalogue.queries, repeats)
    batched = exact_batched_qps(catalogue.vectors, catalogue.queries, repeats)
    results = []
    for m in ms:
        params = replace(catalogue.params, m=m)
        log(f"{catalogue.name} {n:,}: HNSW M={m} build or load")
        index, build = build_or_load(catalogue, params, cache_dir)
        log(f"{catalogue.name} {n:,}: HNSW M={m} ef sweep")
        sweep = ef_sweep(index, catalogue.queries, truth, params, efs, repeats)
        results.append(Result(catalogue.name, n, dim, params, build, single, batched, sweep))
        del index
    return results


def goal_verdict(results: Sequence[Result]) -> list[str]:
    """Lines saying whether the default ef_search meets the issue's goal, and what does."""
    synthetic_results = [r for r in results if r.catalogue == "synthetic"]
    if not synthetic_results:
        return ["Goal: no synthetic catalogue measured."]
    largest = max(r.items for r in synthetic_results)
    default = HnswParams()
    note = "" if largest >= GOAL_ITEMS else f" (measured at {largest:,} items, not 1M)"
    lines = [
        f"Issue goal: at 1M items the default ef_search={default.ef_search} gives recall@10 ≥ "
        f"{GOAL_RECALL} at ≥ {GOAL_SPEEDUP:.0f}× exact-search QPS (1 query/call){note}."
    ]
    for r in sorted((r for r in synthetic_results if r.items == largest), key=lambda r: r.params.m):
        meets = [
            e for e in r.sweep if e.recall >= GOAL_RECALL and e.qps >= GOAL_SPEEDUP * r.exact_qps
        ]
        at_default = next((e for e in r.sweep if e.ef == default.ef_search), None)
        label = f"M={r.params.m}, ef_construction={r.params.ef_construction}"
        if at_default is not None:
            met = at_default in meets
            lines.append(
                f"  {label}, default ef_search={default.ef_search}: recall@10 "
                f"{at_default.recall:.4f}, {at_default.qps / r.exact_qps:.0f}× exact QPS → "
                f"{'MET' if met else 'NOT MET'}"
            )
        if meets:
            lines.append(
                f"  ef values that meet it with {label}: {', '.join(str(e.ef) for e in meets)} "
                f"(smallest: {meets[0].ef})"
            )
        else:
            lines.append(f"  no ef in the sweep meets it with {label}")
    return lines


def markdown(results: Sequence[Result]) -> str:
    """The builds table, the recall/QPS table and the goal verdict."""
    lines = [
        "| catalogue | items | dim | M | ef_construction | build s (threads) | index MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        cached = ", cached" if r.build.cached else ""
        lines.append(
            f"| {r.catalogue} | {r.items:,} | {r.dimension} | {r.params.m} | "
            f"{r.params.ef_construction} | {r.build.seconds:.1f} ({r.build.threads}{cached}) | "
            f"{r.build.size_bytes / 2**20:.1f} |"
        )
    lines += [
        "",
        "| catalogue | items | search | recall@10 | QPS per core | × exact (1 query/call) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    seen: set[tuple[str, int]] = set()
    for r in results:
        if (r.catalogue, r.items) not in seen:
            seen.add((r.catalogue, r.items))
            lines.append(
                f"| {r.catalogue} | {r.items:,} | exact, 1 query/call | 1.0000 | "
                f"{r.exact_qps:,.1f} | 1.0 |"
            )
            lines.append(
                f"| {r.catalogue} | {r.items:,} | exact, {EXACT_BATCH} queries/matmul | 1.0000 | "
                f"{r.exact_batched_qps:,.1f} | {r.exact_batched_qps / r.exact_qps:.1f} |"
            )
        for e in r.sweep:
            default = " (default)" if e.ef == HnswParams().ef_search else ""
            lines.append(
                f"| {r.catalogue} | {r.items:,} | HNSW M={r.params.m} ef={e.ef}{default} | "
                f"{e.recall:.4f} | {e.qps:,.0f} | {e.qps / r.exact_qps:,.1f} |"
            )
    return "\n".join([*lines, "", *goal_verdict(results)])


def _optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the markdown tables."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieval")
    parser.add_argument(
        "--sizes", type=_ints, default=list(DEFAULT_SIZES), help="synthetic catalogue sizes"
    )
    parser.add_argument(
        "--queries", type=int, default=DEFAULT_QUERIES, help="queries per catalogue"
    )
    parser.add_argument("--ef", type=_ints, default=list(DEFAULT_EFS), help="ef values to sweep")
    parser.add_argument(
        "--m", type=_ints, default=[HnswParams().m], help="HNSW M values (default: the export's)"
    )
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(env("IREC_BENCH_CACHE", "~/.cache/irec-bench")).expanduser(),
        help="where built synthetic indexes are kept [env: IREC_BENCH_CACHE]",
    )
    parser.add_argument("--no-cache", action="store_true", help="always build, keep nothing")
    parser.add_argument(
        "--real-bundle",
        type=Path,
        default=_optional_path(env("IREC_BENCH_REAL_BUNDLE")),
        help="bundle whose real catalogue is measured too [env: IREC_BENCH_REAL_BUNDLE]",
    )
    parser.add_argument(
        "--real-histories",
        type=Path,
        default=DEFAULT_HISTORIES,
        help="SASRec-format `user item` file for the real catalogue's queries",
    )
    args = parser.parse_args(argv)
    before = results_file.machine()
    cache_dir = None if args.no_cache else args.cache_dir

    def log(message: str) -> None:
        print(f"[retrieval] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    results: list[Result] = []
    if args.real_bundle is not None:
        catalogue = real_catalogue(args.real_bundle, args.queries, args.real_histories, args.seed)
        results += measure(catalogue, args.ef, args.m, args.repeats, None, log)
    for n in args.sizes:
        log(f"synthetic {n:,}: generating")
        catalogue = synthetic(n, args.queries, seed=args.seed)
        results += measure(catalogue, args.ef, args.m, args.repeats, cache_dir, log)
        del catalogue
    print(
        f"HNSW (export.item_index.build_index, space ip, ef_construction "
        f"{HnswParams().ef_construction}) vs exact search; top-{K}, {args.queries} queries, "
        f"one thread, median of {args.repeats}; {os.cpu_count()} cores on this machine.\n"
    )
    table = markdown(results)
    print(table)
    subject = f"sizes {','.join(map(str, args.sizes))}" + (" + real" if args.real_bundle else "")
    print(f"recorded in {results_file.record_table('retrieval', subject, table, before)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
