from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.peer import (
    MAX_TOKENS,
    MIN_TOKENS,
    SCENARIOS,
    Measurement,
    Scenario,
    Summary,
    markdown_table,
    percentile,
    scenarios_for,
    summarize,
    user_history_texts,
)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    values = list(np.random.default_rng(0).exponential(size=101))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_counts_texts_per_second_and_milliseconds():
    m = Measurement()
    m.merge(Measurement(latencies_s=[0.010, 0.020, 0.030, 0.040], texts=128, seconds=2.0))
    m.merge(Measurement(latencies_s=[1.0], texts=32, errors=2, seconds=2.0, first_error="boom"))
    s = summarize(m)
    assert (s.round_min, s.round_max) == (16.0, 64.0)
    assert s.requests == 5
    assert s.errors == 2
    assert s.texts_per_s == pytest.approx(40.0)
    assert s.p50_ms == pytest.approx(30.0)
    assert s.p99_ms == pytest.approx(float(np.percentile([10, 20, 30, 40, 1000], 99)))
    assert m.first_error == "boom"
    assert summarize(Measurement()).texts_per_s == 0.0


def test_texts_are_seeded_user_histories():
    first = user_history_texts(50, seed=7)
    assert first == user_history_texts(50, seed=7)
    assert first != user_history_texts(50, seed=8)
    assert all(" | " in t and "(" in t for t in first)
    assert len(set(first)) == len(first)


def test_texts_are_redrawn_until_the_token_count_fits():
    def count_tokens(text):  # stand-in tokenizer: one token per character / 4
        return len(text) // 4

    texts = user_history_texts(200, seed=0, count_tokens=count_tokens)
    assert len(texts) == 200
    assert all(MIN_TOKENS <= count_tokens(t) <= MAX_TOKENS for t in texts)
    assert texts == user_history_texts(200, seed=0, count_tokens=count_tokens)


def test_scenarios_and_labels():
    assert [s.label for s in SCENARIOS] == [
        "1 client × 1 text",
        "16 clients × 1 text",
        "1 client × 32 texts",
    ]

    class OnlySingle:
        single_text_only = True

    assert all(s.texts_per_request == 1 for s in scenarios_for(OnlySingle()))  # type: ignore[arg-type]


def test_markdown_table_ratios_to_baseline():
    label = Scenario(16, 1).label
    rows = [
        ("irec", label, Summary(100, 0, 300.0, 5.0, 9.0, 290.0, 310.0)),
        ("base", label, Summary(100, 1, 100.0, 50.0, 90.0)),
    ]
    lines = markdown_table(rows, baseline="base")
    assert lines[0].startswith("| load | server |")
    assert lines[2] == (
        "| 16 clients × 1 text | irec | 100 | 300.0 | 290.0–310.0 | 5.0 | 9.0 | 0 | 3.00× |"
    )
    assert lines[3].endswith("| – | 50.0 | 90.0 | 1 | 1.00× |")
    assert markdown_table(rows)[2].endswith("| – |")
