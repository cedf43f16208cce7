"""The recommendation core: plain Python in, plain results out; knows nothing of gRPC.

Per request: validate → render the history most-recent-first → encode (ONNX) →
score clusters against centroids → search an HNSW index → drop seen items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from pathlib import Path

import hnswlib
import numpy as np

from server.bundle.loader import Bundle
from server.bundle.manifest import render_history
from server.config import ServerConfig
from server.core.catalogue import Catalogue
from server.core.interests import (
    MAX_INTERESTS,
    InterestGroup,
    MergePolicy,
    group_history,
    merge_order,
    split_budget,
)
from server.errors import InvalidArgument
from server.vectors import unit_rows

DEFAULT_K = 10
DEFAULT_NUM_CLUSTERS = 3


class RetrievalMode(str, Enum):
    """Where ranked items are searched."""

    ALL_ITEMS = "all_items"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class Limits:
    """Request bounds; each violation is an INVALID_ARGUMENT naming the field."""

    max_k: int = ServerConfig.max_k
    max_history_items: int = 2048
    max_texts: int = 64
    max_text_chars: int = 4096
    max_item_id_chars: int = 256


@dataclass(frozen=True)
class RecommendQuery:
    """One Recommend request in domain terms (history oldest first)."""

    history_item_ids: Sequence[str] = ()
    history_texts: Sequence[str] = ()
    k: int = 0
    include_seen_items: bool = False
    mode: RetrievalMode | None = None
    num_clusters: int = 0
    # Per-interest answers (server/core/interests.py): 0 = none, the single user vector only.
    num_interests: int = 0


@dataclass(frozen=True)
class PreparedQuery:
    """A validated query, ready to be encoded (possibly in a batch with others)."""

    rows: list[int]
    texts: list[str]
    k: int
    num_clusters: int
    exclude: frozenset[int]
    mode: RetrievalMode
    unknown_item_ids: list[str]
    cost: int
    interests: tuple[InterestGroup, ...] = ()


@dataclass(frozen=True)
class ScoredCluster:
    """A cluster and the user's cosine similarity to its centroid."""

    cluster_id: int
    score: float
    description: str


@dataclass(frozen=True)
class ScoredItem:
    """A recommended item and its cosine similarity to the user."""

    item_id: str
    score: float
    title: str


@dataclass(frozen=True)
class ClusterSummary:
    """One interest cluster as ListClusters answers it."""

    cluster_id: int
    description: str
    size: int
    num_items: int
    top_items: list[tuple[str, str]]  # (item_id, title), most characteristic first


@dataclass(frozen=True)
class Timing:
    """Milliseconds spent per stage of one request."""

    encode_ms: float = 0.0
    search_ms: float = 0.0


@dataclass(frozen=True)
class Interest:
    """One of a user's interests: its group, weight, items, and the history behind it."""

    cluster_id: int
    description: str
    weight: float
    items: list[ScoredItem]
    because_item_ids: list[str]  # the history items of this interest, most recent first


@dataclass(frozen=True)
class Recommendation:
    """The answer to one RecommendQuery."""

    clusters: list[ScoredCluster]
    items: list[ScoredItem]
    unknown_item_ids: list[str]
    bundle_version: str
    timing: Timing = field(default_factory=Timing)
    interests: list[Interest] = field(default_factory=list)


def _check_texts(name: str, texts: Sequence[str], limits: Limits) -> None:
    if len(texts) > limits.max_texts:
        raise InvalidArgument(name, f"{len(texts)} texts, at most {limits.max_texts} allowed")
    for position, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            raise InvalidArgument(
                f"{name}[{position}]",
                f"{len(text)} characters, at most {limits.max_text_chars} allowed",
            )


