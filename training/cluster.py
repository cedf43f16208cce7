"""Group users into interest clusters (K-Means on unit embeddings) and describe each cluster."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from server.vectors import unit_rows
from training.cluster_choice import ClusteringScore, choose, compare_clusterings, fit_labels

# Range searched when K is chosen automatically, and the users sampled to score it.
AUTO_K_RANGE = range(4, 17)
SILHOUETTE_SAMPLE = 3000
# Items consumed most by a cluster's members join its index (besides the items
# nearest its centroid), so cluster search covers what the cluster really takes.
POPULAR_ITEMS_PER_CLUSTER = 100
# A secondary term joins a cluster's description only if it sets the cluster apart at
# least this fraction as much as the first term does (else it is noise or everywhere).
MIN_TERM_SCORE_RATIO = 1 / 3
# Example titles in a description (more when two clusters would read the same), and
# characteristic items kept per cluster (ListClusters, `irec clusters`).
EXAMPLE_TITLES = 3
TOP_ITEMS_PER_CLUSTER = 10
OLDEST_DECADE = 1970  # older items share one term (each earlier decade alone is thin)
Key = TypeVar("Key", bound=Hashable)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")
_STOPWORDS = {"the", "and", "of", "for", "with", "from", "into", "a", "an", "in", "on"}


@dataclass(frozen=True)
class Clustering:
    """Cluster centroids (unit rows), each user's cluster, descriptions and item sets."""

    centroids: np.ndarray
    labels: np.ndarray
    descriptions: list[str]
    item_rows: list[list[int]]
    silhouette: float
    k_scores: dict[int, float]
    # Per cluster, the items that set it apart (characteristic(); most first).
    top_items: list[list[int]] = field(default_factory=list)
    # How the grouping was chosen (training/cluster_choice.py): method, why, every try.
    method: str = "k-means"
    choice: str = ""
    comparison: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        """Users per cluster."""
        return np.bincount(self.labels, minlength=len(self.centroids)).tolist()


def choose_k(
    embeddings: np.ndarray, seed: int, candidates: Sequence[int] = AUTO_K_RANGE
) -> dict[int, float]:
    """Silhouette (cosine) of K-Means for each candidate K on a sample of users."""
    rng = np.random.default_rng(seed)
    sample = embeddings
    if len(embeddings) > SILHOUETTE_SAMPLE:
        sample = embeddings[rng.choice(len(embeddings), SILHOUETTE_SAMPLE, replace=False)]
    scores = {}
    for k in candidates:
        if k >= len(sample):
            break
        labels = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(sample)
        scores[k] = float(silhouette_score(sample, labels, metric="cosine"))
    return scores


def characteristic(
    labels: np.ndarray,
    user_items: Sequence[Sequence[int]],
    keys_of: Callable[[int], Sequence[Key]],
    num_clusters: int,
    top: int,
) -> list[list[tuple[Key, float, float]]]:
    """Per cluster, the keys (terms, items) that set it apart from the whole population.

    Each user weighs 1 (spread over their items). A key's score in a cluster is its
    share there × log2(its lift over all users): its term in the KL divergence of the
    cluster from the population, so a key common everywhere (Drama on MovieLens) scores
    about 0 however frequent, and a rare one little however concentrated. Returns
    (key, score, share in the cluster) for the `top` keys with a positive score.
    """
    overall: defaultdict[Key, float] = defaultdict(float)
    per_cluster: list[defaultdict[Key, float]] = [defaultdict(float) for _ in range(num_clusters)]
    for label, items in zip(labels, user_items, strict=True):
        if not len(items):
            continue
        weight = 1.0 / len(items)
        for row in items:
            for key in keys_of(int(row)):
                per_cluster[int(label)][key] += weight
                overall[key] += weight
    total = sum(overall.values()) or 1.0
    out = []
    for counts in per_cluster:
        mass = sum(counts.values()) or 1.0
        scored = []
        for key, count in counts.items():
            share = count / mass
            lift = share / (overall[key] / total)
            if lift > 1:
                scored.append((key, share * math.log2(lift), share))
        scored.sort(key=lambda t: (-t[1], str(t[0])))
        out.append(scored[:top])
    return out


