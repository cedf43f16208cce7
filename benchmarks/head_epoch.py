"""What one training epoch of the sequence head costs, recipe against recipe, side by side.

    .venv/bin/python -m benchmarks.head_epoch --data movielens-1m-sasrec:DIR \
        [--text-embeddings items.npy] [--steps 8] [--rounds 3] [--threads 2]

Each variant is a HeadConfig; all train on the same real batches (the data's training
sequences, right-aligned to the head's length), one step each in turn, round after
round, so a busy machine slows every variant alike. A step's time is forward +
backward + optimizer step; the median step × steps per epoch is the epoch's cost.
Ratios are against the first variant (the recipe before issue 22). Without
--text-embeddings random unit vectors stand in for the item texts (their values do not
change the cost). Prints a Markdown table and records it in
benchmarks/results/head_epoch.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import results as results_file
from training.data import load_spec
from training.sequence_head import (
    HeadConfig,
    SequenceHead,
    StepInputs,
    step_loss,
    training_pairs,
)

# The recipe before issue 22 (full softmax in fp32, the text-only CE on a quarter of the
# positions, ID dropout 0.2 / 0.2, 2 heads, FFN 2×), then today's defaults and variants.
VARIANTS: dict[str, dict[str, Any]] = {
    "before: full softmax fp32 + text CE + ID dropout": {
        "negatives": 0,
        "bf16": False,
        "text_loss_weight": 0.5,
        "id_dropout": 0.2,
        "text_only_histories": 0.2,
        "heads": 2,
        "feedforward": 2,
        "delta_cap": 0.0,
    },
    "full softmax fp32": {"negatives": 0, "bf16": False},
    "full softmax bf16": {"negatives": 0},
    "1024 shared negatives fp32": {"bf16": False},
    "now: 1024 shared negatives bf16": {},
    "256 shared negatives bf16": {"negatives": 256},
}


def _sequences(spec: str) -> tuple[list[list[int]], int]:
    dataset = load_spec(spec)
    items = dataset.items.reset_index(drop=True)
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    sequences = [[row_of[i] for i in s][:-2] for s in dataset.sequences().values()]
    return sequences, len(items)


def measure(
    sequences: list[list[int]],
    text: torch.Tensor,
    variants: dict[str, HeadConfig],
    steps: int,
    rounds: int,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Seconds of each variant's training steps, interleaved: {variant: [seconds, ...]}."""
    rng = np.random.default_rng(seed)
    first = next(iter(variants.values()))
    inputs, targets = training_pairs(sequences, first.max_length)
    heads = {name: SequenceHead(text, config) for name, config in variants.items()}
    optimizers = {name: torch.optim.AdamW(h.parameters()) for name, h in heads.items()}
    allowed = torch.arange(text.shape[0])
    times: dict[str, list[float]] = {name: [] for name in heads}
    for _ in range(rounds * steps + 1):  # the first step of each variant warms up
        rows = rng.choice(len(inputs), size=min(first.batch_size, len(inputs)), replace=False)
        ids, target = torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])
        for name, head in heads.items():
            head.train()
            started = time.perf_counter()
            loss = step_loss(head, ids, target, StepInputs(allowed, None, None, None))
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            times[name].append(time.perf_counter() - started)
    return {name: t[1:] for name, t in times.items()}


def table(times: dict[str, list[float]], steps_per_epoch: int) -> tuple[str, list[dict]]:
    """Markdown table (median step, epoch estimate, ratio to the first variant) and rows."""
    rows = []
    reference = statistics.median(next(iter(times.values())))
    for name, seconds in times.items():
        step = statistics.median(seconds)
        rows.append(
            {
                "variant": name,
                "median_step_s": round(step, 4),
                "epoch_s": round(step * steps_per_epoch, 1),
                "ratio": round(step / reference, 3),
                "steps_timed": len(seconds),
            }
        )
    lines = [
        "| variant | median step (s) | epoch (s) | × the recipe before |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['median_step_s']:.3f} | {r['epoch_s']:.1f} | {r['ratio']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines), rows


def main() -> None:
    """Parse flags, time the variants, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data SPEC (irec train's --data)")
    parser.add_argument("--text-embeddings", type=Path, help=".npy of item text embeddings")
    parser.add_argument("--steps", type=int, default=8, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--variants", default=";".join(VARIANTS), help="semicolon-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = results_file.machine()
    sequences, num_items = _sequences(args.data)
    if args.text_embeddings:
        text = torch.from_numpy(np.load(args.text_embeddings)).float()
    else:
        text = torch.nn.functional.normalize(torch.randn(num_items, 384), dim=-1)
    variants = {name: replace(HeadConfig(), **VARIANTS[name]) for name in args.variants.split(";")}
    times = measure(sequences, text, variants, args.steps, args.rounds)
    steps_per_epoch = math.ceil(sum(len(s) >= 2 for s in sequences) / HeadConfig().batch_size)
    markdown, rows = table(times, steps_per_epoch)
    print(markdown)
    subject = f"{args.data.split(':')[0]} ({len(sequences)} users, {args.threads} threads)"
    path = results_file.record_table("head_epoch", subject, markdown, before, rows=rows)
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
