"""`irec score`: batch inference over a Parquet table of users with the server's engine.

One encoder implementation: every row becomes a :class:`RecommendQuery` and goes through
the same ``RecommenderEngine`` (prepare → user_vectors → finish) that answers Recommend,
loaded with the server's own ``load_engine``. Two backends run it:

- ``local``: streams each input file with ``pyarrow`` (``iter_batches``) and writes one
  part file per input batch, ``part-FFFFF-BBBBBB.parquet`` (input file F, batch B).
- ``ray``: per input file, a Ray Data pipeline ``read_parquet → repartition (streaming,
  batch-sized blocks, so one file feeds every actor) → map_batches(ScorerActor, actor
  pool) → write_parquet`` into ``part-FFFFF/``; each actor loads the bundle once.

Restarts: a part (local: an input batch; ray: an input file) is written under a hidden
temporary name and renamed into place only when complete, so a part that exists is
finished; a rerun skips it and says so. ``_scoring.json`` in the output folder records the
settings that decide the parts (backend, batch size, bundle, k, clusters, inputs); a rerun
with other settings is refused rather than mixing two runs in one folder.

A row that the engine refuses (e.g. a history of unknown item IDs only) gets its message in
the ``error`` column and null results; it never fails the job. Bad input files (missing
column, wrong type) fail before any scoring with an error naming the file and the column.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from server.bundle.manifest import read_manifest
from server.config import ServerConfig, option
from server.core.batcher import LENGTH_SPREAD
from server.core.engine import PreparedQuery, Recommendation, RecommenderEngine, RecommendQuery
from server.core.model_slot import load_engine
from server.errors import IrecError

log = logging.getLogger(__name__)

BACKENDS = ("local", "ray")
SETTINGS_FILE = "_scoring.json"
# Queries per encoder run: the server's default max_batch, so runs look like the server's.
ENCODE_BATCH = ServerConfig.max_batch
# Per-actor CPU request on a CPU cluster: below 1 so that read and write tasks always find
# a CPU (1 CPU per actor deadlocks Ray Data on a 2-core machine; ../shared/REFERENCE.md).
ACTOR_CPUS = 0.5

REQUIRED_COLUMNS = {"user_id": "string", "history_item_ids": "list<string>"}
OPTIONAL_COLUMNS = {"history_texts": "list<string>"}

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string()),
        pa.field("cluster_ids", pa.list_(pa.int32())),
        pa.field("cluster_scores", pa.list_(pa.float32())),
        pa.field("item_ids", pa.list_(pa.string())),
        pa.field("item_scores", pa.list_(pa.float32())),
        pa.field("unknown_item_ids", pa.list_(pa.string())),
        pa.field("bundle_version", pa.string()),
        pa.field("error", pa.string()),
    ]
)


class ScoringError(IrecError):
    """Bad input, options or output folder; the message names the file, column or option."""


@dataclass(frozen=True)
class ScoreOptions:
    """What to score, where to write it, and how."""

    # Field metadata makes a field an option of `irec score` (irec.options).
    bundle: Path = field(metadata=option("bundle folder"))
    input: Path = field(
        metadata=option(
            "Parquet file or folder: user_id, history_item_ids (oldest first)[, history_texts]"
        )
    )
    output: Path = field(metadata=option("folder of part files (a rerun resumes)"))
    backend: str = field(
        default="local",
        metadata=option(
            "who runs the engine: this process (local) or a Ray cluster", choices=("local", "ray")
        ),
    )
    batch_size: int = field(default=1024, metadata=option("users per batch (local: per part file)"))
    k: int = field(default=10, metadata=option("items per user", short="-k"))
    num_clusters: int = field(
        default=3, metadata=option("clusters per user (0 = server default)", "--clusters")
    )
    # Local backend: auto | cpu | cuda; ray: cuda where GPUs exist.
    device: str = field(
        default="auto",
        metadata=option(
            "ONNX Runtime device (ray: one GPU per actor where the cluster has GPUs)",
            choices=("auto", "cpu", "cuda"),
        ),
    )
    # ONNX Runtime intra-op threads (0 = default; ray: cores / workers).
    threads: int = field(default=0, metadata=option("ONNX Runtime threads (0 = default)"))
    workers: int = field(default=2, metadata=option("Ray actors, each loading the bundle once"))
    address: str | None = field(
        default=None, metadata=option("Ray cluster to join (default: start a local one)")
    )
    progress: bool = True


@dataclass
class ScoreSummary:
    """What a run did: parts written and skipped, rows scored, rows with an error."""

    output: Path
    parts_written: int = 0
    parts_skipped: int = 0
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0
    part_rows: list[int] = field(default_factory=list)

    @property
    def users_per_s(self) -> float:
        """Scored rows per second of wall time."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def score(options: ScoreOptions) -> ScoreSummary:
    """Score options.input into options.output with the chosen backend."""
    if options.backend == "local":
        return score_local(options)
    if options.backend == "ray":
        return score_ray(options)
    raise ScoringError(f"--backend: {options.backend!r} is not one of {', '.join(BACKENDS)}")


