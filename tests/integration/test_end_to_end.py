"""train → export → serve on the tiny model, called over loopback with a real gRPC client."""

from __future__ import annotations

from collections import Counter

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def stub(live_server):  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(live_server.target) as channel:
        yield pb_grpc.RecommenderServiceStub(channel)


@pytest.fixture(scope="module")
def category_of(demo_dataset):  # type: ignore[no-untyped-def]
    return dict(
        zip(
            demo_dataset.items["item_id"],
            (c[0] for c in demo_dataset.items["categories"]),
            strict=True,
        )
    )


def single_interest_users(demo_dataset, category_of, count=5):  # type: ignore[no-untyped-def]
    users = []
    for user, items in demo_dataset.sequences().items():
        cats = {category_of[i] for i in items}
        if len(cats) == 1 and len(items) >= 10:
            users.append((user, items, cats.pop()))
        if len(users) == count:
            break
    return users


def test_single_interest_user_gets_that_categorys_cluster_and_items(
    stub, demo_dataset, category_of
):
    users = single_interest_users(demo_dataset, category_of)
    assert len(users) == 5
    for _user, items, category in users:
        response = stub.Recommend(pb.RecommendRequest(history_item_ids=items, k=10), timeout=30)
        assert response.clusters[0].description.split(": ")[0].split(", ")[0] == category
        item_cats = Counter(category_of[i.item_id] for i in response.items)
        assert item_cats[category] >= 8, item_cats
        assert not set(items) & {i.item_id for i in response.items}, "seen items must be excluded"
        scores = [i.score for i in response.items]
        assert scores == sorted(scores, reverse=True)
        assert all(i.title for i in response.items)
        assert response.bundle_version


def test_include_seen_and_cluster_mode(stub, demo_dataset, category_of):
    _user, items, category = single_interest_users(demo_dataset, category_of, 1)[0]
    seen = stub.Recommend(
        pb.RecommendRequest(history_item_ids=items, k=30, include_seen_items=True), timeout=30
    )
    assert set(items) & {i.item_id for i in seen.items}
    clustered = stub.Recommend(
        pb.RecommendRequest(history_item_ids=items, k=5, mode=pb.RETRIEVAL_MODE_CLUSTER), timeout=30
    )
    assert len(clustered.items) == 5
    assert Counter(category_of[i.item_id] for i in clustered.items)[category] >= 4


def test_free_text_history_and_embed(stub, category_of):
    response = stub.Recommend(
        pb.RecommendRequest(history_texts=["The Blue Saxophone. Jazz. Jazz records."], k=5),
        timeout=30,
    )
    assert len(response.items) == 5
    embedded = stub.Embed(pb.EmbedRequest(texts=["jazz", "space travel"]), timeout=30)
    assert embedded.dimension == 32
    assert len(embedded.embeddings) == 2
    norm = sum(v * v for v in embedded.embeddings[0].values) ** 0.5
    assert norm == pytest.approx(1.0, abs=1e-2)


