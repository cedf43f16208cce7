from __future__ import annotations

import time

import numpy as np
import pytest

from server.bundle import load_bundle
from server.engine import Limits, RecommenderEngine, RecommendQuery, RetrievalMode
from server.errors import InvalidArgument


@pytest.fixture(scope="module")
def engine(bundle_dir):
    return RecommenderEngine(load_bundle(bundle_dir, device="cpu"), Limits(max_k=50, max_texts=4))


def test_recommend_matches_exact_search_over_unseen_items(engine):
    bundle = engine.bundle
    history = [bundle.items[i].item_id for i in (0, 1, 2)]
    result = engine.recommend(RecommendQuery(history_item_ids=history, k=10))
    # The user vector the bundle makes: its sequence head's, or the encoder's of the history.
    if bundle.head is not None:
        user = bundle.head.user_vector([0, 1, 2])
    else:
        user = bundle.encoder.encode([engine._render([0, 1, 2], [])])[0]
    exact = np.argsort(-(bundle.item_embeddings @ user))
    expected = [bundle.items[r].item_id for r in exact if r not in (0, 1, 2)][:10]
    got = [i.item_id for i in result.items]
    assert len(set(got) & set(expected)) >= 9
    assert result.clusters[0].score >= result.clusters[-1].score
    assert len(result.clusters) == 3


def test_cluster_mode_prefers_the_cluster_index(engine):
    bundle = engine.bundle
    result = engine.recommend(
        RecommendQuery(history_item_ids=[bundle.items[5].item_id], k=5, mode=RetrievalMode.CLUSTER)
    )
    cluster = bundle.clusters[result.clusters[0].cluster_id]
    rows = {bundle.row_of_item[i.item_id] for i in result.items}
    if len(cluster.item_rows) > 5:
        assert rows <= set(cluster.item_rows.tolist())


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RecommendQuery(), "history_item_ids"),
        (RecommendQuery(history_item_ids=["nope"]), "history_item_ids"),
        (RecommendQuery(history_texts=["   "]), "history_texts"),
        (RecommendQuery(history_item_ids=["1"], k=51), "k"),
        (RecommendQuery(history_item_ids=["1"], k=-3), "k"),
        (RecommendQuery(history_item_ids=["1"], num_clusters=-1), "num_clusters"),
        (RecommendQuery(history_texts=["a"] * 5), "history_texts"),
        (RecommendQuery(history_texts=["ok", "y" * 5000]), "history_texts[1]"),
        (RecommendQuery(history_item_ids=["z" * 300]), "history_item_ids[0]"),
    ],
)
def test_invalid_queries_name_the_field(engine, query, field):
    with pytest.raises(InvalidArgument) as info:
        engine.recommend(query)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_embed(engine):
    vectors = engine.embed(["jazz", "space"])
    assert vectors.shape == (2, 32)
    with pytest.raises(InvalidArgument, match=r"texts\[1\]: empty text"):
        engine.embed(["fine", ""])


def test_defaults(engine):
    started = time.perf_counter()
    result = engine.recommend(RecommendQuery(history_item_ids=["1"]))
    wall_ms = (time.perf_counter() - started) * 1e3
    assert len(result.items) == 10
    assert result.bundle_version == engine.bundle.version
    # The stage times are real measurements of this call: positive, and together no
    # longer than the call took by the test's own clock.
    assert result.timing.encode_ms > 0 and result.timing.search_ms > 0
    assert result.timing.encode_ms + result.timing.search_ms <= wall_ms


def test_list_clusters_names_top_items_and_leaves_removed_ones_out(bundle_dir):
    engine = RecommenderEngine(load_bundle(bundle_dir, device="cpu"))
    listed = engine.list_clusters(top_items=3)
    assert len(listed) == len(engine.bundle.clusters)
    assert all(len(c.top_items) == 3 for c in listed)
    first_id, first_title = listed[0].top_items[0]
    assert engine.bundle.items[engine.bundle.row_of_item[first_id]].title == first_title
    engine.catalogue.remove([first_id])
    again = engine.list_clusters(top_items=3)
    assert first_id not in {i for i, _ in again[0].top_items} and len(again[0].top_items) == 3
    with pytest.raises(InvalidArgument, match="top_items"):
        engine.list_clusters(top_items=-1)
