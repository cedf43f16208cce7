"""benchmarks.head_epoch: every variant timed on the same batches, ratios to the first."""

from __future__ import annotations

from dataclasses import replace

import torch

from benchmarks.head_epoch import measure, table
from training.sequence_head import HeadConfig


def test_variants_are_timed_in_turn_and_compared_with_the_first() -> None:
    sequences = [[(u + k) % 30 for k in range(12)] for u in range(40)]
    small = HeadConfig(dim=8, max_length=10, batch_size=8)
    variants = {"full": replace(small, negatives=0), "sampled": replace(small, negatives=5)}
    text = torch.nn.functional.normalize(torch.randn(30, 6), dim=-1)
    times = measure(sequences, text, variants, steps=2, rounds=2)
    assert {name: len(t) for name, t in times.items()} == {"full": 4, "sampled": 4}
    assert all(t > 0 for seconds in times.values() for t in seconds)
    markdown, rows = table({"a": [1.0, 3.0, 2.0], "b": [1.0, 1.0, 1.0]}, steps_per_epoch=10)
    assert [r["ratio"] for r in rows] == [1.0, 0.5]
    assert [r["epoch_s"] for r in rows] == [20.0, 10.0]
    assert markdown.count("\n") == 3
