"""The bundle format: the one contract between export (writer) and server (reader).

A bundle is a folder::

    manifest.json          this schema, with the sha256 of every other file
    tokenizer.json         Hugging Face `tokenizers` file of the encoder
    encoder.int8.onnx      encoder for CPU (int8 dynamic quantization, per-channel)
    encoder.fp16.onnx      encoder for GPU (fp16), optional
    items.jsonl            one JSON object per item: id, title, text (row = index label)
    item_embeddings.npy    float32 [num_items, dim], L2-normalised
    centroids.npy          float32 [K, dim], L2-normalised cluster centroids
    clusters.json          per cluster: id, description, size, item rows, top items (rows)
    index/all.hnsw         HNSW (inner product) over all items
    index/cluster_<k>.hnsw HNSW over the items of cluster k
    user_head.onnx         optional sequence head: history → user vector (see SequenceHeadSpec)
    item_text_embeddings.npy  float32 [num_items, text_dim], the head's per-item text input
    item_text_projection.npy  float32 [dim, text_dim], the head's text → item vector map

The bundle is one of the two contracts between the stages (the other is the run folder,
training.run_folder): export writes it, the server reads it, both through this module,
and nothing else spells these file names. How a history becomes one encoder input
(:func:`render_history`) is part of it: training fine-tunes on that text, export checks
parity on it, and the server encodes it. It imports nothing else of the server.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
ENCODER_INT8_FILE = "encoder.int8.onnx"
ENCODER_FP16_FILE = "encoder.fp16.onnx"
ITEMS_FILE = "items.jsonl"
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
CENTROIDS_FILE = "centroids.npy"
CLUSTERS_FILE = "clusters.json"
INDEX_DIR = "index"
ALL_ITEMS_INDEX_FILE = f"{INDEX_DIR}/all.hnsw"
USER_HEAD_FILE = "user_head.onnx"
ITEM_TEXT_EMBEDDINGS_FILE = "item_text_embeddings.npy"
ITEM_TEXT_PROJECTION_FILE = "item_text_projection.npy"

# Separator between item texts in a rendered history. Training renders with
# the same function (render_history), so train and serve cannot drift apart.
HISTORY_SEPARATOR = " | "


def render_history(texts_oldest_first: Sequence[str], separator: str = HISTORY_SEPARATOR) -> str:
    """Join item or free texts, given oldest first, into one most-recent-first string.

    Training and serving both call this, so the text the server encodes is exactly the
    text the encoder was fine-tuned on. Most-recent-first (Recformer, KDD 2023) means
    truncation to the encoder's token budget drops the oldest items, which matter least
    for what comes next.
    """
    return separator.join(text.strip() for text in reversed(texts_oldest_first) if text.strip())


def cluster_index_file(cluster_id: int) -> str:
    """Bundle-relative path of the HNSW index over one cluster's items."""
    return f"{INDEX_DIR}/cluster_{cluster_id}.hnsw"


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match the files beside it."""


@dataclass(frozen=True)
class ParityReport:
    """How close an exported encoder is to the torch encoder it came from."""

    cosine_min: float
    cosine_mean: float
    num_texts: int
    threshold_min: float
    threshold_mean: float


@dataclass(frozen=True)
class HnswParams:
    """HNSW build and query parameters (hnswlib does not save `ef` with an index)."""

    space: str = "ip"
    m: int = 16
    ef_construction: int = 200
    # The goal: recall@10 ≥ 0.99 at ≥ 20× exact search per core at 1M items; ef 128 missed
    # it, 256 meets it (benchmarks/retrieval.py; the figures are in README "Benchmarks").
    ef_search: int = 256
    # > 0 when item vectors are not unit length: each is stored as
    # [x, sqrt(M² - |x|²)] so that inner-product search becomes a search among
    # equal-norm vectors (Bachrach et al., RecSys 2014), which HNSW handles well;
    # queries get a trailing 0, so scores stay exact dot products.
    mips_max_norm: float = 0.0

    def index_dimension(self, dimension: int) -> int:
        """Dimension of the stored index vectors."""
        return dimension + 1 if self.mips_max_norm > 0 else dimension

    def index_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Item vectors as stored in the index."""
        if self.mips_max_norm <= 0:
            return vectors
        norms2 = (vectors.astype(np.float64) ** 2).sum(axis=1)
        extra = np.sqrt(np.clip(self.mips_max_norm**2 - norms2, 0.0, None))
        return np.hstack([vectors, extra[:, None]]).astype(np.float32)

    def query_vector(self, vector: np.ndarray) -> np.ndarray:
        """A query as searched in the index."""
        if self.mips_max_norm <= 0:
            return vector
        return np.append(vector, np.float32(0.0)).astype(np.float32)


