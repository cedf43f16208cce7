"""Load a bundle folder into memory, verifying it completely before anything serves from it."""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar, overload

import hnswlib
import numpy as np

from server.bundle import manifest as fmt
from server.bundle.text_encoder import (
    CPU,
    TextEncoder,
    create_session,
    load_tokenizer,
    open_session,
)
from server.bundle.user_head import UserHead
from server.errors import BundleError

log = logging.getLogger(__name__)
T = TypeVar("T")

# A loaded encoder must give unit vectors (normalisation is inside the graph).
_NORM_TOLERANCE = 1e-2


class Item(NamedTuple):
    """One catalogue item as the server knows it.

    A tuple, not a dataclass: a million of them are built at start-up, and a tuple is
    several times cheaper to make and a third of the memory of a dataclass instance.
    """

    item_id: str
    title: str
    text: str


class PackedStrings:
    """Strings packed into one UTF-8 buffer with offsets; appended ones kept as they are.

    A Python str costs ~50 bytes of header beside its text; a million titles and texts as
    str objects held ~350 MiB at 1M items, packed about a third of that. Reading one back
    (a slice decoded) takes about a microsecond.
    """

    def __init__(self, values: Sequence[str]) -> None:
        parts = [v.encode("utf-8") for v in values]
        self._blob = b"".join(parts)
        self._ends = array("q", itertools.accumulate(map(len, parts)))
        self._packed = len(parts)
        self._added: list[str] = []

    def __len__(self) -> int:
        return self._packed + len(self._added)

    def __getitem__(self, row: int) -> str:
        if row < 0:
            row += len(self)
        if row >= self._packed:
            return self._added[row - self._packed]  # IndexError past the end
        if row < 0:
            raise IndexError(row)
        start = self._ends[row - 1] if row else 0
        return self._blob[start : self._ends[row]].decode("utf-8")

    def append(self, value: str) -> None:
        """Add one string at the end."""
        self._added.append(value)


class ItemTable(Sequence[Item]):
    """The catalogue's items by row: IDs as strings (the lookup's keys), titles and texts packed.

    Behaves as a list of Item (index, slice, iterate, append) without a million tuples.
    """

    def __init__(self, ids: list[str], titles: Sequence[str], texts: Sequence[str]) -> None:
        self.ids = ids
        self.titles = PackedStrings(titles)
        self.texts = PackedStrings(texts)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, row: int) -> Item: ...

    @overload
    def __getitem__(self, row: slice) -> list[Item]: ...

    def __getitem__(self, row: int | slice) -> Item | list[Item]:
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        return Item(self.ids[row], self.titles[row], self.texts[row])

    def append(self, item: Item) -> None:
        """Add one item at the next row."""
        self.ids.append(item.item_id)
        self.titles.append(item.title)
        self.texts.append(item.text)


@dataclass(frozen=True)
class Cluster:
    """One interest cluster: centroid row, description, members, and its item index."""

    cluster_id: int
    description: str
    size: int
    item_rows: np.ndarray
    index: hnswlib.Index
    # Rows of the items that set the cluster apart, most first (empty in older bundles).
    top_items: tuple[int, ...] = ()


@dataclass(frozen=True)
class Bundle:
    """Everything loaded from one bundle folder; immutable once built."""

    path: Path
    manifest: fmt.Manifest
    encoder: TextEncoder
    items: ItemTable
    row_of_item: dict[str, int]
    item_embeddings: np.ndarray
    centroids: np.ndarray
    clusters: list[Cluster]
    all_items_index: hnswlib.Index
    head: UserHead | None = None

    @property
    def version(self) -> str:
        """The bundle version from the manifest."""
        return self.manifest.bundle_version


def _read(path: Path, reader: Callable[[Path], T]) -> T:
    """reader(path); a file it cannot parse is refused with a BundleError naming the file.

    Checksums only prove a file is the one the manifest lists, not that it is well formed
    (an exporter bug, a manifest rewritten after the fact): numpy, json and tokenizers
    raise several exception types for a bad file, and none of them may reach a caller as
    INTERNAL, stop `irec serve` with a traceback, or end the --watch-dir loop.
    """
    try:
        return reader(path)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from exc


def _cluster_records(path: Path) -> list[tuple[str, int, np.ndarray, tuple[int, ...]]]:
    """(description, size, item rows, top items) per cluster from clusters.json."""
    return [
        (
            str(r["description"]),
            int(r["size"]),
            np.asarray(r["item_rows"], dtype=np.int64),
            tuple(int(row) for row in r.get("top_items", [])),
        )
        for r in json.loads(path.read_text(encoding="utf-8"))["clusters"]
    ]


def _load_items(path: Path) -> ItemTable:
    """items.jsonl as an ItemTable; a bad record is refused naming its line."""
    ids, titles, texts = _parse_items(path)
    table = ItemTable([], titles, texts)
    del titles, texts
    joined = "\x00".join(ids) if not any("\x00" in v for v in ids) else None
    if joined is None:
        table.ids = ids
        return table
    del ids  # with the parse's temporaries gone, the IDs are made afresh, together
    table.ids = joined.split("\x00") if joined else []
    return table