def test_stream_answers_each_request_by_id_and_survives_a_bad_one(stub, demo_dataset, category_of):
    users = single_interest_users(demo_dataset, category_of, 4)
    requests = [
        pb.RecommendRequest(request_id=f"u{u}", history_item_ids=items, k=3)
        for u, items, _ in users
    ]
    requests.insert(2, pb.RecommendRequest(request_id="bad", history_item_ids=[], k=3))
    responses = {r.request_id: r for r in stub.RecommendStream(iter(requests), timeout=30)}
    assert set(responses) == {r.request_id for r in requests}
    assert responses["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "history_item_ids" in responses["bad"].error.message
    for u, _, category in users:
        assert len(responses[f"u{u}"].items) == 3
        assert responses[f"u{u}"].clusters[0].description.startswith(category)


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"history_item_ids": []}, "history_item_ids"),
        ({"history_item_ids": ["no-such-item", "nor-this"]}, "history_item_ids"),
        ({"history_item_ids": ["1"], "k": -1}, "k"),
        ({"history_item_ids": ["1"], "k": 100_000}, "k"),
        ({"history_texts": ["x" * 5000]}, "history_texts[0]"),
        ({"history_item_ids": ["1"], "num_clusters": 99}, "num_clusters"),
    ],
)
def test_bad_input_is_invalid_argument_naming_the_field(stub, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as info:
        stub.Recommend(pb.RecommendRequest(**request_kwargs), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)
    # The server keeps serving.
    assert stub.Recommend(pb.RecommendRequest(history_item_ids=["1"], k=2), timeout=30).items


def test_embed_bad_input(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Embed(pb.EmbedRequest(texts=[]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "texts" in info.value.details()


def test_unknown_ids_are_reported_when_some_are_known(stub):
    response = stub.Recommend(pb.RecommendRequest(history_item_ids=["1", "ghost"], k=3), timeout=30)
    assert list(response.unknown_item_ids) == ["ghost"]
    assert len(response.items) == 3


def test_model_info(stub):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert info.num_items == 360
    assert len(info.clusters) == 12
    assert info.providers == ["CPUExecutionProvider"]
    assert "int8" in info.quantization
    assert sum(c.size for c in info.clusters) == 600


def test_list_clusters_reads_apart_and_names_its_top_items(stub, category_of):
    listed = stub.ListClusters(pb.ListClustersRequest(top_items=3), timeout=30)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert listed.bundle_version == info.bundle_version and len(listed.clusters) == 12
    descriptions = [c.description for c in listed.clusters]
    assert len(set(descriptions)) == 12, descriptions
    assert [c.size for c in listed.clusters] == [c.size for c in info.clusters]
    for cluster in listed.clusters:
        assert len(cluster.top_items) == 3
        # Demo data: a cluster's description starts with a category, and its top items
        # are mostly of a category the description names.
        named = [
            category_of[item.item_id]
            for item in cluster.top_items
            if category_of[item.item_id] in cluster.description
        ]
        assert len(named) >= 2, (cluster.description, [i.title for i in cluster.top_items])
        assert all(item.title for item in cluster.top_items)
    every = stub.ListClusters(pb.ListClustersRequest(), timeout=30)
    assert all(len(c.top_items) == 10 for c in every.clusters)
    with pytest.raises(grpc.RpcError) as error:
        stub.ListClusters(pb.ListClustersRequest(top_items=-1), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_items" in error.value.details()


def test_two_interests_over_unary_and_stream(stub, demo_dataset, category_of):
    by_category: dict[str, list[str]] = {}
    for item_id, category in category_of.items():
        by_category.setdefault(category, []).append(item_id)
    history = by_category["Jazz"][:8] + by_category["Horror"][:10] + by_category["Jazz"][8:15]
    request = pb.RecommendRequest(history_item_ids=history, k=10, num_interests=2)
    unary = stub.Recommend(request, timeout=30)
    (streamed,) = list(stub.RecommendStream(iter([request]), timeout=30))
    for response in (unary, streamed):
        assert [category_of[i.because_item_ids[0]] for i in response.interests] == [
            "Jazz",
            "Horror",
        ]
        assert {category_of[i.item_id] for i in response.items} >= {"Jazz", "Horror"}
        assert len(response.items) == 10
        assert {i.item_id for n in response.interests for i in n.items} <= {
            i.item_id for i in response.items
        }
    with pytest.raises(grpc.RpcError) as error:
        stub.Recommend(pb.RecommendRequest(history_item_ids=history, num_interests=9), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("num_interests:")


def test_health_and_reflection(live_server):
    with grpc.insecure_channel(live_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recsys.v1.RecommenderService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (answer,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30
        )
        names = {s.name for s in answer.list_services_response.service}
        assert "recsys.v1.RecommenderService" in names
        assert "grpc.health.v1.Health" in names


def test_async_client_unary_and_ordered_stream(live_server):
    import asyncio

    from irec.client import AsyncRecommenderClient, make_request

    async def scenario():
        async with AsyncRecommenderClient(live_server.target, timeout_s=30) as client:
            one = await client.recommend(make_request(["1", "2"], k=3))
            requests = [make_request([str(i + 1)], k=2, request_id=f"r{i}") for i in range(40)]
            ids = [r.request_id async for r in client.recommend_stream(requests, ordered=True)]
            info = await client.info()
            return one, ids, info

    one, ids, info = asyncio.run(scenario())
    assert len(one.items) == 3
    assert ids == [f"r{i}" for i in range(40)]
    assert info.num_items == 360
