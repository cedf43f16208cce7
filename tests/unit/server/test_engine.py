from __future__ import annotations

import time

import numpy as np
import pytest

from server.bundle.loader import load_bundle
from server.core.engine import Limits, RecommenderEngine, RecommendQuery, RetrievalMode
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


def _user(engine, query):
    """The user vector the engine searches with for `query` (its own encoder/head run)."""
    return engine.user_vectors([engine.prepare(query)])[0]


def test_items_are_ranked_by_score_equal_to_the_dot_product_and_never_seen(engine):
    bundle = engine.bundle
    history = [bundle.items[r].item_id for r in (3, 40, 41)]
    query = RecommendQuery(history_item_ids=history, k=20)
    result = engine.recommend(query)
    user = _user(engine, query)
    scores = [i.score for i in result.items]
    assert len(result.items) == 20 and scores == sorted(scores, reverse=True)
    for item in result.items:
        row = bundle.row_of_item[item.item_id]
        assert item.score == pytest.approx(float(bundle.item_embeddings[row] @ user), abs=1e-4)
        assert item.title == bundle.items[row].title
    assert not {i.item_id for i in result.items} & set(history)
    assert len({i.item_id for i in result.items}) == 20
    # The best unseen item by exact search is first.
    exact = [r for r in np.argsort(-(bundle.item_embeddings @ user)) if r not in (3, 40, 41)]
    assert result.items[0].item_id == bundle.items[exact[0]].item_id


def test_clusters_are_every_centroid_by_cosine_best_first(engine):
    bundle = engine.bundle
    everything = len(bundle.clusters)
    query = RecommendQuery(history_item_ids=["1", "2"], num_clusters=everything)
    result = engine.recommend(query)
    user = _user(engine, query)
    cosine = bundle.centroids @ (user / np.linalg.norm(user))
    assert [c.cluster_id for c in result.clusters] == list(np.argsort(-cosine))
    assert [c.score for c in result.clusters] == pytest.approx(np.sort(cosine)[::-1], abs=1e-5)
    assert result.clusters[0].description == bundle.clusters[int(np.argmax(cosine))].description
    one = engine.recommend(RecommendQuery(history_item_ids=["1", "2"], num_clusters=1))
    assert [c.cluster_id for c in one.clusters] == [int(np.argmax(cosine))]
    with pytest.raises(InvalidArgument, match=rf"num_clusters: {everything + 1} is out of range"):
        engine.recommend(RecommendQuery(history_item_ids=["1"], num_clusters=everything + 1))


def test_the_whole_catalogue_is_answered_with_or_without_the_seen_items(bundle_dir):
    engine = RecommenderEngine(load_bundle(bundle_dir, device="cpu"), Limits(max_k=10**6))
    everything = len(engine.bundle.items)
    assert engine.max_k == everything  # k is bounded by the catalogue, not only the limit
    history = [engine.bundle.items[r].item_id for r in (0, 7, 9)]
    unseen = engine.recommend(RecommendQuery(history_item_ids=history, k=everything))
    got = [i.item_id for i in unseen.items]
    assert len(got) == len(set(got)) == everything - 3 and not set(got) & set(history)
    seen = engine.recommend(
        RecommendQuery(history_item_ids=history, k=everything, include_seen_items=True)
    )
    assert {i.item_id for i in seen.items} == {i.item_id for i in engine.bundle.items}
    # Cluster mode: the user's cluster cannot hold them all, so the rest are topped up
    # from the whole catalogue, each unseen item once.
    topped = engine.recommend(
        RecommendQuery(history_item_ids=history, k=everything - 3, mode=RetrievalMode.CLUSTER)
    )
    got = [i.item_id for i in topped.items]
    assert len(got) == len(set(got)) == everything - 3 and not set(got) & set(history)
    with pytest.raises(InvalidArgument, match="k: "):
        engine.recommend(RecommendQuery(history_item_ids=history, k=everything + 1))


def test_k_limits_and_the_default(engine):
    assert engine.max_k == 50
    assert len(engine.recommend(RecommendQuery(history_item_ids=["1"], k=50)).items) == 50
    assert len(engine.recommend(RecommendQuery(history_item_ids=["1"], k=1)).items) == 1
    assert len(engine.recommend(RecommendQuery(history_item_ids=["1"], k=0)).items) == 10
    small = RecommenderEngine(engine.bundle, Limits(max_k=4))
    assert len(small.recommend(RecommendQuery(history_item_ids=["1"])).items) == 4


