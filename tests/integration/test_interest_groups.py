"""Planted interests recovered through a live server on demo data without categories.

`demo-titles`: the demo catalogue with titles and years only (no category, no
description), users with one to three interests of different weights. Trained with the
quick tiny model, exported, served over gRPC; each user's history (all but the last
item) is sent asking for three interests.
"""

from __future__ import annotations

from collections import Counter

import grpc
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server

USERS = 1000
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def titles_only_bundle(tmp_path_factory):
    from export.bundle_writer import export_run
    from training.run import TrainConfig, train
    from training.sequence_head import HeadConfig

    out = tmp_path_factory.mktemp("titles")
    run = train(
        TrainConfig(
            data=f"demo-titles:{USERS}",
            out=out / "run",
            quick=True,
            head=HeadConfig(epochs=16),  # epochs, not minutes, bound it: load changes nothing
            minutes=30,
            validation_users=200,
            progress=False,
        )
    )
    export_run(run, out / "bundle")
    return out / "bundle"


def test_served_interests_recover_the_planted_ones(titles_only_bundle):
    from training.demo_data import generate_demo

    demo = generate_demo(num_users=USERS)
    category = dict(
        zip(demo.items["item_id"], (c[0] for c in demo.items["categories"]), strict=True)
    )
    strongest, first_interest, first_cluster, inside = [], [], [], []
    with (
        background_server(titles_only_bundle) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.RecommenderServiceStub(channel)
        clusters = stub.ListClusters(pb.ListClustersRequest(), timeout=30).clusters
        assert len({c.description for c in clusters}) == len(clusters)
        histories = demo.sequences()
        requests = [
            pb.RecommendRequest(request_id=u, history_item_ids=h[:-1], k=10, num_interests=3)
            for u, h in histories.items()
        ]
        for response in stub.RecommendStream(iter(requests), timeout=300):
            counts = Counter(category[i] for i in histories[response.request_id])
            strongest.append(counts.most_common(1)[0][0])
            first_interest.append(response.interests[0].cluster_id)
            first_cluster.append(response.clusters[0].cluster_id)
            if len(counts) == 1:
                inside.append(np.mean([category[i.item_id] in counts for i in response.items]))
    nmi = normalized_mutual_info_score(strongest, first_interest)
    # Issue 14's goals: NMI ≥ 0.8 between the user's first served interest group and their
    # strongest planted interest (0.897 measured); ≥ 0.9 of the top 10 inside the planted
    # interest for single-interest users (0.986 measured).
    assert nmi >= 0.8, f"NMI {nmi:.3f} (the single vector's first cluster: " + (
        f"{normalized_mutual_info_score(strongest, first_cluster):.3f})"
    )
    assert len(inside) > 300 and float(np.mean(inside)) >= 0.9
