"""The serving benchmarks' cores on the tiny bundle: they run and measure what they say."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks import encoder_latency, floor
from irec.loadgen import LoadSpec, item_ids_from_bundle
from server.config import ServerConfig
from server.core.model_slot import load_engine


def test_encoder_latency_builds_exact_shapes_and_times_each(bundle_dir: Path) -> None:
    encoders = encoder_latency.build_encoders(bundle_dir, ["cpu"], threads=1)
    encoder = next(iter(encoders.values()))
    for batch, tokens in [(1, 16), (3, 24)]:
        texts = encoder_latency.shaped_texts(encoder, batch, tokens)
        assert len(texts) == batch
        assert all(len(encoder.tokenizer.encode(t).ids) == tokens for t in texts)
    started = time.perf_counter()
    rows = encoder_latency.run(encoders, [(1, 16), (4, 24)], repeats=2)
    wall_ms = (time.perf_counter() - started) * 1e3
    assert [r["shape"] for r in rows] == ["1×16", "4×24"]
    medians = [float(r["median_ms"]) for r in rows]  # type: ignore[arg-type]
    # Real timings of these runs: positive, and each shape's repeats fit in the wall time.
    assert all(m > 0 for m in medians) and 2 * sum(medians) <= wall_ms
    assert "| cpu int8 | 4×24 |" in encoder_latency.format_rows(rows)
    assert encoder_latency.parse_shapes("1x32, 32x64") == [(1, 32), (32, 64)]


def test_floor_measures_the_same_queries_in_process(bundle_dir: Path) -> None:
    engine = load_engine(bundle_dir, ServerConfig(bundle=bundle_dir, device="cpu"))
    spec = LoadSpec(target="unused", item_ids=item_ids_from_bundle(bundle_dir), history_length=5)
    queries = floor._queries(spec)[:20]
    assert all(len(q.history_item_ids) == 5 for q in queries)
    started = time.perf_counter()
    times = floor.in_process_latency_ms(engine, queries)
    wall_ms = (time.perf_counter() - started) * 1e3
    assert len(times) == 20 and min(times) > 0 and sum(times) <= wall_ms
    assert floor.in_process_throughput(engine, queries, batch=8, seconds=0.2) > 0
    row = floor.FloorRow("x", served=3.0, floor=2.0, goal="≤ 1.10")
    assert row.ratio == 1.5
    assert "| x | 3.00 | 2.00 | 1.50 | ≤ 1.10 |" in floor.format_rows([row])
