from __future__ import annotations

import json

import numpy as np

from benchmarks import retrieval, startup
from server.bundle import manifest as fmt
from server.bundle.loader import load_bundle


def test_retrieval_core_at_a_tiny_size(tmp_path):
    catalogue = retrieval.synthetic(2000, num_queries=50, dim=32, seed=0)
    assert np.allclose(np.linalg.norm(catalogue.vectors, axis=1), 1.0, atol=1e-5)
    truth = retrieval.exact_top_k(catalogue.vectors, catalogue.queries)
    # Exact search against itself: recall 1.0, best first.
    scores = catalogue.queries @ catalogue.vectors.T
    best = np.argsort(-scores, axis=1)[:, : retrieval.K]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(truth, best, strict=True)]) == 10
    assert np.all(np.diff(np.take_along_axis(scores, truth, axis=1), axis=1) <= 0)

    results = retrieval.measure(catalogue, [10, 200], [16], repeats=1, cache_dir=tmp_path)
    (result,) = results
    low, high = result.sweep
    assert 0.0 <= low.recall <= 1.0
    assert high.recall >= 0.98
    assert result.exact_qps > 0 and high.qps > 0
    assert result.build.size_bytes > 0 and not result.build.cached
    # A second run loads the cached index and reports the first build's time.
    (again,) = retrieval.measure(catalogue, [200], [16], repeats=1, cache_dir=tmp_path)
    assert again.build.cached and again.build.seconds == result.build.seconds
    assert again.sweep[0].recall == high.recall
    table = retrieval.markdown(results)
    assert "| synthetic | 2,000 | exact, 1 query/call | 1.0000 |" in table
    assert "measured at 2,000 items, not 1M" in table


def test_startup_of_a_synthetic_bundle_reaches_serving(bundle_dir, tmp_path):
    out = startup.synthetic_bundle(bundle_dir, 2000, tmp_path / "b2000")
    loaded = load_bundle(out, device="cpu")  # checksums, shapes and counts all verify
    assert len(loaded.items) == 2000 and loaded.all_items_index.get_current_count() == 2000
    clusters = json.loads((out / fmt.CLUSTERS_FILE).read_text())["clusters"]
    assert sum(c["size"] for c in clusters) == 2000

    result = startup.measure("synthetic", out, 2000, repeats=1, log=lambda _: None)
    (start,) = result.starts
    assert 0 < start.seconds < 120
    assert 0 < start.rss <= start.peak_rss
    assert "| synthetic | 2,000 |" in startup.markdown([result])