@dataclass(frozen=True)
class SequenceHeadSpec:
    """A sequence head: user vector from the history's item IDs and text embeddings.

    ONNX inputs ``item_ids`` int64 [batch, max_length] (item row + 1; 0 = padding or an
    entry without an ID, such as a free text) and ``item_text`` float32
    [batch, max_length, text_dim]; output ``user`` float32 [batch, dimension]. Histories
    are right-aligned (most recent last). Item vectors in item_embeddings.npy are not
    normalised: scores are dot products.
    """

    file: str
    text_embeddings: str
    max_length: int
    text_dimension: int
    parity_cosine_min: float
    # Items [0, trained_items) have an ID residual in the head; later rows (items
    # added after training) enter by their text alone.
    trained_items: int = 0
    # float32 [dimension, text_dimension]: item vector of a text-only item = W · text.
    projection: str = ""
    # An item added after training borrows the mean ID part of this many trained items
    # nearest by text, times this weight (server/bundle/new_items.py); 0 = text alone, what
    # bundles written before these fields did.
    new_item_neighbours: int = 20
    new_item_id_weight: float = 0.0
    # Per-interest answers (server/core/interests.py): how a history's interests are merged
    # into one list, and how many a request gets when it does not say (0 = the single
    # user vector). `irec eval` writes the variant that won on validation.
    interest_merge: str = "quota"
    interest_history_share: float = 0.7
    default_num_interests: int = 0


@dataclass(frozen=True)
class Manifest:
    """Everything the server needs to know about a bundle before loading it."""

    schema_version: int
    bundle_version: str
    created_at: str
    model_name: str
    dimension: int
    max_sequence_length: int
    num_items: int
    num_clusters: int
    quantization: str
    encoders: dict[str, str]
    parity: dict[str, ParityReport]
    hnsw: HnswParams
    default_retrieval_mode: str
    files: dict[str, str] = field(default_factory=dict)
    history_separator: str = HISTORY_SEPARATOR
    training: dict[str, Any] = field(default_factory=dict)
    sequence_head: SequenceHeadSpec | None = None

    def to_json(self) -> str:
        """Serialise to the JSON stored as manifest.json."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """Parse a manifest dict, naming the first missing or malformed key."""
        if not isinstance(raw, dict):
            raise ManifestError("manifest.json: expected a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest.json: schema_version {version!r} is not supported "
                f"(this server reads {SCHEMA_VERSION})"
            )
        try:
            return cls(
                schema_version=int(raw["schema_version"]),
                bundle_version=str(raw["bundle_version"]),
                created_at=str(raw["created_at"]),
                model_name=str(raw["model_name"]),
                dimension=int(raw["dimension"]),
                max_sequence_length=int(raw["max_sequence_length"]),
                num_items=int(raw["num_items"]),
                num_clusters=int(raw["num_clusters"]),
                quantization=str(raw["quantization"]),
                encoders={str(k): str(v) for k, v in raw["encoders"].items()},
                parity={k: ParityReport(**v) for k, v in raw.get("parity", {}).items()},
                hnsw=HnswParams(**raw["hnsw"]),
                default_retrieval_mode=str(raw["default_retrieval_mode"]),
                files={str(k): str(v) for k, v in raw["files"].items()},
                history_separator=str(raw.get("history_separator", HISTORY_SEPARATOR)),
                training=dict(raw.get("training", {})),
                sequence_head=(
                    SequenceHeadSpec(**raw["sequence_head"]) if raw.get("sequence_head") else None
                ),
            )
        except KeyError as exc:
            raise ManifestError(f"manifest.json: missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ManifestError(f"manifest.json: malformed value ({exc})") from exc


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks into one reused buffer.

    Reading and hashing both release the GIL, so several files hash in parallel
    threads (verify_checksums); the file goes through the page cache, not into
    this process's memory.
    """
    digest = hashlib.sha256()
    buffer = bytearray(8 << 20)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            digest.update(view[:count])
    return digest.hexdigest()


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and parse ``bundle_dir/manifest.json``."""
    path = bundle_dir / MANIFEST_FILE
    if not bundle_dir.is_dir():
        raise ManifestError(f"{bundle_dir}: bundle folder does not exist")
    if not path.is_file():
        raise ManifestError(f"{path}: missing (is this a bundle folder?)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    return Manifest.from_dict(raw)


def verify_checksums(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every file the manifest lists against its sha256; raise on the first mismatch."""
    required = {TOKENIZER_FILE, ITEMS_FILE, ITEM_EMBEDDINGS_FILE, CENTROIDS_FILE, CLUSTERS_FILE}
    required |= set(manifest.encoders.values())
    if manifest.sequence_head is not None:
        required |= {manifest.sequence_head.file, manifest.sequence_head.text_embeddings}
        if manifest.sequence_head.projection:
            required.add(manifest.sequence_head.projection)
    missing_from_manifest = sorted(required - manifest.files.keys())
    if missing_from_manifest:
        raise ManifestError(
            f"{bundle_dir / MANIFEST_FILE}: files table lacks {', '.join(missing_from_manifest)}"
        )
    listed = sorted(manifest.files.items())
    for name, _ in listed:
        if not (bundle_dir / name).is_file():
            raise ManifestError(f"{bundle_dir / name}: listed in the manifest but missing")
    # Largest first, over as many threads as cores: the biggest file bounds the wall time.
    by_size = sorted(listed, key=lambda kv: -(bundle_dir / kv[0]).stat().st_size)
    workers = max(1, min(len(by_size), len(os.sched_getaffinity(0))))
    with ThreadPoolExecutor(workers, thread_name_prefix="sha256") as pool:
        digests = dict(
            zip(
                (name for name, _ in by_size),
                pool.map(sha256_file, (bundle_dir / name for name, _ in by_size)),
                strict=True,
            )
        )
    for name, expected in listed:
        path = bundle_dir / name
        actual = digests[name]
        if actual != expected:
            raise ManifestError(
                f"{path}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…"
                " (corrupt or modified bundle)"
            )