# -- input and output ------------------------------------------------------------------


def input_files(path: Path) -> list[Path]:
    """The Parquet files of `path` (a file, or a folder such as Spark/Ray output), checked."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*.parquet")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
        if not files:
            raise ScoringError(f"{path}: no .parquet files in this folder")
    else:
        raise ScoringError(f"{path}: no such file or folder")
    for file in files:
        check_input_schema(file)
    return files


def _is_string(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _is_string_list(kind: pa.DataType) -> bool:
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    # list<null>: every list empty (what pyarrow and pandas infer for that) is fine too.
    return bool(is_list and (_is_string(kind.value_type) or pa.types.is_null(kind.value_type)))


def check_input_schema(path: Path) -> bool:
    """Raise ScoringError naming the file and column if the schema is wrong; has texts?"""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise ScoringError(f"{path}: not a readable Parquet file ({exc})") from exc
    for name, expected in REQUIRED_COLUMNS.items():
        if name not in schema.names:
            found = ", ".join(schema.names) or "none"
            raise ScoringError(f"{path}: no column {name!r} (expected {expected}; found {found})")
    checks = {"user_id": _is_string, "history_item_ids": _is_string_list}
    checks["history_texts"] = _is_string_list
    for name, check in checks.items():
        if name in schema.names and not check(schema.field(name).type):
            expected = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}[name]
            raise ScoringError(
                f"{path}: column {name!r} is {schema.field(name).type}, expected {expected}"
            )
    return "history_texts" in schema.names


def _read_columns(path: Path) -> list[str]:
    names = pq.read_schema(path).names
    return [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in names]


def _check_options(options: ScoreOptions) -> str:
    """Option ranges against the bundle's manifest; returns the bundle version."""
    manifest = read_manifest(options.bundle)
    max_k = min(ServerConfig.max_k, manifest.num_items)
    if not 1 <= options.k <= max_k:
        raise ScoringError(f"--k: {options.k} is out of range: give 1..{max_k}")
    if not 0 <= options.num_clusters <= manifest.num_clusters:
        raise ScoringError(
            f"--clusters: {options.num_clusters} is out of range: "
            f"give 0..{manifest.num_clusters} (0 = default)"
        )
    if options.batch_size < 1:
        raise ScoringError(f"--batch-size: must be ≥ 1, got {options.batch_size}")
    if options.workers < 1:
        raise ScoringError(f"--workers: must be ≥ 1, got {options.workers}")
    return manifest.bundle_version


def _open_output(options: ScoreOptions, bundle_version: str, files: Sequence[Path]) -> None:
    """Create the output folder, or check that a previous run used the same settings."""
    out = options.output
    if out.exists() and not out.is_dir():
        raise ScoringError(f"{out}: --output exists and is not a folder")
    settings: dict[str, Any] = {
        "backend": options.backend,
        "bundle_version": bundle_version,
        "k": options.k,
        "num_clusters": options.num_clusters,
        "inputs": [str(f.resolve()) for f in files],
    }
    if options.backend == "local":  # ray parts are whole files; the batch size does not matter
        settings["batch_size"] = options.batch_size
    path = out / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(key for key in settings if before.get(key) != settings[key])
        if changed:
            raise ScoringError(
                f"{out}: written by an earlier run with other settings ({', '.join(changed)}); "
                "rerun with the same settings to resume, or give a new --output"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise ScoringError(f"{out}: --output is a non-empty folder not written by irec score")
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))


def _write_atomically(path: Path, write: Any) -> None:
    """write(tmp) then rename tmp → path, so `path` exists only when complete."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_file():
            tmp.unlink()


# -- the shared core ---------------------------------------------------------------------


def _column(table: pa.Table | pa.RecordBatch, name: str) -> list[Any]:
    if name not in table.schema.names:
        return [None] * table.num_rows
    return table.column(name).to_pylist()


def _query(
    history_item_ids: list[str | None] | None,
    history_texts: list[str | None] | None,
    k: int,
    num_clusters: int,
) -> RecommendQuery:
    for name, values in (("history_item_ids", history_item_ids), ("history_texts", history_texts)):
        for position, value in enumerate(values or ()):
            if value is None:
                raise ScoringError(f"{name}[{position}]: null")
    return RecommendQuery(
        history_item_ids=[str(v) for v in history_item_ids or ()],
        history_texts=[str(v) for v in history_texts or ()],
        k=k,
        num_clusters=num_clusters,
    )


def _encoder_runs(prepared: list[tuple[int, PreparedQuery]]) -> Iterator[list[int]]:
    """Positions into `prepared`, sorted by cost and cut into runs like the server's batcher."""
    run: list[int] = []
    first_cost = 0
    for position in sorted(range(len(prepared)), key=lambda p: prepared[p][1].cost):
        cost = prepared[position][1].cost
        if run and (len(run) >= ENCODE_BATCH or cost > max(first_cost, 8) * LENGTH_SPREAD):
            yield run
            run = []
        if not run:
            first_cost = cost
        run.append(position)
    if run:
        yield run