def _parse_items(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(ids, titles, texts) of items.jsonl, in row order."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    try:
        # One parse of the whole file is faster than one per line, which matters to the
        # startup of large catalogues (benchmarks.startup). The count check refuses a line
        # that holds two records; any failure falls through to name the bad line.
        raws = json.loads("[" + ",".join(lines) + "]")
        if len(raws) == len(lines):
            columns = (
                [r["id"] for r in raws],
                [r["title"] for r in raws],
                [r["text"] for r in raws],
            )
            # The export writes strings; anything else is coerced, as the slow path does.
            if all(type(v) is str for column in columns for v in column):
                return columns
    except (json.JSONDecodeError, KeyError, TypeError):
        pass
    ids, titles, texts = [], [], []
    for line_no, line in enumerate(lines, start=1):
        try:
            raw = json.loads(line)
            ids.append(str(raw["id"]))
            titles.append(str(raw["title"]))
            texts.append(str(raw["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}:{line_no}: bad item record ({exc})") from exc
    return ids, titles, texts


def load_index(path: Path, dim: int, count: int, params: fmt.HnswParams) -> hnswlib.Index:
    """Load one HNSW index file as the server searches it; BundleError if it does not match."""
    index = hnswlib.Index(space=params.space, dim=params.index_dimension(dim))
    try:
        index.load_index(str(path), max_elements=count)
    except RuntimeError as exc:
        raise BundleError(f"{path}: cannot load HNSW index ({exc})") from exc
    if index.get_current_count() != count:
        raise BundleError(
            f"{path}: holds {index.get_current_count()} items, the manifest says {count}"
        )
    index.set_ef(max(params.ef_search, 1))
    # Queries run one per request in executor threads: no nested threading.
    index.set_num_threads(1)
    return index


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC while a bundle loads: a million item records would be scanned repeatedly."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load_matrix(path: Path) -> np.ndarray:
    """A float32 matrix, memory-mapped read-only (pages come in as rows are used).

    Called only after the file's checksum, or with it running alongside and checked
    before anything serves (load_bundle): the mapping is of the bytes that were hashed.
    """
    array = _read(path, lambda p: np.load(p, mmap_mode="r"))
    return array.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _PlainFiles:
    """The parts a corrupt file cannot crash the process on (parsed beside the checksums)."""

    items: ItemTable
    embeddings: np.ndarray
    centroids: np.ndarray
    cluster_records: list[tuple[str, int, np.ndarray, tuple[int, ...]]]
    head_text: np.ndarray | None


def _read_plain_files(path: Path, manifest: fmt.Manifest) -> _PlainFiles:
    """Items, matrices and clusters.json, checked against the manifest's counts and shapes."""
    items = _read(path / fmt.ITEMS_FILE, _load_items)
    embeddings = _load_matrix(path / fmt.ITEM_EMBEDDINGS_FILE)
    centroids = _load_matrix(path / fmt.CENTROIDS_FILE)
    cluster_records = _read(path / fmt.CLUSTERS_FILE, _cluster_records)
    spec = manifest.sequence_head
    head_text = _load_matrix(path / spec.text_embeddings) if spec else None
    return _PlainFiles(items, embeddings, centroids, cluster_records, head_text)


def _verified(check: Future[None]) -> None:
    """Wait for the checksums; a mismatch is the bundle's error."""
    try:
        check.result()
    except fmt.ManifestError as exc:
        raise BundleError(str(exc)) from exc


def load_bundle(path: Path, device: str = "auto", intra_op_threads: int = 0) -> Bundle:
    """Verify checksums and consistency, load every part, and smoke-test the encoder.

    Raises BundleError naming the file and the problem; nothing is half-loaded. The
    checksums run in threads (hashing releases the GIL) while the plain files are
    parsed; the HNSW indexes and ONNX models (native code, which a corrupt file could
    crash) are opened only once every checksum has matched, and nothing is returned
    before that. When parsing fails, a checksum mismatch is reported instead if there is one.
    """
    try:
        manifest = fmt.read_manifest(path)
    except fmt.ManifestError as exc:
        raise BundleError(str(exc)) from exc
    with _gc_paused(), ThreadPoolExecutor(1, thread_name_prefix="verify") as pool:
        check = pool.submit(fmt.verify_checksums, path, manifest)
        try:
            plain = _read_plain_files(path, manifest)
        except BundleError:
            _verified(check)
            raise
        _verified(check)
        return _assemble(path, manifest, plain, device, intra_op_threads)


def _assemble(
    path: Path, manifest: fmt.Manifest, plain: _PlainFiles, device: str, intra_op_threads: int
) -> Bundle:
    """Check the parsed files against the manifest, open the native parts, smoke-test."""
    items = plain.items
    row_of_item = {item.item_id: row for row, item in enumerate(items)}
    if len(row_of_item) != len(items) or len(items) != manifest.num_items:
        raise BundleError(
            f"{path / fmt.ITEMS_FILE}: {len(items)} records, {len(row_of_item)} distinct IDs, "
            f"manifest says {manifest.num_items}"
        )
    embeddings, centroids = plain.embeddings, plain.centroids
    expected = {
        fmt.ITEM_EMBEDDINGS_FILE: (manifest.num_items, manifest.dimension),
        fmt.CENTROIDS_FILE: (manifest.num_clusters, manifest.dimension),
    }
    for name, matrix in ((fmt.ITEM_EMBEDDINGS_FILE, embeddings), (fmt.CENTROIDS_FILE, centroids)):
        if matrix.shape != expected[name]:
            raise BundleError(f"{path / name}: shape {matrix.shape}, expected {expected[name]}")

    all_index = load_index(
        path / fmt.ALL_ITEMS_INDEX_FILE, manifest.dimension, manifest.num_items, manifest.hnsw
    )
    clusters = []
    clusters_path = path / fmt.CLUSTERS_FILE
    cluster_records = plain.cluster_records
    if len(cluster_records) != manifest.num_clusters:
        raise BundleError(
            f"{clusters_path}: {len(cluster_records)} clusters, manifest says "
            f"{manifest.num_clusters}"
        )
    for cluster_id, (description, size, rows, top_items) in enumerate(cluster_records):
        index = load_index(
            path / fmt.cluster_index_file(cluster_id), manifest.dimension, len(rows), manifest.hnsw
        )
        if any(not 0 <= row < manifest.num_items for row in top_items):
            raise BundleError(
                f"{clusters_path}: cluster {cluster_id} names a top item out of range"
            )
        clusters.append(Cluster(cluster_id, description, size, rows, index, top_items))

    encoders = {name: path / file for name, file in manifest.encoders.items()}
    tokenizer = _read(
        path / fmt.TOKENIZER_FILE, lambda p: load_tokenizer(p, manifest.max_sequence_length)
    )
    try:
        session, variant = create_session(encoders, device, intra_op_threads)
    except Exception as exc:  # onnxruntime raises several types for a bad model
        raise BundleError(f"{path}: cannot load the ONNX encoder ({exc})") from exc
    encoder = TextEncoder(tokenizer, session, variant)
    head = _load_head(path, manifest, plain.head_text, intra_op_threads)
    probe = encoder.encode([items[0].text if items else "probe"])
    # With a sequence head the text encoder feeds the head, in its own dimension.
    text_dim = (
        manifest.sequence_head.text_dimension if manifest.sequence_head else manifest.dimension
    )
    if probe.shape != (1, text_dim) or not np.all(np.isfinite(probe)):
        raise BundleError(f"{path}: encoder gives {probe.shape}, expected (1, {text_dim})")
    if abs(float(np.linalg.norm(probe)) - 1.0) > _NORM_TOLERANCE:
        raise BundleError(f"{path}: encoder output is not L2-normalised")
    log.info(
        "loaded bundle %s (%d items, %d clusters, %s encoder on %s)",
        manifest.bundle_version,
        manifest.num_items,
        manifest.num_clusters,
        encoder.variant,
        encoder.providers,
    )
    return Bundle(
        path=path,
        manifest=manifest,
        encoder=encoder,
        items=items,
        row_of_item=row_of_item,
        item_embeddings=embeddings,
        centroids=centroids,
        clusters=clusters,
        all_items_index=all_index,
        head=head,
    )


def _load_head(
    path: Path, manifest: fmt.Manifest, text: np.ndarray | None, intra_op_threads: int
) -> UserHead | None:
    """The sequence head, if the bundle has one; checked on one history."""
    spec = manifest.sequence_head
    if spec is None or text is None:
        return None
    if text.shape != (manifest.num_items, spec.text_dimension):
        raise BundleError(
            f"{path / spec.text_embeddings}: shape {text.shape}, expected "
            f"({manifest.num_items}, {spec.text_dimension})"
        )
    try:
        # The head is tiny: CPU beats a device round trip.
        session = open_session(path / spec.file, [CPU], intra_op_threads)
    except Exception as exc:
        raise BundleError(f"{path / spec.file}: cannot load the sequence head ({exc})") from exc
    if spec.interest_merge not in ("quota", "score") or not 0 <= spec.interest_history_share <= 1:
        raise BundleError(
            f"{path / fmt.MANIFEST_FILE}: sequence_head interest_merge "
            f"{spec.interest_merge!r} / interest_history_share {spec.interest_history_share} "
            "(expected quota|score and a share in [0, 1])"
        )
    projection = _read(path / spec.projection, np.load) if spec.projection else None
    head = UserHead(
        session,
        text,
        spec.max_length,
        spec.trained_items,
        projection,
        spec.new_item_neighbours,
        spec.new_item_id_weight,
    )
    probe = head.user_vector([0])
    if probe.shape != (manifest.dimension,) or not np.all(np.isfinite(probe)):
        raise BundleError(
            f"{path / spec.file}: head gives {probe.shape}, expected ({manifest.dimension},)"
        )
    return head
