"""The cold-item track of `irec eval`: items held out of training, ranked by their text.

ColdRec-style: a seeded share of the catalogue loses every training interaction; a model
is trained on the rest with the run's TrainConfig; users whose test item is cold are
ranked over the whole catalogue, beside random, popularity and the frozen encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from irec.protocol import EvalConfig, Split
from training import baselines, new_item_choice
from training.evaluate import mean_ndcg, summarise, target_ranks
from training.run import TrainedModel

log = logging.getLogger(__name__)

# Weights of the ID part a cold item borrows from its text neighbours (chosen on validation).
# A mean of many neighbours' ID parts is shorter than one item's, so weights above 1 are
# in the grid (the best on ML-1M cold validation was 2.0, the old grid's edge).
# The same grid and warm budget as `irec train` (training.new_item_choice).
IMPUTED_ID_WEIGHTS = new_item_choice.WEIGHTS
IMPUTED_ID_NEIGHBOURS = new_item_choice.NEIGHBOURS
MAX_WARM_LOSS = new_item_choice.MAX_WARM_LOSS  # what the cold-item weight may cost warm users
TEXT_ONLY_ROW = "ours, every item by text alone (no ID part)"


class Fit(Protocol):
    """QualityRun._fit: the run's model trained on these sequences."""

    def __call__(
        self,
        seed: int,
        train: list[list[int]],
        targets: list[int],
        name: str,
        minutes: float | None = None,
        excluded: list[int] | None = None,
    ) -> TrainedModel:
        """The fitted model (validation on a slice of `targets`)."""


@dataclass(frozen=True)
class ColdItems:
    """The held-out items and whose test and validation targets are among them."""

    cold: set[int]  # every held-out row
    validation: set[int]  # half of them: they choose the imputed ID part's weight
    test: set[int]  # the other half: they are reported
    users: list[int]  # users whose test item is a cold-test item
    validation_users: list[int]  # users whose validation item is a cold-validation item