def test_cluster_mode_searches_the_users_cluster_then_tops_up_from_all_items(engine):
    bundle = engine.bundle
    query = RecommendQuery(history_item_ids=["1"], k=50, mode=RetrievalMode.CLUSTER)
    result = engine.recommend(query)
    cluster = bundle.clusters[result.clusters[0].cluster_id]
    members = set(cluster.item_rows.tolist()) - {bundle.row_of_item["1"]}
    rows = [bundle.row_of_item[i.item_id] for i in result.items]
    assert len(rows) == len(set(rows)) == 50 and bundle.row_of_item["1"] not in rows
    inside = min(len(members), 50)
    # The cluster's own items come first, all of them (up to k), then the rest of the catalogue.
    assert set(rows[:inside]) <= members and len(set(rows) & members) == inside
    scores = [i.score for i in result.items[:inside]]
    assert scores == sorted(scores, reverse=True)
    assert engine.prepare(query).mode is RetrievalMode.CLUSTER
    assert engine.prepare(RecommendQuery(history_item_ids=["1"])).mode is engine.default_mode


def test_history_is_resolved_in_order_with_unknown_ids_reported(engine):
    bundle = engine.bundle
    ids = [bundle.items[4].item_id, "ghost-1", bundle.items[2].item_id, "ghost-2"]
    prepared = engine.prepare(RecommendQuery(history_item_ids=ids))
    assert prepared.rows == [4, 2] and prepared.unknown_item_ids == ["ghost-1", "ghost-2"]
    assert prepared.exclude == frozenset({4, 2})
    seen = engine.prepare(RecommendQuery(history_item_ids=ids, include_seen_items=True))
    assert seen.exclude == frozenset()
    result = engine.recommend(RecommendQuery(history_item_ids=ids, k=3))
    assert result.unknown_item_ids == ["ghost-1", "ghost-2"]
    texts = engine.prepare(RecommendQuery(history_texts=["jazz", "  ", "space"]))
    assert texts.rows == [] and texts.texts == ["jazz", "space"]
    with pytest.raises(InvalidArgument, match=r"none of the 2 item IDs .*'a', 'b'"):
        engine.prepare(RecommendQuery(history_item_ids=["a", "b"]))