def score_table(
    engine: RecommenderEngine, table: pa.Table | pa.RecordBatch, k: int, num_clusters: int
) -> pa.Table:
    """Score every row of `table` (input columns) → a table with OUTPUT_SCHEMA."""
    user_ids = _column(table, "user_id")
    histories = _column(table, "history_item_ids")
    texts = _column(table, "history_texts")
    answers: list[Recommendation | None] = [None] * table.num_rows
    errors: list[str | None] = [None] * table.num_rows
    prepared: list[tuple[int, PreparedQuery]] = []
    for row in range(table.num_rows):
        try:
            if user_ids[row] is None:
                raise ScoringError("user_id: null")
            query = _query(histories[row], texts[row], k, num_clusters)
            prepared.append((row, engine.prepare(query)))
        except IrecError as exc:
            errors[row] = str(exc)
    for run in _encoder_runs(prepared):
        users = engine.user_vectors([prepared[p][1] for p in run])
        for position, user in zip(run, users, strict=True):
            row, ready = prepared[position]
            try:
                answers[row] = engine.finish(ready, user)
            except IrecError as exc:
                errors[row] = str(exc)
    version = engine.bundle.version

    def column(get: Any) -> list[Any]:
        return [None if a is None else get(a) for a in answers]

    return pa.Table.from_pydict(
        {
            "user_id": user_ids,
            "cluster_ids": column(lambda a: [c.cluster_id for c in a.clusters]),
            "cluster_scores": column(lambda a: [c.score for c in a.clusters]),
            "item_ids": column(lambda a: [i.item_id for i in a.items]),
            "item_scores": column(lambda a: [i.score for i in a.items]),
            "unknown_item_ids": column(lambda a: list(a.unknown_item_ids)),
            "bundle_version": [version] * table.num_rows,
            "error": errors,
        },
        schema=OUTPUT_SCHEMA,
    )


# -- local backend -----------------------------------------------------------------------


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar over rows when stderr is a terminal, or None (then a log line per part)."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, unit="users", desc="irec score", dynamic_ncols=True)


def score_local(options: ScoreOptions) -> ScoreSummary:
    """Stream each input file batch by batch through one engine in this process."""
    started = time.perf_counter()
    files = input_files(options.input)
    version = _check_options(options)
    _open_output(options, version, files)
    engine = load_engine(
        options.bundle,
        ServerConfig(
            bundle=options.bundle, device=options.device, intra_op_threads=options.threads
        ),
    )
    summary = ScoreSummary(options.output)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    bar = _progress(total, options.progress)
    try:
        for file_index, path in enumerate(files):
            source = pq.ParquetFile(path)
            batches = source.iter_batches(options.batch_size, columns=_read_columns(path))
            for batch_index, batch in enumerate(batches):
                part = options.output / f"part-{file_index:05d}-{batch_index:06d}.parquet"
                if part.is_file():
                    summary.parts_skipped += 1
                    log.info("%s exists (finished by an earlier run): skipped", part.name)
                else:
                    table = score_table(engine, batch, options.k, options.num_clusters)
                    _write_atomically(part, lambda tmp, t=table: pq.write_table(t, tmp))
                    summary.parts_written += 1
                    summary.rows += table.num_rows
                    summary.part_rows.append(table.num_rows)
                    summary.errors += table.num_rows - table.column("error").null_count
                    if bar is None:
                        log.info("wrote %s (%d users)", part.name, table.num_rows)
                if bar is not None:
                    bar.update(batch.num_rows)
    finally:
        if bar is not None:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


# -- ray backend -------------------------------------------------------------------------