def held_out_items(config: EvalConfig, split: Split, num_items: int) -> ColdItems:
    """A seeded share of the catalogue, split in half: cold validation and cold test."""
    rng = np.random.default_rng(config.seed + 17)
    cold_rows = rng.choice(num_items, size=int(config.cold_fraction * num_items), replace=False)
    cold = set(cold_rows.tolist())
    validation = set(cold_rows[: len(cold_rows) // 2].tolist())
    test = cold - validation
    return ColdItems(
        cold=cold,
        validation=validation,
        test=test,
        users=[u for u, t in enumerate(split.test_targets) if t in test],
        validation_users=[u for u, t in enumerate(split.val_targets) if t in validation],
    )


def cold_track(
    config: EvalConfig,
    split: Split,
    texts: list[str],
    text_embeddings: np.ndarray,
    fit: Fit,
    validation_rows: list[int],
) -> dict[str, Any]:
    """Items held out of training entirely, then ranked by their text alone.

    ColdRec-style: a seeded share of items loses every training interaction, split in
    half: cold-validation items (users whose validation item is one of them choose how
    much imputed ID part cold items get) and cold-test items (users whose test item is
    one of them are reported). Ranked over the whole catalogue, warm items with their
    ID part. Rows: random (expected NDCG of a uniform ranking), popularity, the frozen
    encoder (cosine to the last item; to the mean of the last 5), and the model
    trained on the rest with the same TrainConfig: every item by text alone; cold
    items by text alone; cold items by text plus an ID part imputed from their text
    neighbours (its weight chosen on cold validation).
    """
    cfg, s = config, split
    num_items = len(texts)
    items = held_out_items(cfg, s, num_items)
    if not items.users:
        return {"users": 0}
    train = [[r for r in seq if r not in items.cold] for seq in s.train]
    keep = [
        u for u, seq in enumerate(train) if len(seq) >= 2 and s.val_targets[u] not in items.cold
    ]
    model = fit(
        cfg.seed + 1,
        [train[u] for u in keep],
        [s.val_targets[u] for u in keep],
        "cold",
        minutes=cfg.cold_minutes,
        excluded=sorted(items.cold),
    )
    histories = [s.test_histories[u] for u in items.users]
    targets = [s.test_targets[u] for u in items.users]

    def row(
        scores: np.ndarray, hs: list[list[int]] = histories, ts: list[int] = targets
    ) -> dict[str, Any]:
        return summarise(target_ranks(scores, hs, ts), seed=cfg.seed)

    users_v = model.user_vectors(histories, texts)
    rows = _baseline_rows(row, histories, train, text_embeddings, num_items)
    imputation: dict[str, Any] = {}
    if model.head is not None:
        imputed, imputation = _imputed_rows(row, model, users_v, s, texts, items, validation_rows)
        rows |= imputed
    else:
        rows["ours"] = row(users_v @ model.item_vectors().T)
    ours = rows["ours"]["ndcg@10"]["mean"]
    text_only = rows.get(TEXT_ONLY_ROW, rows["ours"])["ndcg@10"]["mean"]
    result = {
        "ndcg10": ours,
        "text_only_ndcg10": text_only,
        "random_ndcg10": rows["random"]["ndcg@10"]["mean"],
        "held_out_items": len(items.cold),
        "test_items": len(items.test),
        "users": len(items.users),
        "rows": rows,
        "imputation": imputation,
        "shipped": model.shipped,
        "encoder_finetuned": model.encoder_finetuned,
        "epochs": model.training["head"]["epoch"][-1] if model.training.get("head") else 0,
    }
    log.info(
        "cold track (%d users): ours NDCG@10 %.4f, random %.4f, frozen last item %.4f",
        len(items.users),
        ours,
        rows["random"]["ndcg@10"]["mean"],
        rows["pretrained encoder, cosine to the last item"]["ndcg@10"]["mean"],
    )
    return result


Row = Callable[..., dict[str, Any]]


def _baseline_rows(
    row: Row,
    histories: list[list[int]],
    train: list[list[int]],
    text: np.ndarray,
    num_items: int,
) -> dict[str, dict[str, Any]]:
    """Random, popularity (on the training sequences) and the pretrained encoder."""
    rows: dict[str, dict[str, Any]] = {}
    rows["random"] = _random_ranking(histories, num_items)
    counts = np.bincount([r for seq in train for r in seq], minlength=num_items)
    rows["popularity"] = row(np.broadcast_to(counts.astype(float), (len(histories), num_items)))
    last = text[[h[-1] for h in histories]]
    rows["pretrained encoder, cosine to the last item"] = row(last @ text.T)
    rows["pretrained encoder, mean of the last 5 items"] = row(
        baselines.frozen_text_scores(text, histories)
    )
    return rows


def _imputed_rows(
    row: Row,
    model: TrainedModel,
    users_v: np.ndarray,
    s: Split,
    texts: list[str],
    items: ColdItems,
    validation_rows: list[int],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The head model's rows, and how the imputed ID part of cold items was chosen.

    Rows: every item by text alone, cold items by text alone, and cold items with the
    imputed ID part whose weight cold validation chose.
    """
    cold = items.cold
    head = model.head
    assert head is not None
    with torch.no_grad():
        table = head.item_text[1:].numpy()
        text_only = head.text_item_vectors(head.item_text[1:]).numpy()
        projection = head.text_projection.weight.numpy()
    rows = {TEXT_ONLY_ROW: row(users_v @ text_only.T)}
    vectors = model.item_vectors()

    def served_as_new(neighbours: int, weight: float) -> np.ndarray:
        """Every item's vector, cold items as the server adds a new item."""
        return new_item_choice.served_as_new(vectors, table, projection, cold, neighbours, weight)

    rows["ours, cold items by text alone"] = row(users_v @ vectors.T)
    # The imputed ID part's weight is chosen on validation: the best for users whose
    # validation item is cold, among weights that cost users whose validation item
    # is warm at most 1% NDCG@10 (boosting every cold item must not buy cold hits
    # with warm misses).
    val_cold = [u for u in items.validation_users if len(s.train[u]) >= 1]
    val_warm = [u for u in validation_rows if s.val_targets[u] not in cold and len(s.train[u]) >= 1]

    def val_users_vectors(
        rows_: list[int],
    ) -> tuple[list[list[int]], list[int], np.ndarray]:
        hs = [s.train[u] for u in rows_]
        ts = [s.val_targets[u] for u in rows_]
        return hs, ts, model.user_vectors(hs, texts) if rows_ else np.zeros(0)

    slices = {"cold": val_users_vectors(val_cold), "warm": val_users_vectors(val_warm)}

    def val_ndcg(name: str, vectors_: np.ndarray) -> float:
        hs, ts, uv = slices[name]
        if not hs:
            return 0.0
        return mean_ndcg(target_ranks(uv @ vectors_.T, hs, ts))

    def measure(neighbours: int, weight: float) -> tuple[float, float]:
        candidate = served_as_new(neighbours, weight)
        return val_ndcg("cold", candidate), val_ndcg("warm", candidate)

    best_try, tries = new_item_choice.choose(
        measure, IMPUTED_ID_NEIGHBOURS, IMPUTED_ID_WEIGHTS, MAX_WARM_LOSS
    )
    tried = [asdict(t) for t in tries]
    best, best_n = best_try.weight, best_try.neighbours
    chosen = served_as_new(best_n, best)
    rows["ours"] = row(users_v @ chosen.T)
    # The same model for users whose test item is warm: what the imputation costs.
    warm_users = [u for u, t in enumerate(s.test_targets) if t not in cold][:2000]
    wh = [s.test_histories[u] for u in warm_users]
    wt = [s.test_targets[u] for u in warm_users]
    wv = model.user_vectors(wh, texts)
    imputation = {
        "neighbours": best_n,
        "weight": best,
        "max_warm_loss": MAX_WARM_LOSS,
        "validation_ndcg10": tried,
        "validation_users": {"cold": len(val_cold), "warm": len(val_warm)},
        "warm_test_ndcg10_without": row(wv @ vectors.T, wh, wt)["ndcg@10"]["mean"],
        "warm_test_ndcg10_with": row(wv @ chosen.T, wh, wt)["ndcg@10"]["mean"],
        "warm_test_users": len(warm_users),
    }
    return rows, imputation


def _random_ranking(histories: list[list[int]], num_items: int) -> dict[str, Any]:
    """Expected metrics of a uniformly random ranking of each user's unseen items."""
    out: dict[str, Any] = {}
    for k in (10, 50):
        hr, ndcg = [], []
        for history in histories:
            unseen = max(num_items - len(set(history)), 1)
            top = min(k, unseen)
            hr.append(top / unseen)
            ndcg.append(sum(1 / np.log2(r + 2) for r in range(top)) / unseen)
        # An expectation, not a sample: no interval.
        for name, values in ((f"hr@{k}", hr), (f"ndcg@{k}", ndcg)):
            mean = float(np.mean(values))
            out[name] = {"mean": mean, "low": mean, "high": mean}
    return out
