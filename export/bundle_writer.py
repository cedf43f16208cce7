"""`irec export`: turn a run folder into a verified bundle, swapped in only when it passes.

Reads the run through training.run_folder and writes the bundle that server.bundle.manifest
describes: the two contracts, one on each side of export. Steps: ONNX fp32 → int8 (CPU)
and fp16 (GPU) → parity gate → tokenizer, items, embeddings, centroids, HNSW indexes →
manifest with sha256 of every file → load the staged bundle with the server's own
loader and answer a request → atomic swap into place. Any failure leaves an existing
bundle at the target untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from export.item_index import build_index, recall_at_k, save_index
from export.onnx_encoder import convert_fp16, export_fp32, quantize_int8
from export.onnx_head import HEAD_PARITY_MIN_COSINE, export_head, head_parity
from export.parity import PARITY_MEAN_COSINE, PARITY_MIN_COSINE, check_parity, measure_parity
from server.bundle import manifest as fmt
from server.bundle.loader import load_bundle
from server.bundle.manifest import render_history
from server.bundle.new_items import DEFAULT_ID_WEIGHT, DEFAULT_NEIGHBOURS, new_item_vectors
from server.bundle.text_encoder import CPU, TextEncoder, load_tokenizer, open_session
from server.config import option
from server.core.engine import RecommenderEngine, RecommendQuery, RetrievalMode
from server.vectors import unit_rows
from training.run_folder import RunFolder, RunFolderError
from training.torch_encoder import embed_texts, load_encoder

log = logging.getLogger(__name__)

# Texts for the parity gate: items, rendered histories and very short inputs
# (the worst case for int8).
PARITY_ITEMS = 48
PARITY_HISTORIES = 48
SHORT_TEXTS = ["jazz", "space", "a", "cooking at home", "detective story", "?"]


class ExportError(RuntimeError):
    """The run cannot be exported (missing files, parity or recall failure)."""


@dataclass(frozen=True)
class ExportOptions:
    """Knobs of one export."""

    # Field metadata makes a field an option of `irec export` (irec.options).
    parity_min: float = field(
        default=PARITY_MIN_COSINE, metadata=option("minimum cosine to torch over the parity texts")
    )
    parity_mean: float = field(
        default=PARITY_MEAN_COSINE, metadata=option("minimum mean cosine to torch")
    )
    fp16: bool = True
    version: str | None = field(
        default=None,
        metadata=option(
            "bundle version string (default: UTC time + content hash)", "--bundle-version"
        ),
    )
    hnsw: fmt.HnswParams = fmt.HnswParams()
    default_mode: RetrievalMode = field(
        default=RetrievalMode.ALL_ITEMS,
        metadata=option(
            "retrieval mode when a request names none", choices=[m.value for m in RetrievalMode]
        ),
    )
    min_recall: float = 0.9
    # Items table (CSV/Parquet) of items unknown to training: they enter the bundle by
    # their text (encoder + the head's text projection, plus an ID part borrowed from their
    # text neighbours: server/bundle/new_items.py).
    new_items: Path | None = field(
        default=None,
        metadata=option(
            "items table (CSV/Parquet: item_id,title[,year,categories,description]) of items "
            "unknown to training; they enter the bundle by their text alone"
        ),
    )
    # Per-interest answers of a head bundle: (merge, whole-history share, default number);
    # None = the manifest's defaults.
    interests: tuple[str, float, int] | None = None


def export_run(run_path: Path, out: Path, options: ExportOptions | None = None) -> fmt.Manifest:
    """Export the run folder at `run_path` into bundle folder `out`; return the manifest."""
    options = options or ExportOptions()
    try:
        run = RunFolder.open(run_path)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from exc
    info = run.info()
    stage = out.with_name(f".{out.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        manifest = _build(run, info, stage, options)
        _self_check(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap_in(stage, out)
    return manifest


def _swap_in(stage: Path, out: Path) -> None:
    """Replace `out` with `stage` (two renames; the old bundle is kept until the new one is in)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    stage.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _build(run: RunFolder, info: dict, stage: Path, options: ExportOptions) -> fmt.Manifest:
    """Write every file of the bundle into `stage`, the manifest last; return the manifest."""
    log.info("loading the fine-tuned encoder")
    encoder, tokenizer = load_encoder(run.model_dir)
    fp32, encoders = _export_encoders(run, stage, encoder, tokenizer, options.fp16)
    records = run.items()
    trained_items = len(records)
    item_embeddings = run.item_embeddings()
    new_text_embeddings = None
    if options.new_items is not None:
        added, item_embeddings, new_text_embeddings = _add_new_items(
            run, info, encoder, tokenizer, records, item_embeddings, options.new_items
        )
        records += added
    # One seeded generator, in this order: parity texts, then the HNSW recall queries.
    rng = np.random.default_rng(0)
    max_length = int(info["finetune"]["history_max_length"])
    parity = _parity_gate(
        stage, encoders, encoder, tokenizer, [r["text"] for r in records], max_length, options, rng
    )
    fp32.unlink()
    sequence_head = (
        _export_head(run, stage, trained_items, new_text_embeddings, options.interests)
        if run.has_head
        else None
    )
    clusters = _write_catalogue(run, stage, records, trained_items, item_embeddings)
    hnsw, recall = _write_indexes(run, stage, item_embeddings, len(records), clusters, options, rng)
    files = checksum_files(stage)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    version = options.version or new_version(files)
    manifest = fmt.Manifest(
        schema_version=fmt.SCHEMA_VERSION,
        bundle_version=version,
        created_at=created,
        model_name=str(info["model_name"]),
        dimension=int(item_embeddings.shape[1]),
        max_sequence_length=max_length,
        num_items=len(records),
        num_clusters=len(clusters),
        quantization="int8 dynamic per-channel (avx512_vnni, QOperator)"
        + (" + fp16" if options.fp16 else ""),
        encoders=encoders,
        parity=parity,
        hnsw=hnsw,
        default_retrieval_mode=options.default_mode.value,
        files=files,
        sequence_head=sequence_head,
        training=_training_record(info, recall),
    )
    (stage / fmt.MANIFEST_FILE).write_text(manifest.to_json())
    log.info(
        "bundle %s: %d items, %d clusters, HNSW recall@10 %.3f",
        version,
        len(records),
        len(clusters),
        recall,
    )
    return manifest