class RecommenderEngine:
    """Answers recommend and embed calls from one loaded bundle (thread-safe for reads)."""

    def __init__(
        self, bundle: Bundle, limits: Limits | None = None, catalogue_log: Path | None = None
    ) -> None:
        self.bundle = bundle
        self.catalogue = Catalogue(bundle, catalogue_log)
        self.limits = limits or Limits()
        self.max_k = min(self.limits.max_k, len(bundle.items))
        self.default_mode = RetrievalMode(bundle.manifest.default_retrieval_mode)
        head_spec = bundle.manifest.sequence_head
        self.merge_policy = MergePolicy.of(head_spec)  # `irec eval` measures alternatives
        self.default_num_interests = head_spec.default_num_interests if head_spec else 0

    @cached_property
    def item_unit(self) -> np.ndarray:
        """Unit item vectors of the bundle's items (built on the first interests query)."""
        return unit_rows(self.bundle.item_embeddings)

    @property
    def num_items(self) -> int:
        """Items that can be recommended now (after additions and removals)."""
        return len(self.bundle.items) - len(self.catalogue.removed)

    def list_clusters(self, top_items: int = 0) -> list[ClusterSummary]:
        """Every cluster with up to `top_items` of its top items (0 = all kept), live only."""
        if top_items < 0:
            raise InvalidArgument("top_items", f"{top_items} is negative (0 = all kept)")
        removed = self.catalogue.removed
        out = []
        for c in self.bundle.clusters:
            rows = [r for r in c.top_items if r not in removed]
            if top_items:
                rows = rows[:top_items]
            out.append(
                ClusterSummary(
                    c.cluster_id,
                    c.description,
                    c.size,
                    self.catalogue.live[f"cluster_{c.cluster_id}"],
                    [(self.bundle.items.ids[r], self.bundle.items.titles[r]) for r in rows],
                )
            )
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of free texts [len(texts), dim]."""
        self.check_texts(texts)
        return self.bundle.encoder.encode(texts)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of already checked texts (the Embed batcher's run)."""
        return self.bundle.encoder.encode(texts)

    def check_texts(self, texts: Sequence[str]) -> None:
        """Raise InvalidArgument naming the field if Embed texts are out of bounds."""
        if not texts:
            raise InvalidArgument("texts", "empty: give at least one text")
        _check_texts("texts", texts, self.limits)
        for position, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{position}]", "empty text")

    def recommend(self, query: RecommendQuery) -> Recommendation:
        """Clusters and ranked items for one history (unbatched: a batch of one)."""
        (result,) = self.recommend_batch([self.prepare(query)])
        return result

    def prepare(self, query: RecommendQuery) -> PreparedQuery:
        """Validate a query and resolve its history; cheap, raises InvalidArgument."""
        k = self._resolve_k(query.k)
        num_clusters = self._resolve_num_clusters(query.num_clusters)
        rows, unknown = self._resolve_history(query)
        texts = [t for t in query.history_texts if t.strip()]
        interests: tuple[InterestGroup, ...] = ()
        wanted = query.num_interests or self.default_num_interests
        if wanted:
            interests = tuple(
                group_history(
                    rows, self.item_unit, self.bundle.centroids, self._resolve_num_interests(wanted)
                )
            )
        return PreparedQuery(
            rows=rows,
            texts=texts,
            k=k,
            num_clusters=num_clusters,
            exclude=frozenset() if query.include_seen_items else frozenset(rows),
            mode=query.mode or self.default_mode,
            unknown_item_ids=unknown,
            cost=self._cost(rows, texts),
            interests=interests,
        )

    def is_cheap(self, query: PreparedQuery) -> bool:
        """Whether the query is a head run and searches only: IDs, no free text to encode."""
        return self.bundle.head is not None and not query.texts

    def _cost(self, rows: Sequence[int], texts: Sequence[str]) -> int:
        """A length proxy, so a batcher can group similar-length inputs."""
        if self.bundle.head is not None:
            return len(texts)
        return len(self._render(rows, texts))

    def recommend_batch(self, queries: Sequence[PreparedQuery]) -> list[Recommendation]:
        """The batcher's run: one encoder (and head) run, then clusters and search per query.

        Done in one pool thread so a request crosses the event loop / thread boundary
        once. Each result's `timing.encode_ms` is the whole batch's encoder run
        (tokenizing included; the batcher reports that part separately).
        """
        started = time.perf_counter()
        users = self.user_vectors(queries)
        interests = self.interest_vectors(queries)
        encode_ms = (time.perf_counter() - started) * 1e3
        found = self._search_all_items(queries, users) if len(queries) > 1 else {}
        return [
            self.finish(q, u, encode_ms, i, found.get(n))
            for n, (q, u, i) in enumerate(zip(queries, users, interests, strict=True))
        ]

    def _search_all_items(
        self, queries: Sequence[PreparedQuery], users: np.ndarray
    ) -> dict[int, list[ScoredItem]]:
        """Top-k of every all-items query of a batch in one hnswlib call (position → items).

        One `knn_query` over the batch's vectors at the largest k any of them needs, then
        each query's excluded items dropped and its k kept: the same items as one search
        per query (hnswlib keeps max(ef, k) candidates and returns the best k of them, so
        a larger k only extends the list while k ≤ ef_search). Queries with interests or
        cluster mode, and batches needing k > ef_search or that the index cannot answer
        whole, search one by one.
        """
        batch = [
            n
            for n, q in enumerate(queries)
            if q.mode is RetrievalMode.ALL_ITEMS and not q.interests and q.k > 0
        ]
        if len(batch) < 2:
            return {}
        hnsw = self.bundle.manifest.hnsw
        vectors = np.stack([hnsw.query_vector(users[n]) for n in batch])
        with self.catalogue.lock.read():
            size = self.catalogue.live["all"]
            k = min(max(queries[n].k + len(queries[n].exclude) for n in batch), size)
            if not 0 < k <= hnsw.ef_search:  # beyond ef a larger k changes the candidates
                return {}
            try:
                labels, distances = self.bundle.all_items_index.knn_query(
                    vectors, k=k, num_threads=1
                )
            except RuntimeError:  # too few live elements reachable: search one by one
                return {}
            out: dict[int, list[ScoredItem]] = {}
            for n, row_labels, row_distances in zip(batch, labels, distances, strict=True):
                query = queries[n]
                found = [
                    (row, score)
                    for row, score in _scored(row_labels, row_distances)
                    if row not in query.exclude
                ]
                out[n] = self._items(found[: query.k])
            return out

    def take_tokenize_ms(self) -> float:
        """Tokenizing ms of this thread's encoder runs since the last call."""
        return self.bundle.encoder.take_tokenize_ms()

    def user_vectors(self, queries: Sequence[PreparedQuery]) -> np.ndarray:
        """User vectors [len(queries), dim] in one encoder (and head) run for all queries."""
        head = self.bundle.head
        if head is None:
            return self.bundle.encoder.encode([self._render(q.rows, q.texts) for q in queries])
        all_texts = [t for q in queries for t in q.texts]
        encoded = self.bundle.encoder.encode(all_texts) if all_texts else None
        histories: list[tuple[Sequence[int], np.ndarray | None]] = []
        offset = 0
        for q in queries:
            free = None
            if q.texts and encoded is not None:
                free = encoded[offset : offset + len(q.texts)]
                offset += len(q.texts)
            histories.append((q.rows, free))
        return head.user_vectors(histories)

    def interest_vectors(self, queries: Sequence[PreparedQuery]) -> list[np.ndarray]:
        """Each query's interest vectors [its interests, dim] (empty when none asked).

        The head reads each interest's items; every interest of every query in one run.
        """
        head = self.bundle.head
        parts = [(g.rows, None) for q in queries for g in q.interests]
        vectors = (
            head.user_vectors(parts)
            if parts and head is not None
            else np.zeros((0, self.bundle.manifest.dimension), np.float32)
        )
        out, offset = [], 0
        for q in queries:
            out.append(vectors[offset : offset + len(q.interests)])
            offset += len(q.interests)
        return out

    def finish(
        self,
        prepared: PreparedQuery,
        user: np.ndarray,
        encode_ms: float = 0.0,
        interests: np.ndarray | None = None,
        found: list[ScoredItem] | None = None,
    ) -> Recommendation:
        """Cluster scores and item search for one user vector (and its interest vectors).

        `found`: the items when the batch's search already ran (_search_all_items).
        With interests, `items` is their merge: each interest's top items fill its share
        of k (split_budget), taken in turn strongest interest first, no item twice.
        """
        started = time.perf_counter()
        cluster_scores = self.bundle.centroids @ (user / max(float(np.linalg.norm(user)), 1e-12))
        top_clusters = np.argsort(-cluster_scores)[: prepared.num_clusters]
        clusters = [
            ScoredCluster(
                int(c), float(cluster_scores[c]), self.bundle.clusters[int(c)].description
            )
            for c in top_clusters
        ]
        answered: list[Interest] = []
        if prepared.interests and interests is not None and len(interests):
            answered, items = self._interests(prepared, user, interests)
        elif found is not None:
            items = found
        else:
            items = self._search(
                user, prepared.k, set(prepared.exclude), prepared.mode, int(top_clusters[0])
            )
        return Recommendation(
            clusters=clusters,
            items=items,
            unknown_item_ids=prepared.unknown_item_ids,
            bundle_version=self.bundle.version,
            timing=Timing(encode_ms=encode_ms, search_ms=(time.perf_counter() - started) * 1e3),
            interests=answered,
        )

    def _interests(
        self, prepared: PreparedQuery, user: np.ndarray, vectors: np.ndarray
    ) -> tuple[list[Interest], list[ScoredItem]]:
        """Per-interest lists (disjoint) and their merge (self.merge_policy)."""
        groups = prepared.interests
        share = self.merge_policy.whole_history_share
        weights = [share] + [(1 - share) * g.weight for g in groups]
        quotas = split_budget(weights, prepared.k)
        taken = set(prepared.exclude)
        per_interest: list[list[ScoredItem]] = []
        for vector, quota in zip([user, *vectors], quotas, strict=True):
            found = self._search(vector, quota, taken, RetrievalMode.ALL_ITEMS, 0)
            taken |= {self.bundle.row_of_item[i.item_id] for i in found}
            per_interest.append(found)
        merged = [
            per_interest[i][rank] for i, rank in merge_order(quotas) if rank < len(per_interest[i])
        ]
        if self.merge_policy.merge == "score":
            merged.sort(key=lambda item: -item.score)
        ids = self.bundle.items.ids
        answered = [
            Interest(
                cluster_id=g.cluster_id,
                description=self.bundle.clusters[g.cluster_id].description,
                weight=g.weight,
                items=found,
                because_item_ids=[ids[r] for r in reversed(g.rows)][:10],
            )
            for g, found in zip(groups, per_interest[1:], strict=True)
        ]
        return answered, merged[: prepared.k]

    def _resolve_k(self, k: int) -> int:
        if k == 0:
            return min(DEFAULT_K, self.max_k)
        if k < 0 or k > self.max_k:
            raise InvalidArgument("k", f"{k} is out of range: give 1..{self.max_k} (0 = default)")
        return k

    def _resolve_num_interests(self, n: int) -> int:
        if self.bundle.head is None:
            raise InvalidArgument(
                "num_interests",
                "this bundle has no sequence head to read interests with; export a run "
                "trained with one",
            )
        most = min(MAX_INTERESTS, len(self.bundle.clusters))
        if n < 0 or n > most:
            raise InvalidArgument("num_interests", f"{n} is out of range: give 0..{most}")
        return n

    def _resolve_num_clusters(self, n: int) -> int:
        available = len(self.bundle.clusters)
        if n == 0:
            return min(DEFAULT_NUM_CLUSTERS, available)
        if n < 0 or n > available:
            raise InvalidArgument(
                "num_clusters", f"{n} is out of range: give 1..{available} (0 = default)"
            )
        return n

    def _resolve_history(self, query: RecommendQuery) -> tuple[list[int], list[str]]:
        ids, texts = query.history_item_ids, query.history_texts
        if not ids and not texts:
            raise InvalidArgument(
                "history_item_ids", "empty history: give history_item_ids or history_texts"
            )
        if len(ids) > self.limits.max_history_items:
            raise InvalidArgument(
                "history_item_ids",
                f"{len(ids)} items, at most {self.limits.max_history_items} allowed",
            )
        _check_texts("history_texts", texts, self.limits)
        rows: list[int] = []
        unknown: list[str] = []
        for position, item_id in enumerate(ids):
            if len(item_id) > self.limits.max_item_id_chars:
                raise InvalidArgument(
                    f"history_item_ids[{position}]",
                    f"{len(item_id)} characters, at most {self.limits.max_item_id_chars}",
                )
            row = self.bundle.row_of_item.get(item_id)
            if row is None:
                unknown.append(item_id)
            else:
                rows.append(row)
        if not rows and not any(t.strip() for t in texts):
            if unknown:
                example = ", ".join(repr(u) for u in unknown[:3])
                raise InvalidArgument(
                    "history_item_ids",
                    f"none of the {len(unknown)} item IDs is in the catalogue ({example})",
                )
            raise InvalidArgument("history_texts", "all texts are empty")
        return rows, unknown

    def _render(self, rows: Sequence[int], texts: Sequence[str]) -> str:
        item_texts = [self.bundle.items.texts[row] for row in rows]
        return render_history(
            [*item_texts, *texts], separator=self.bundle.manifest.history_separator
        )

    def _search(
        self, user: np.ndarray, k: int, exclude: set[int], mode: RetrievalMode, cluster_id: int
    ) -> list[ScoredItem]:
        """Top-k unseen items; in cluster mode the cluster's index first, topped up globally."""
        found: list[tuple[int, float]] = []
        user = self.bundle.manifest.hnsw.query_vector(user)
        live = self.catalogue.live
        with self.catalogue.lock.read():
            if mode is RetrievalMode.CLUSTER:
                cluster = self.bundle.clusters[cluster_id]
                # Cluster indexes are labelled with global item rows.
                size = live[f"cluster_{cluster_id}"]
                local = _knn(cluster.index, user, k + len(exclude), size)
                found = [(row, s) for row, s in local if row not in exclude][:k]
            if len(found) < k:
                taken = exclude | {row for row, _ in found}
                wanted = k - len(found) + len(taken)
                more = _knn(self.bundle.all_items_index, user, wanted, live["all"])
                found += [(row, s) for row, s in more if row not in taken][: k - len(found)]
            return self._items(found)

    def _items(self, found: Sequence[tuple[int, float]]) -> list[ScoredItem]:
        """(row, score) pairs as answered items: ID, score, title."""
        ids, titles = self.bundle.items.ids, self.bundle.items.titles
        return [ScoredItem(ids[row], score, titles[row]) for row, score in found]


def _knn(index: hnswlib.Index, vector: np.ndarray, k: int, size: int) -> list[tuple[int, float]]:
    """(label, cosine) pairs, best first; hnswlib's ip distance is 1 - dot."""
    k = min(k, size)
    while k > 0:
        try:
            labels, distances = index.knn_query(vector[None, :], k=k)
            break
        except RuntimeError:  # too few live elements reachable (many marked deleted)
            k //= 2
    if k <= 0:
        return []
    return _scored(labels[0], distances[0])


def _scored(labels: np.ndarray, distances: np.ndarray) -> list[tuple[int, float]]:
    """One query's hnswlib answer as (row, cosine) pairs; its ip distance is 1 - dot."""
    return [(int(label), 1.0 - float(d)) for label, d in zip(labels, distances, strict=True)]
