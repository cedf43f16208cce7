"""Benchmark 4's core on the tiny BERT: every encoder variant builds, runs, embeds like eager."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.encoder_variants import (
    EAGER,
    RankingTask,
    build_variants,
    cosine_rows,
    head_ndcg,
    latency_table,
    measure_latency,
    quality_rows,
    quality_table,
    synthetic_feeds,
)
from training.evaluate import summarise, target_ranks
from training.sequence_head import HeadConfig, SequenceHead, score_users

TEXTS = [
    "The Velvet Quartet (1961). Jazz, Music",
    "Night of the Android (1984). Science Fiction, Horror",
    "jazz",
    "?",
    "Cooking at home with the family on a long and rainy weekend in the mountains",
    "The Smart Retirement (2004). Finance",
]


def test_variants_time_and_embed_like_eager(tiny_model_dir, tmp_path):
    variants, input_names, vocab = build_variants(tiny_model_dir, tmp_path, threads=1)
    names = [v.name for v in variants]
    assert names[0] == EAGER and len(names) == len(set(names)) >= 6

    shapes = ((1, 8), (2, 16))
    feeds = {s: synthetic_feeds(*s, input_names, vocab) for s in shapes}
    times = measure_latency(variants, feeds, repeats=1, warmup=0)
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())
    table = latency_table(variants, times, shapes).splitlines()
    assert len(table) == 2 + len(variants)
    assert "1×8 median / p90 ms" in table[0] and "2×16 median / p90 ms" in table[0]
    for line, name in zip(table[2:], names, strict=True):
        assert line.startswith(f"| {name} | ")
    assert table[2].count("| 1.00 |") == len(shapes)  # eager against itself

    for shape, f in feeds.items():
        eager = variants[0].run(f)
        assert eager.shape == (shape[0], 32)
        for v in variants[1:]:
            assert cosine_rows(v.run(f), eager).min() >= 0.9, (v.name, shape)
    eager_texts = variants[0].embed(TEXTS, 48)
    for v in variants[1:]:
        assert cosine_rows(v.embed(TEXTS, 48), eager_texts).min() >= 0.9, v.name


def test_ndcg_core_feeds_each_variants_item_texts_to_the_head(tiny_model_dir, tmp_path):
    variants, _, _ = build_variants(tiny_model_dir, tmp_path, threads=1)
    variants = [variants[0], variants[3]]  # eager and the int8 the export ships
    texts = [f"{t} #{i}" for i in range(5) for t in TEXTS]
    rng = np.random.default_rng(0)
    histories = [rng.choice(len(texts), size=4, replace=False).tolist() for _ in range(40)]
    targets = [int(rng.choice([r for r in range(len(texts)) if r not in h])) for h in histories]
    torch.manual_seed(0)
    eager = variants[0].embed(texts, 48)
    head = SequenceHead(torch.from_numpy(eager), HeadConfig(dim=16, max_length=8)).eval()

    # Feeding the head its own item texts reproduces score_users exactly.
    u, v = score_users(head, histories)
    expected = summarise(target_ranks(u @ v.T, histories, targets))["ndcg@10"]
    ndcg = head_ndcg(head, eager, histories, targets)
    assert ndcg == expected
    assert 0.0 <= ndcg["low"] <= ndcg["mean"] <= ndcg["high"] <= 1.0
    # Other embeddings change the ranking; the head's own table is restored afterwards.
    assert head_ndcg(head, np.zeros_like(eager), histories, targets) != expected
    assert torch.equal(head.item_text[1:], torch.from_numpy(eager))

    rows = quality_rows(variants, RankingTask(head, texts, histories, targets, "40 users"))
    assert [r["variant"] for r in rows] == [v.name for v in variants]
    assert rows[0]["relative_loss"] == 0.0 and rows[0]["ndcg"] == ndcg
    assert rows[1]["cos_min"] >= 0.9
    table = quality_table(rows, len(texts)).splitlines()
    assert len(table) == 2 + len(rows) and table[2].startswith(f"| {EAGER} | 1.0000 / 1.0000")