def _export_encoders(
    run: RunFolder, stage: Path, encoder: Any, tokenizer: Any, fp16: bool
) -> tuple[Path, dict[str, str]]:
    """The tokenizer and the encoder as ONNX int8 (and fp16); the fp32 file and the table."""
    tokenizer_json = run.model_dir / fmt.TOKENIZER_FILE
    if not tokenizer_json.is_file():
        raise ExportError(f"{tokenizer_json}: missing (the encoder needs a fast tokenizer)")
    shutil.copy(tokenizer_json, stage / fmt.TOKENIZER_FILE)
    # In MeanPoolEncoder.forward's order: ONNX names inputs by position.
    input_names = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    log.info("ONNX fp32 → int8 (per-channel) and fp16")
    fp32 = stage / "encoder.fp32.onnx"
    export_fp32(encoder, input_names, fp32)
    quantize_int8(fp32, stage / fmt.ENCODER_INT8_FILE)
    encoders = {"int8": fmt.ENCODER_INT8_FILE}
    if fp16:
        convert_fp16(fp32, stage / fmt.ENCODER_FP16_FILE)
        encoders["fp16"] = fmt.ENCODER_FP16_FILE
    return fp32, encoders


def _parity_gate(
    stage: Path,
    encoders: dict[str, str],
    encoder: Any,
    tokenizer: Any,
    texts: list[str],
    max_length: int,
    options: ExportOptions,
    rng: np.random.Generator,
) -> dict[str, fmt.ParityReport]:
    """Each ONNX encoder against torch on items, rendered histories and short texts."""
    picked = rng.choice(len(texts), size=min(PARITY_ITEMS, len(texts)), replace=False)
    histories = [
        render_history([texts[int(i)] for i in rng.choice(len(texts), size=int(n))])
        for n in rng.integers(2, 25, size=PARITY_HISTORIES)
    ]
    parity_texts = [texts[int(i)] for i in picked] + histories + SHORT_TEXTS
    reference = embed_texts(encoder, tokenizer, parity_texts, max_length, progress=False)
    server_tokenizer = load_tokenizer(stage / fmt.TOKENIZER_FILE, max_length)
    parity: dict[str, fmt.ParityReport] = {}
    for name, file in encoders.items():
        session = open_session(stage / file, [CPU])
        report = measure_parity(
            reference,
            TextEncoder(server_tokenizer, session, name),
            parity_texts,
            options.parity_min,
            options.parity_mean,
        )
        log.info(
            "parity %s: cosine mean %.4f, min %.4f over %d texts",
            name,
            report.cosine_mean,
            report.cosine_min,
            report.num_texts,
        )
        check_parity(name, report)
        parity[name] = report
    return parity