def test_limits_are_inclusive(bundle_dir):
    bundle = load_bundle(bundle_dir, device="cpu")
    limits = Limits(max_history_items=3, max_texts=2, max_text_chars=10, max_item_id_chars=5)
    engine = RecommenderEngine(bundle, limits)
    known = [bundle.items[r].item_id for r in range(3)]
    assert all(len(i) <= 5 for i in known)
    ok = RecommendQuery(history_item_ids=known, history_texts=["x" * 10, "y"])
    assert engine.prepare(ok).rows == [0, 1, 2]
    engine.prepare(RecommendQuery(history_item_ids=[known[0], "z" * 5]))
    for query, field in [
        (RecommendQuery(history_item_ids=[*known, known[0]]), "history_item_ids"),
        (RecommendQuery(history_texts=["a", "b", "c"]), "history_texts"),
        (RecommendQuery(history_texts=["x" * 11]), "history_texts[0]"),
        (RecommendQuery(history_item_ids=[known[0], "z" * 6]), "history_item_ids[1]"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            engine.prepare(query)
        assert info.value.field == field
    engine.embed(["x" * 10, "y"])
    with pytest.raises(InvalidArgument, match="texts: empty"):
        engine.embed([])
    with pytest.raises(InvalidArgument, match=r"texts\[0\]: 11 characters"):
        engine.embed(["x" * 11])


def test_list_clusters_keeps_all_top_items_by_default_and_counts_live_items(bundle_dir):
    engine = RecommenderEngine(load_bundle(bundle_dir, device="cpu"))
    bundle = engine.bundle
    listed = engine.list_clusters()
    assert [c.cluster_id for c in listed] == [c.cluster_id for c in bundle.clusters]
    for summary, cluster in zip(listed, bundle.clusters, strict=True):
        assert [i for i, _ in summary.top_items] == [
            bundle.items[r].item_id for r in cluster.top_items
        ]
        assert summary.size == cluster.size and summary.num_items == len(cluster.item_rows)
    before = engine.num_items
    assert before == len(bundle.items)
    victim = bundle.items[int(bundle.clusters[0].item_rows[0])].item_id
    engine.catalogue.remove([victim])
    assert engine.num_items == before - 1
    assert engine.list_clusters()[0].num_items == listed[0].num_items - 1


def test_free_texts_reach_the_head_each_with_its_own_query(engine):
    bundle = engine.bundle
    assert bundle.head is not None  # the tiny bundle is trained with a sequence head
    queries = [
        RecommendQuery(history_item_ids=["1"], history_texts=["jazz saxophone", "blue note"]),
        RecommendQuery(history_texts=["haunted crypt"]),
        RecommendQuery(history_item_ids=["2", "3"]),
    ]
    got = engine.user_vectors([engine.prepare(q) for q in queries])
    # All free texts of a batch are encoded in one run (the int8 encoder's activation
    # scales depend on the run, so the same run here), then each query gets its own.
    encoded = bundle.encoder.encode(["jazz saxophone", "blue note", "haunted crypt"])
    expected = bundle.head.user_vectors(
        [
            ([bundle.row_of_item["1"]], encoded[0:2]),
            ([], encoded[2:3]),
            ([bundle.row_of_item["2"], bundle.row_of_item["3"]], None),
        ]
    )
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Batched or alone, a query's vector is the same (up to the int8 run's scales).
    alone = engine.user_vectors([engine.prepare(queries[1])])[0]
    cosine = got[1] @ alone / (np.linalg.norm(got[1]) * np.linalg.norm(alone))
    assert cosine > 0.999


def test_stage_times_are_milliseconds_of_the_stage(engine, monkeypatch):
    search, users = engine._search, engine.user_vectors

    def slow_search(*args, **kwargs):
        time.sleep(0.05)
        return search(*args, **kwargs)

    def slow_users(*args, **kwargs):
        time.sleep(0.03)
        return users(*args, **kwargs)

    monkeypatch.setattr(engine, "_search", slow_search)
    monkeypatch.setattr(engine, "user_vectors", slow_users)
    started = time.perf_counter()
    result = engine.recommend(RecommendQuery(history_item_ids=["1"], k=3))
    wall_ms = (time.perf_counter() - started) * 1e3
    assert 50 <= result.timing.search_ms and 30 <= result.timing.encode_ms
    assert result.timing.search_ms + result.timing.encode_ms <= wall_ms


def test_item_unit_vectors_are_the_items_normalised(engine):
    vectors = engine.bundle.item_embeddings
    unit = engine.item_unit
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(unit * vectors, axis=1) / np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(cosine, 1.0, atol=1e-5)


@pytest.mark.parametrize("k", [-1, -50])
def test_negative_k_is_refused(engine, k):
    with pytest.raises(InvalidArgument, match=rf"k: {k} is out of range"):
        engine.prepare(RecommendQuery(history_item_ids=["1"], k=k))


def test_a_batch_searches_at_once_and_answers_as_one_query_at_a_time(engine):
    """Different k and exclusions in one batch: the same items, scores, order as alone."""
    ids = engine.bundle.items.ids
    queries = [
        RecommendQuery(history_item_ids=[ids[r] for r in rows], k=k)
        for rows, k in (([0, 1, 2], 10), ([5], 3), ([7, 8, 9, 10, 11, 12], 50), ([3, 4], 1))
    ]
    queries.append(RecommendQuery(history_item_ids=[ids[6]], k=5, mode=RetrievalMode.CLUSTER))
    alone = [engine.recommend(q) for q in queries]
    together = engine.recommend_batch([engine.prepare(q) for q in queries])
    for one, batched in zip(alone, together, strict=True):
        assert [i.item_id for i in batched.items] == [i.item_id for i in one.items]
        np.testing.assert_allclose(
            [i.score for i in batched.items], [i.score for i in one.items], rtol=1e-6
        )
    assert [len(r.items) for r in together] == [10, 3, 50, 1, 5]
