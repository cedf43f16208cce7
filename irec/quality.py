"""`irec eval`: the leave-one-out quality protocol end to end, written as a report.

Protocol (fixed so numbers compare with papers): each user's last item is the test
target, the second to last the validation target; tuning uses validation only; all
items are ranked and the user's history is excluded. Baselines run in the same process
on the same split. The exported int8 bundle is evaluated through the server's own
engine (ONNX head, HNSW), beside the torch model with exact search.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    adjusted_rand_score,
    davies_bouldin_score,
    normalized_mutual_info_score,
    silhouette_score,
)

from training import baselines
from training.cluster import cluster_users, item_terms
from training.data import load_spec
from training.evaluate import coverage, summarise, target_ranks, top_k
from training.multi_interest import hits_from_lists, interest_queries, merge_queries
from training.run import StageTimer
from training.sequence_head import HeadConfig, SequenceHead, score_users, train_head
from training.text import render_items
from training.torch_encoder import DEFAULT_MODEL_NAME, embed_texts, load_encoder, resolve_model_dir

VALIDATION_USERS = 1000  # users scored at each validation step (all users for the final numbers)
ITEM_TEXT_MAX_LENGTH = 48
QUICK_USERS = 300


@dataclass(frozen=True)
class EvalConfig:
    """Everything `irec eval` takes."""

    data: str
    out: Path
    model: str | None = None
    quick: bool = False
    seed: int = 0
    head_minutes: float = 45.0
    cold_minutes: float = 12.0
    cold_fraction: float = 0.15
    clusters: int | None = None
    users: int | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    progress: bool = True


@dataclass
class Split:
    """Leave-one-out split over item rows."""

    train: list[list[int]]
    val_targets: list[int]
    test_histories: list[list[int]]
    test_targets: list[int]


def make_split(sequences: list[list[int]]) -> Split:
    """Train = all but the last two items; validation = second to last; test = last."""
    return Split(
        train=[s[:-2] for s in sequences],
        val_targets=[s[-2] for s in sequences],
        test_histories=[s[:-1] for s in sequences],
        test_targets=[s[-1] for s in sequences],
    )


def _dominant_terms(histories: list[list[int]], terms: list[list[str]]) -> list[str]:
    labels = []
    for history in histories:
        counts: dict[str, int] = {}
        for row in history:
            for term in terms[row]:
                counts[term] = counts.get(term, 0) + 1
        labels.append(max(counts, key=lambda t: counts[t]) if counts else "")
    return labels


class QualityRun:
    """One run of the protocol; results accumulate in self.report."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.timer = StageTimer()
        self.report: dict[str, Any] = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "models": {},
            "validation": {},
        }
        config.out.mkdir(parents=True, exist_ok=True)

    # -- bookkeeping -------------------------------------------------------------------
    def record(self, name: str, ranks: np.ndarray, top10: np.ndarray | None, **extra: Any) -> None:
        """Store metrics with bootstrap intervals for one model."""
        metrics: dict[str, Any] = summarise(ranks, seed=self.config.seed)
        if top10 is not None:
            metrics["coverage@10"] = coverage(top10, self.num_items)
        metrics.update(extra)
        self.report["models"][name] = metrics
        print(
            f"[eval] {name}: HR@10 {metrics['hr@10']['mean']:.4f}  "
            f"NDCG@10 {metrics['ndcg@10']['mean']:.4f}",
            flush=True,
        )

    def score_and_record(self, name: str, scores: np.ndarray, **extra: Any) -> np.ndarray:
        """Ranks and top-10 of full-catalogue test scores, recorded under `name`."""
        s = self.split
        ranks = target_ranks(scores, s.test_histories, s.test_targets)
        self.record(name, ranks, top_k(scores, s.test_histories, 10), **extra)
        return ranks

    # -- stages ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """All stages; returns the report dict (also written to disk)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        with self.timer.stage("load data"):
            self._load()
        with self.timer.stage("item text embeddings"):
            self._embed_items()
        with self.timer.stage("baselines"):
            self._baselines()
        with self.timer.stage("sequence head"):
            head = self._train_head()
        with self.timer.stage("clusters and retrieval modes"):
            self._clusters_and_modes(head)
        with self.timer.stage("export and served evaluation"):
            self._served(head)
        with self.timer.stage("cold start"):
            self._cold_start()
        self.report["timings_s"] = self.timer.seconds
        from irec.report import write_report

        write_report(self.report, cfg.out)
        return self.report

    def _load(self) -> None:
        cfg = self.config
        dataset = load_spec(cfg.data)
        items = dataset.items.reset_index(drop=True)
        row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
        sequences = [[row_of[i] for i in seq] for seq in dataset.sequences().values()]
        sequences = [s for s in sequences if len(s) >= 3]
        users = cfg.users or (QUICK_USERS if cfg.quick else None)
        if users is not None and users < len(sequences):
            sequences = random.Random(cfg.seed).sample(sequences, users)
        self.items = items
        self.texts = render_items(items)
        self.terms = item_terms(list(items["categories"]), list(items["title"]))
        self.num_items = len(items)
        self.split = make_split(sequences)
        self.report["data"] = {
            "spec": cfg.data,
            "users": len(sequences),
            "items": self.num_items,
            "interactions": int(sum(map(len, sequences))),
        }
        print(f"[eval] {len(sequences)} users, {self.num_items} items", flush=True)

    def _embed_items(self) -> None:
        cfg = self.config
        if cfg.quick and cfg.model is None:
            from training.tiny_model import build_tiny_bert

            self.model_dir = build_tiny_bert(self.texts, cfg.out / "tiny-model", seed=cfg.seed)
            self.model_name = "tiny-bert (quick mode)"
        else:
            self.model_dir = resolve_model_dir(cfg.model)
            self.model_name = DEFAULT_MODEL_NAME if cfg.model is None else self.model_dir.name
        self.encoder, self.tokenizer = load_encoder(self.model_dir)
        self.text_embeddings = embed_texts(
            self.encoder,
            self.tokenizer,
            self.texts,
            ITEM_TEXT_MAX_LENGTH,
            desc="item texts",
            progress=cfg.progress,
        )

    def _baselines(self) -> None:
        s, n = self.split, self.num_items
        counts = np.bincount([r for h in s.test_histories for r in h], minlength=n).astype(float)
        self.score_and_record("popularity", np.broadcast_to(counts, (len(s.test_targets), n)))
        self.score_and_record(
            "ItemKNN (recency 0.6)", baselines.itemknn_scores(s.test_histories, s.test_histories, n)
        )
        val_ndcg = {}
        for lam in baselines.EASE_LAMBDAS:
            weights = baselines.ease_weights(s.train, n, lam)
            ranks = target_ranks(baselines.ease_scores(weights, s.train), s.train, s.val_targets)
            val_ndcg[lam] = float(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0).mean())
        best = max(val_ndcg, key=lambda lam: val_ndcg[lam])
        self.report["validation"]["EASE λ"] = {str(k): v for k, v in val_ndcg.items()}
        weights = baselines.ease_weights(s.test_histories, n, best)
        self.score_and_record(
            f"EASE (λ={best:g}, tuned on validation)",
            baselines.ease_scores(weights, s.test_histories),
        )
        self.score_and_record(
            "pretrained encoder, no fine-tuning",
            baselines.frozen_text_scores(self.text_embeddings, s.test_histories),
        )

    def _head_config(self) -> HeadConfig:
        cfg = self.config
        if cfg.quick:
            return replace(cfg.head, dim=32, max_length=50, epochs=3, eval_every=1, seed=cfg.seed)
        return replace(cfg.head, seed=cfg.seed)

    def _validator(self, train: list[list[int]], targets: list[int]) -> Any:
        rng = np.random.default_rng(self.config.seed)
        users = rng.choice(len(train), size=min(VALIDATION_USERS, len(train)), replace=False)
        histories = [train[u] for u in users]
        val_targets = [targets[u] for u in users]

        def validate(head: SequenceHead) -> float:
            u, v = score_users(head, histories)
            ranks = target_ranks(u @ v.T, histories, val_targets)
            return float(np.where(ranks < 10, 1 / np.log2(ranks + 2), 0).mean())

        return validate

    def _train_head(self) -> SequenceHead:
        cfg = self.config
        s = self.split
        head = SequenceHead(torch.from_numpy(self.text_embeddings), self._head_config())
        history = train_head(
            head,
            s.train,
            validate=self._validator(s.train, s.val_targets),
            progress=cfg.progress,
            time_budget_s=cfg.head_minutes * 60,
        )
        self.report["head_training"] = history | {"config": asdict(head.config)}
        self.users, self.item_vectors = score_users(head, s.test_histories)
        self.head_ranks = self.score_and_record(
            "irec: text + ID sequence head (torch, exact)", self.users @ self.item_vectors.T
        )
        return head

    def _clusters_and_modes(self, head: SequenceHead) -> None:
        cfg, s = self.config, self.split
        unit = self.users / np.linalg.norm(self.users, axis=1, keepdims=True)
        item_unit = self.item_vectors / np.linalg.norm(self.item_vectors, axis=1, keepdims=True)
        clustering = cluster_users(
            unit, item_unit, s.test_histories, self.terms, cfg.clusters, cfg.seed
        )
        genres = _dominant_terms(s.test_histories, self.terms)
        sample = min(len(unit), 3000)
        self.clustering = clustering
        self.report["clusters"] = {
            "k": len(clustering.centroids),
            "k_scores": {str(k): v for k, v in clustering.k_scores.items()},
            "silhouette": float(
                silhouette_score(
                    unit,
                    clustering.labels,
                    metric="cosine",
                    sample_size=sample,
                    random_state=cfg.seed,
                )
            ),
            "davies_bouldin": float(davies_bouldin_score(unit, clustering.labels)),
            "nmi_vs_dominant_genre": float(normalized_mutual_info_score(genres, clustering.labels)),
            "ari_vs_dominant_genre": float(adjusted_rand_score(genres, clustering.labels)),
            "sizes": clustering.sizes,
            "descriptions": clustering.descriptions,
        }
        self.report["embedding_2d"] = _project_2d(unit, clustering.labels, cfg.seed)
        self.report["modes"] = self._compare_modes(clustering)

    def _compare_modes(self, clustering: Any) -> dict[str, Any]:
        s = self.split
        v = self.item_vectors
        allowed_by_cluster = []
        for rows in clustering.item_rows:
            mask = np.zeros(self.num_items, dtype=bool)
            mask[rows] = True
            allowed_by_cluster.append(mask)
        modes: dict[str, dict[str, float]] = {}
        for budget in (10, 50):
            lists: dict[str, list[list[int]]] = {
                "all items": [],
                "user's cluster": [],
                "multi-interest": [],
                "blend": [],
            }
            for u, history in enumerate(s.test_histories):
                seen = set(history)
                user = self.users[u]
                lists["all items"].append(merge_queries([(user, 1.0)], v, seen, budget))
                cluster_items = merge_queries(
                    [(user, 1.0)], v, seen, budget, allowed_by_cluster[clustering.labels[u]]
                )
                if len(cluster_items) < budget:
                    cluster_items += merge_queries(
                        [(user, 1.0)], v, seen | set(cluster_items), budget - len(cluster_items)
                    )
                lists["user's cluster"].append(cluster_items)
                interests = interest_queries(v, history)
                lists["multi-interest"].append(merge_queries(interests, v, seen, budget))
                total = sum(w for _, w in interests)
                lists["blend"].append(merge_queries([(user, total)] + interests, v, seen, budget))
            for name, per_user in lists.items():
                ranks = hits_from_lists(per_user, s.test_targets)
                hit = ranks < budget
                modes.setdefault(name, {})[f"hr@{budget}"] = float(hit.mean())
                modes[name][f"ndcg@{budget}"] = float(
                    np.where(hit, 1 / np.log2(ranks + 2), 0).mean()
                )
        winner = max(modes, key=lambda m: modes[m]["ndcg@10"])
        for name, m in modes.items():
            print(
                f"[eval] mode {name}: NDCG@10 {m['ndcg@10']:.4f}  HR@50 {m['hr@50']:.4f}",
                flush=True,
            )
        return {"metrics": modes, "winner": winner}

    def _served(self, head: SequenceHead) -> None:
        from export.bundle_writer import ExportOptions, export_run
        from server.bundle import load_bundle
        from server.engine import Limits, RecommenderEngine, RecommendQuery, RetrievalMode
        from training.run_folder import write_run

        cfg, s = self.config, self.split
        run = write_run(
            cfg.out / "run",
            self.encoder,
            self.tokenizer,
            self.items,
            self.texts,
            [str(u) for u in range(len(self.users))],
            self.item_vectors,
            self.users,
            self.clustering,
            {
                "model_name": self.model_name,
                "data": cfg.data,
                "seed": cfg.seed,
                "finetune": {"history_max_length": 128, "item_max_length": ITEM_TEXT_MAX_LENGTH},
                "metrics": self.report["models"],
            },
            head=head,
        )
        winner = self.report["modes"]["winner"]
        mode = RetrievalMode.CLUSTER if winner == "user's cluster" else RetrievalMode.ALL_ITEMS
        manifest = export_run(run, cfg.out / "bundle", ExportOptions(default_mode=mode))
        bundle = load_bundle(cfg.out / "bundle", device="cpu")
        # Whole histories, however long, so every seen item is excluded as in the torch row.
        longest = max(len(h) for h in s.test_histories)
        engine = RecommenderEngine(bundle, Limits(max_history_items=max(longest, 2048)))
        ids = [item.item_id for item in bundle.items]
        lists = []
        started = time.perf_counter()
        for history in s.test_histories:
            # Same retrieval as the torch row (all items), so the gap is quantization + HNSW.
            result = engine.recommend(
                RecommendQuery(
                    history_item_ids=[ids[r] for r in history], k=50, mode=RetrievalMode.ALL_ITEMS
                )
            )
            lists.append([bundle.row_of_item[i.item_id] for i in result.items])
        seconds = time.perf_counter() - started
        ranks = hits_from_lists(lists, s.test_targets)
        served = summarise(np.minimum(ranks, 10**6), seed=cfg.seed)
        served.pop("mrr")
        exact = self.report["models"]["irec: text + ID sequence head (torch, exact)"]
        loss = 1 - served["ndcg@10"]["mean"] / max(exact["ndcg@10"]["mean"], 1e-12)
        self.report["served"] = {
            "metrics": served,
            "coverage@10": coverage(np.array([row[:10] for row in lists]), self.num_items),
            "relative_ndcg@10_loss": loss,
            "requests": len(lists),
            "ms_per_request": seconds / len(lists) * 1e3,
            "bundle_version": manifest.bundle_version,
            "default_mode": mode.value,
            "parity": {k: asdict(v) for k, v in manifest.parity.items()},
            "head_parity_min_cosine": manifest.sequence_head.parity_cosine_min
            if manifest.sequence_head
            else None,
            "hnsw_recall@10": manifest.training.get("hnsw_recall_at_10"),
        }
        print(
            f"[eval] served bundle: NDCG@10 {served['ndcg@10']['mean']:.4f} "
            f"(relative loss {loss:+.2%} vs torch exact)",
            flush=True,
        )

    def _cold_start(self) -> None:
        cfg, s = self.config, self.split
        rng = np.random.default_rng(cfg.seed + 17)
        cold = set(
            rng.choice(
                self.num_items, size=int(cfg.cold_fraction * self.num_items), replace=False
            ).tolist()
        )
        train = [[r for r in seq if r not in cold] for seq in s.train]
        val_targets = s.val_targets
        keep = [u for u, seq in enumerate(train) if len(seq) >= 2 and val_targets[u] not in cold]
        head_config = replace(self._head_config(), seed=cfg.seed + 1)
        head = SequenceHead(torch.from_numpy(self.text_embeddings), head_config)
        history = train_head(
            head,
            [train[u] for u in keep],
            validate=self._validator([train[u] for u in keep], [val_targets[u] for u in keep]),
            excluded_items=sorted(cold),
            progress=cfg.progress,
            time_budget_s=cfg.cold_minutes * 60,
        )
        users = [u for u, t in enumerate(s.test_targets) if t in cold]
        histories = [s.test_histories[u] for u in users]
        targets = [s.test_targets[u] for u in users]
        if not users:
            self.report["cold_start"] = {"users": 0}
            return
        u, v = score_users(head, histories)
        ours = summarise(target_ranks(u @ v.T, histories, targets), seed=cfg.seed)
        counts = np.bincount([r for seq in train for r in seq], minlength=self.num_items).astype(
            float
        )
        pop = summarise(
            target_ranks(np.broadcast_to(counts, (len(users), self.num_items)), histories, targets),
            seed=cfg.seed,
        )
        self.report["cold_start"] = {
            "held_out_items": len(cold),
            "users": len(users),
            "ours": ours,
            "popularity": pop,
            "epochs": history["epoch"][-1] if history["epoch"] else 0,
        }
        print(
            f"[eval] cold start ({len(users)} users): ours NDCG@10 {ours['ndcg@10']['mean']:.4f}, "
            f"popularity {pop['ndcg@10']['mean']:.4f}",
            flush=True,
        )


def _project_2d(unit: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, list]:
    """PCA to 2-D of (a sample of) user embeddings, for the cluster map."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(unit), size=min(3000, len(unit)), replace=False)
    xy = PCA(n_components=2, random_state=seed).fit_transform(unit[rows])
    return {
        "x": xy[:, 0].round(4).tolist(),
        "y": xy[:, 1].round(4).tolist(),
        "cluster": labels[rows].tolist(),
    }


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Run the protocol and write the report into config.out."""
    return QualityRun(config).run()