def _write_catalogue(
    run: RunFolder,
    stage: Path,
    records: list[dict],
    trained_items: int,
    item_embeddings: np.ndarray,
) -> list[dict]:
    """Items, their vectors, the centroids and the clusters (new items join their nearest)."""
    centroids = run.centroids()
    clusters = run.clusters()
    if len(records) > trained_items:  # new items join their nearest cluster's index
        nearest = np.argmax(unit_rows(item_embeddings[trained_items:]) @ centroids.T, axis=1)
        for offset, c in enumerate(nearest):
            clusters[int(c)]["item_rows"] = [*clusters[int(c)]["item_rows"], trained_items + offset]
    write_items(stage, records)
    np.save(stage / fmt.ITEM_EMBEDDINGS_FILE, item_embeddings)
    np.save(stage / fmt.CENTROIDS_FILE, centroids)
    write_clusters(stage, clusters)
    return clusters


def _write_indexes(
    run: RunFolder,
    stage: Path,
    item_embeddings: np.ndarray,
    num_items: int,
    clusters: list[dict],
    options: ExportOptions,
    rng: np.random.Generator,
) -> tuple[fmt.HnswParams, float]:
    """HNSW over all items and per cluster; refused below the recall floor."""
    log.info("HNSW indexes: all items and one per cluster")
    hnsw = options.hnsw
    norms = np.linalg.norm(item_embeddings, axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:  # not unit vectors: inner product is not cosine
        hnsw = replace(hnsw, mips_max_norm=float(norms.max()) * 1.0001)
    index = build_index(item_embeddings, list(range(num_items)), hnsw)
    save_index(index, stage / fmt.ALL_ITEMS_INDEX_FILE)
    queries = item_embeddings[rng.choice(num_items, size=min(200, num_items), replace=False)]
    users = run.user_embeddings()
    if users is not None:
        queries = users[rng.choice(len(users), size=min(500, len(users)), replace=False)]
    recall = recall_at_k(index, item_embeddings, queries, hnsw)
    if recall < options.min_recall:
        raise ExportError(f"HNSW recall@10 {recall:.3f} is below {options.min_recall}")
    write_cluster_indexes(stage, item_embeddings, clusters, hnsw)
    return hnsw, recall


def _training_record(info: dict, recall: float) -> dict[str, Any]:
    """The manifest's `training`: which run, which encoder and model shipped, and why."""
    return {
        "data": info.get("data"),
        "seed": info.get("seed"),
        "metrics": info.get("metrics", {}),
        # Which encoder and model shipped, and the validation that chose them.
        "encoder": info.get("encoder", {}),
        "shipped": info.get("shipped"),
        "validation_ndcg@10": info.get("validation_ndcg@10", {}),
        "hnsw_recall_at_10": round(recall, 4),
        "run_created_at": info.get("created_at"),
    }


def write_items(stage: Path, records: list[dict]) -> None:
    """items.jsonl: one {id, title, text} object per line, row = index label."""
    with (stage / fmt.ITEMS_FILE).open("w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps({"id": r["id"], "title": r["title"], "text": r["text"]}) + "\n")


def write_clusters(stage: Path, clusters: list[dict]) -> None:
    """clusters.json: id, description, size, item rows and top items of each cluster."""
    (stage / fmt.CLUSTERS_FILE).write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "id": c["id"],
                        "description": c["description"],
                        "size": c["size"],
                        "item_rows": c["item_rows"],
                        "top_items": c.get("top_items", []),
                    }
                    for c in clusters
                ]
            }
        )
    )


def write_cluster_indexes(
    stage: Path, item_embeddings: np.ndarray, clusters: list[dict], hnsw: fmt.HnswParams
) -> None:
    """One HNSW index per cluster over its item rows (global labels)."""
    for c in clusters:
        save_index(
            build_index(item_embeddings, c["item_rows"], hnsw),
            stage / fmt.cluster_index_file(int(c["id"])),
        )


def checksum_files(stage: Path) -> dict[str, str]:
    """The manifest's files table: sha256 of every file under `stage`, by relative path."""
    return {
        p.relative_to(stage).as_posix(): fmt.sha256_file(p)
        for p in sorted(stage.rglob("*"))
        if p.is_file()
    }


def new_version(files: dict[str, str]) -> str:
    """A bundle version: UTC timestamp and a short hash of the files table."""
    content_hash = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{content_hash}"


def new_item_setting(info: dict) -> tuple[int, float]:
    """(neighbours, weight) for items added after training.

    The run's validation choice (run.json `new_items`, written by `irec train`), else the
    defaults.
    """
    chosen = info.get("new_items") or {}
    return (
        int(chosen.get("neighbours", DEFAULT_NEIGHBOURS)),
        float(chosen.get("weight", DEFAULT_ID_WEIGHT)),
    )