class ScorerActor:
    """A Ray Data actor: loads the bundle once, then scores pyarrow batches with it."""

    def __init__(self, bundle: str, k: int, num_clusters: int, device: str, threads: int) -> None:
        self.engine = load_engine(
            Path(bundle),
            ServerConfig(bundle=Path(bundle), device=device, intra_op_threads=threads),
        )
        self.k = k
        self.num_clusters = num_clusters

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Score one batch of input rows."""
        return score_table(self.engine, batch, self.k, self.num_clusters)


@dataclass(frozen=True)
class RayPlan:
    """How the actor pool uses the connected cluster."""

    num_cpus: float  # per actor
    num_gpus: float | None  # per actor
    device: str
    threads: int  # ONNX Runtime intra-op threads per actor
    workers: int  # actors


def _ray_plan(options: ScoreOptions) -> RayPlan:
    """One GPU per actor where the cluster has GPUs, else ACTOR_CPUS CPUs per actor."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = options.workers
    if gpus > 0 and options.device != "cpu":
        if workers > gpus:
            log.warning("--workers %d > %d GPUs: using %d actors", workers, gpus, gpus)
            workers = gpus
        threads = options.threads or max(1, int(resources.get("CPU", 1)) // workers)
        return RayPlan(ACTOR_CPUS, 1.0, "cuda", threads, workers)
    if options.device == "cuda":
        raise ScoringError("--device cuda: the Ray cluster has no GPUs")
    cpus = int(resources.get("CPU", 1))
    if workers * ACTOR_CPUS >= cpus:
        log.warning(
            "--workers %d × %.1f CPU leaves no CPU of %d for reading and writing; "
            "Ray Data may stall",
            workers,
            ACTOR_CPUS,
            cpus,
        )
    threads = options.threads or max(1, (os.cpu_count() or 1) // workers)
    return RayPlan(ACTOR_CPUS, None, "cpu", threads, workers)


def score_ray(options: ScoreOptions) -> ScoreSummary:
    """Score each input file with a Ray Data actor pool; one output folder per input file.

    Joins `options.address` when given, uses an already initialised Ray as is, and
    otherwise starts a local Ray with logical CPUs to spare (shut down at the end).
    The output folder must be visible to every node (a shared filesystem).
    """
    import ray

    started = time.perf_counter()
    files = input_files(options.input)
    version = _check_options(options)
    _open_output(options, version, files)
    initialised_here = False
    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address)
        else:
            cores = os.cpu_count() or 1
            # Logical CPUs: actors at ACTOR_CPUS each plus read/write tasks always fit.
            ray.init(
                num_cpus=max(4, cores, math.ceil(options.workers * ACTOR_CPUS) + 2),
                include_dashboard=False,
            )
        initialised_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = options.progress
        plan = _ray_plan(options)
        summary = ScoreSummary(options.output)
        for file_index, path in enumerate(files):
            part = options.output / f"part-{file_index:05d}"
            if part.is_dir():
                summary.parts_skipped += 1
                log.info("%s exists (finished by an earlier run): skipped", part.name)
                continue
            tmp = options.output / f".{part.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            dataset = (
                ray.data.read_parquet(str(path.resolve()), columns=_read_columns(path))
                # Streaming split into batch-sized blocks: one input file still feeds
                # every actor (a single-file read is a single block otherwise).
                .repartition(target_num_rows_per_block=options.batch_size)
                .map_batches(
                    ScorerActor,
                    fn_constructor_kwargs={
                        "bundle": str(options.bundle.resolve()),
                        "k": options.k,
                        "num_clusters": options.num_clusters,
                        "device": plan.device,
                        "threads": plan.threads,
                    },
                    compute=ray.data.ActorPoolStrategy(size=plan.workers),
                    batch_size=options.batch_size,
                    batch_format="pyarrow",
                    num_cpus=plan.num_cpus,
                    num_gpus=plan.num_gpus,
                )
            )
            dataset.write_parquet(str(tmp.resolve()))
            tmp.mkdir(exist_ok=True)  # an empty input writes no file
            os.replace(tmp, part)
            rows, errors = _count(part)
            summary.parts_written += 1
            summary.rows += rows
            summary.part_rows.append(rows)
            summary.errors += errors
            log.info("wrote %s (%d users, %d errors) from %s", part.name, rows, errors, path)
    finally:
        if initialised_here:
            ray.shutdown()
    summary.seconds = time.perf_counter() - started
    return summary


def _count(folder: Path) -> tuple[int, int]:
    """(rows, rows with an error) of the part files in a folder."""
    rows = errors = 0
    for path in sorted(folder.glob("*.parquet")):
        column = pq.read_table(path, columns=["error"]).column("error")
        rows += len(column)
        errors += len(column) - column.null_count
    return rows, errors


def read_scores(output: Path) -> pa.Table:
    """All finished parts of an output folder as one table (temporary parts excluded)."""
    files = [
        p
        for p in sorted(output.rglob("*.parquet"))
        if not any(part.startswith((".", "_")) for part in p.relative_to(output).parts)
    ]
    if not files:
        return OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p).cast(OUTPUT_SCHEMA) for p in files)


def summary_dict(summary: ScoreSummary) -> dict[str, Any]:
    """A JSON-ready summary (for --json and logs)."""
    row = asdict(summary)
    row["output"] = str(summary.output)
    row["users_per_s"] = round(summary.users_per_s, 1)
    row["seconds"] = round(summary.seconds, 2)
    row.pop("part_rows")
    return row
