"""Compare sequence-head variants on validation NDCG@10 (and test), side by side in one run.

    python -m training.head_sweep --data movielens-1m-sasrec:DIR --minutes 8 \
        --variants text+id,id,text --device cpu

Item text embeddings come from the encoder (or a saved .npy, for machines without
the training stack). Each variant gets the same time budget and seed.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import load_spec
from training.evaluate import summarise, target_ranks
from training.sequence_head import HeadConfig, SequenceHead, score_users, train_head
from training.text import render_items

log = logging.getLogger(__name__)

VARIANTS: dict[str, dict[str, Any]] = {
    "text+id": {},
    "id": {"use_text": False},
    "text": {"use_ids": False},
    "text+id dim128": {"dim": 128},
    "text+id lr1e-3": {"learning_rate": 1e-3},
    "text+id dropout0.5": {"dropout": 0.5},
}


def main() -> None:
    """Parse flags, train each variant, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data SPEC")
    parser.add_argument("--text-embeddings", type=Path, help=".npy of item text embeddings")
    parser.add_argument("--variants", default="text+id,id,text", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=8.0, help="time budget per variant")
    parser.add_argument("--epochs", type=int, default=200, help="most epochs per variant")
    parser.add_argument("--eval-every", type=int, default=2, help="epochs between validations")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    dataset = load_spec(args.data)
    items = dataset.items.reset_index(drop=True)
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    sequences = [[row_of[i] for i in s] for s in dataset.sequences().values()]
    if args.text_embeddings:
        text = np.load(args.text_embeddings)
    else:
        from training.torch_encoder import embed_texts, load_encoder, resolve_model_dir

        encoder, tokenizer = load_encoder(resolve_model_dir(None))
        text = embed_texts(encoder, tokenizer, render_items(items), 48, progress=False)
    train = [s[:-2] for s in sequences]
    val_targets = [s[-2] for s in sequences]
    test_histories = [s[:-1] for s in sequences]
    test_targets = [s[-1] for s in sequences]

    def ndcg10(head: SequenceHead, histories: list[list[int]], targets: list[int]) -> dict:
        u, v = score_users(head, histories)
        return summarise(target_ranks(u @ v.T, histories, targets), seed=args.seed)

    rows = []
    for name in args.variants.split(","):
        config = replace(
            HeadConfig(epochs=args.epochs, eval_every=args.eval_every, seed=args.seed),
            **VARIANTS[name],
        )
        torch.manual_seed(args.seed)
        head = SequenceHead(torch.from_numpy(text), config).to(args.device)
        started = time.perf_counter()
        history = train_head(
            head,
            train,
            validate=lambda h: ndcg10(h, train, val_targets)["ndcg@10"]["mean"],
            progress=False,
            time_budget_s=args.minutes * 60,
        )
        seconds = time.perf_counter() - started
        test = ndcg10(head, test_histories, test_targets)
        rows.append(
            (
                name,
                max(history["val_ndcg@10"]),
                history.get("best_epoch", [0])[0],
                history["epoch"][-1],
                seconds,
                test,
            )
        )
        log.info("%s: val %.4f test %.4f", name, rows[-1][1], test["ndcg@10"]["mean"])
    print(
        "\n| variant | best val NDCG@10 | best epoch | epochs run | minutes | test HR@10 |", end=""
    )
    print(" test NDCG@10 |")
    print("|---|---|---|---|---|---|---|")
    for name, val, best, epochs, seconds, test in rows:
        print(
            f"| {name} | {val:.4f} | {best:.0f} | {epochs} | {seconds / 60:.1f} | "
            f"{test['hr@10']['mean']:.4f} | {test['ndcg@10']['mean']:.4f} |"
        )


if __name__ == "__main__":
    main()