def _add_new_items(
    run: RunFolder,
    info: dict,
    encoder: Any,
    tokenizer: Any,
    records: list[dict],
    item_embeddings: np.ndarray,
    path: Path,
) -> tuple[list[dict], np.ndarray, np.ndarray | None]:
    """Records, all item vectors, and (with a head) text embeddings for items new to training."""
    from training.data import read_items
    from training.text import render_items

    table = read_items(path)
    known = {r["id"] for r in records}
    clash = [i for i in table["item_id"] if i in known]
    if clash:
        raise ExportError(f"{path}: item_id {clash[0]!r} is already in the catalogue")
    texts = render_items(table)
    added = [
        {"id": i, "title": t, "text": x}
        for i, t, x in zip(table["item_id"], table["title"], texts, strict=True)
    ]
    item_length = int(info.get("finetune", {}).get("item_max_length", 32))
    text = embed_texts(encoder, tokenizer, texts, item_length, progress=False)
    if not run.has_head:
        vectors, head_text = text, None
        log.info("%d new items enter by their text alone", len(added))
    else:
        head = run.load_head()
        neighbours, weight = new_item_setting(info)
        vectors = new_item_vectors(
            text,
            head.text_projection.weight.detach().numpy(),
            head.item_text[1:].numpy(),
            item_embeddings,
            neighbours,
            weight,
        )
        head_text = text
        log.info(
            "%d new items enter by their text and an ID part borrowed from their %d nearest "
            "trained items × %g",
            len(added),
            neighbours,
            weight,
        )
    return added, np.vstack([item_embeddings, vectors.astype(np.float32)]), head_text


def _export_head(
    run: RunFolder,
    stage: Path,
    num_items: int,
    new_text: np.ndarray | None = None,
    interests: tuple[str, float, int] | None = None,
) -> fmt.SequenceHeadSpec:
    """Export the sequence head and its text inputs; refuse it if ONNX drifts from torch."""
    log.info("sequence head → ONNX")
    neighbours, weight = new_item_setting(run.info())
    head = run.load_head()
    export_head(head, stage / fmt.USER_HEAD_FILE)
    rng = np.random.default_rng(1)
    histories = [
        rng.choice(num_items, size=int(n), replace=False).tolist()
        for n in rng.integers(1, head.config.max_length + 20, size=32)
    ]
    parity = head_parity(head, stage / fmt.USER_HEAD_FILE, histories)
    log.info("head parity: min cosine %.6f", parity)
    if parity < HEAD_PARITY_MIN_COSINE:
        raise ExportError(f"sequence head ONNX parity {parity:.5f} < {HEAD_PARITY_MIN_COSINE}")
    text = head.item_text[1:].numpy().astype(np.float32)
    if new_text is not None:
        text = np.vstack([text, new_text.astype(np.float32)])
    np.save(stage / fmt.ITEM_TEXT_EMBEDDINGS_FILE, text)
    projection = head.text_projection.weight.detach().numpy().astype(np.float32)
    np.save(stage / fmt.ITEM_TEXT_PROJECTION_FILE, projection)
    spec = fmt.SequenceHeadSpec(
        file=fmt.USER_HEAD_FILE,
        text_embeddings=fmt.ITEM_TEXT_EMBEDDINGS_FILE,
        max_length=head.config.max_length,
        text_dimension=int(text.shape[1]),
        parity_cosine_min=round(parity, 6),
        trained_items=num_items,
        projection=fmt.ITEM_TEXT_PROJECTION_FILE,
        new_item_neighbours=neighbours,
        new_item_id_weight=weight,
    )
    if interests is not None:
        merge, share, default = interests
        spec = replace(
            spec,
            interest_merge=merge,
            interest_history_share=share,
            default_num_interests=default,
        )
    return spec


def _self_check(bundle: Path) -> None:
    """Load the staged bundle exactly as the server will and answer one request."""
    loaded = load_bundle(bundle, device="cpu")
    engine = RecommenderEngine(loaded)
    result = engine.recommend(RecommendQuery(history_item_ids=[loaded.items[0].item_id], k=5))
    if not result.items or not result.clusters:
        raise ExportError(f"{bundle}: self-check request returned no items or clusters")


def verify_bundle(bundle: Path) -> str:
    """`irec export --verify`: checksums, consistency, encoder smoke test, one request."""
    loaded = load_bundle(bundle, device="cpu")
    engine = RecommenderEngine(loaded)
    result = engine.recommend(RecommendQuery(history_item_ids=[loaded.items[0].item_id], k=5))
    m = loaded.manifest
    parity = ", ".join(
        f"{name} mean {p.cosine_mean:.4f} min {p.cosine_min:.4f}" for name, p in m.parity.items()
    )
    return (
        f"{bundle}: OK — bundle {m.bundle_version}, model {m.model_name}, dim {m.dimension}, "
        f"{m.num_items} items, {m.num_clusters} clusters, {len(m.files)} files checksummed; "
        f"parity {parity}; sample request → {len(result.items)} items"
    )