def describe(
    labels: np.ndarray,
    user_items: Sequence[Sequence[int]],
    item_terms: Sequence[Sequence[str]],
    num_clusters: int,
    top: int = 3,
    titles: Sequence[str] | None = None,
    top_items: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """One readable, distinct line per cluster: what sets it apart, and example titles.

    Terms (categories, else title words; decades) ranked by `characteristic`; the first
    always, the others only above MIN_TERM_SCORE_RATIO of the first's score. With `titles`
    and `top_items` (each cluster's characteristic item rows), the first example titles
    follow ("Sci-Fi, Action: Star Wars, Alien, Terminator"), as many as needed to tell
    two clusters apart; a description still shared gets the cluster's number.
    """
    ranked = characteristic(labels, user_items, lambda r: item_terms[r], num_clusters, top)
    descriptions = []
    examples: list[list[str]] = []
    for c, terms in enumerate(ranked):
        kept = [str(t) for t, score, _ in terms if score >= MIN_TERM_SCORE_RATIO * terms[0][1]]
        descriptions.append(", ".join(kept) if kept else "broad taste")
        rows = top_items[c] if top_items is not None else []
        examples.append([titles[r] for r in rows] if titles is not None else [])
    shown = dict.fromkeys(range(num_clusters), 0)
    for c in shown:
        shown[c] = min(EXAMPLE_TITLES, len(examples[c]))
    for _ in range(max((len(e) for e in examples), default=0) + 1):
        lines = [_line(descriptions[c], examples[c][: shown[c]]) for c in range(num_clusters)]
        repeated = {line for line in lines if lines.count(line) > 1}
        if not repeated:
            return lines
        for c in range(num_clusters):
            if lines[c] in repeated and shown[c] < len(examples[c]):
                shown[c] += 1
    lines = [_line(descriptions[c], examples[c][: shown[c]]) for c in range(num_clusters)]
    return [f"{line} (#{c})" if lines.count(line) > 1 else line for c, line in enumerate(lines)]


def _line(terms: str, titles: Sequence[str]) -> str:
    return f"{terms}: {', '.join(titles)}" if titles else terms


def item_terms(
    categories: Sequence[Sequence[str]],
    titles: Sequence[str],
    years: Sequence[object] | None = None,
) -> list[list[str]]:
    """Categories where the catalogue has them, else content words of the title.

    With `years`, each dated item also gets its decade ("1990s", or "before 1970"): on
    MovieLens, taste for classics or for new releases sets clusters apart as much as genre.
    """
    if any(categories):
        terms = [list(c) for c in categories]
    else:
        terms = [
            [w.lower() for w in _WORD.findall(t) if w.lower() not in _STOPWORDS] for t in titles
        ]
    for row, year in enumerate(years if years is not None else []):
        if isinstance(year, int | float | np.integer | np.floating) and year == year and year > 0:
            decade = int(year) // 10 * 10
            terms[row].append(
                f"{decade}s" if decade >= OLDEST_DECADE else f"before {OLDEST_DECADE}"
            )
    return terms


def cluster_users(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    user_items: Sequence[Sequence[int]],
    terms: Sequence[Sequence[str]],
    k: int | None,
    seed: int,
    titles: Sequence[str] | None = None,
) -> Clustering:
    """Users' interest groups on unit user embeddings, descriptions, item sets.

    The method (K-Means, Gaussian mixture, Ward) and, unless given, K are chosen by
    measure (training/cluster_choice.py: silhouette among the configurations stable
    across seeds); the comparison is kept in the result. Serving assigns by nearest
    centroid, so the groups become centroids (K-Means' own, else the groups' means).
    `titles` (item rows' titles) give each description its example titles.
    """
    if k is not None and not 1 <= k <= len(user_embeddings):
        raise ValueError(f"--clusters {k}: need 1..{len(user_embeddings)} (number of users)")
    candidates = [k] if k is not None else [c for c in AUTO_K_RANGE if c < len(user_embeddings)]
    if not candidates:
        raise ValueError("too few users to choose K automatically; pass --clusters")
    comparison: list[ClusteringScore] = []
    method = "k-means"
    if candidates != [1]:
        comparison = compare_clusterings(
            user_embeddings, candidates, seed, known=dominant_terms(user_items, terms)
        )
        chosen, reason = choose(comparison)
        method, k = chosen.method, chosen.k
    else:
        k, reason = 1, "one cluster asked for"
    assert k is not None
    k_scores = {s.k: s.silhouette for s in comparison if s.method == method and len(candidates) > 1}
    if method == "k-means":
        model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(user_embeddings)
        labels, centers = model.labels_.astype(np.int64), model.cluster_centers_
    else:
        # A mixture component can end up empty: groups are renumbered 0..K-1.
        _, labels = np.unique(fit_labels(method, user_embeddings, k, seed), return_inverse=True)
        labels = labels.astype(np.int64)
        k = int(labels.max()) + 1
        centers = np.stack([user_embeddings[labels == c].mean(axis=0) for c in range(k)])
    silhouette = (
        float(
            silhouette_score(
                user_embeddings,
                labels,
                metric="cosine",
                sample_size=min(len(labels), SILHOUETTE_SAMPLE),
                random_state=seed,
            )
        )
        if 1 < k < len(user_embeddings)
        else 0.0
    )
    clustering = describe_clustering(
        centers, labels, item_embeddings, user_items, terms, silhouette, k_scores, titles
    )
    return replace(
        clustering, method=method, choice=reason, comparison=[asdict(s) for s in comparison]
    )


def dominant_terms(
    user_items: Sequence[Sequence[int]], terms: Sequence[Sequence[str]]
) -> np.ndarray:
    """Each user's most frequent term (known structure to compare groups with)."""
    out = []
    for items in user_items:
        counts = Counter(t for row in items for t in terms[row])
        out.append(counts.most_common(1)[0][0] if counts else "")
    return np.asarray(out)


def describe_clustering(
    centers: np.ndarray,
    labels: np.ndarray,
    item_embeddings: np.ndarray,
    user_items: Sequence[Sequence[int]],
    terms: Sequence[Sequence[str]],
    silhouette: float,
    k_scores: dict[int, float],
    titles: Sequence[str] | None = None,
) -> Clustering:
    """Unit centroids, each cluster's item set and description, from a fitted clustering."""
    k = len(centers)
    centroids = unit_rows(centers.astype(np.float32))
    nearest = np.argmax(item_embeddings @ centroids.T, axis=1)
    item_rows = []
    for c in range(k):
        counts: Counter[int] = Counter()
        for label, items in zip(labels, user_items, strict=True):
            if label == c:
                counts.update(items)
        popular = {row for row, _ in counts.most_common(POPULAR_ITEMS_PER_CLUSTER)}
        item_rows.append(sorted(popular | set(np.flatnonzero(nearest == c).tolist())))
    top_items = [
        [int(row) for row, _, _ in ranked]
        for ranked in characteristic(labels, user_items, lambda r: (r,), k, TOP_ITEMS_PER_CLUSTER)
    ]
    return Clustering(
        centroids=centroids,
        labels=labels,
        descriptions=describe(labels, user_items, terms, k, titles=titles, top_items=top_items),
        item_rows=item_rows,
        silhouette=silhouette,
        k_scores=k_scores,
        top_items=top_items,
    )
