"""AddItems / RemoveItems on a live server: searchable at once, removed for good, kept."""

from __future__ import annotations

import threading

import grpc
import pytest

from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.conftest import background_server

JAZZ = "The Midnight Saxophone (2026). Jazz. Jazz records, improvisation and live sessions."


def test_add_remove_and_restart(bundle_dir, tmp_path):
    log = tmp_path / "catalogue.jsonl"
    with (
        background_server(bundle_dir, catalogue_log=log) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        stub, admin = pb_grpc.RecommenderServiceStub(ch), pb_grpc.RecommenderAdminStub(ch)
        errors, stop = [], threading.Event()

        def search() -> None:
            while not stop.is_set():
                try:
                    stub.Recommend(
                        pb.RecommendRequest(history_item_ids=["1", "2"], k=20), timeout=30
                    )
                except grpc.RpcError as exc:
                    errors.append(exc.code())

        searchers = [threading.Thread(target=search) for _ in range(3)]
        for t in searchers:
            t.start()
        for i in range(30):  # updates interleaved with searches (hnswlib needs the lock)
            admin.AddItems(
                pb.AddItemsRequest(
                    items=[pb.NewItem(item_id=f"bulk{i}", title=f"Bulk {i}", text=f"bulk item {i}")]
                ),
                timeout=30,
            )
        added = admin.AddItems(
            pb.AddItemsRequest(
                items=[pb.NewItem(item_id="x1", title="The Midnight Saxophone", text=JAZZ)]
            ),
            timeout=30,
        )
        stop.set()
        for t in searchers:
            t.join()
        assert errors == []
        assert added.added == 1 and added.num_items == 360 + 31
        # Found by its text among the 30 trained Jazz items (one has the same title and
        # ranks above it; x1 ranked 6th-9th on one bundle, by the borrowed ID weight).
        found = stub.Recommend(pb.RecommendRequest(history_texts=[JAZZ], k=10), timeout=30)
        assert "x1" in [i.item_id for i in found.items]
        with_history = stub.Recommend(pb.RecommendRequest(history_item_ids=["x1"], k=3), timeout=30)
        assert not with_history.unknown_item_ids
        removed = admin.RemoveItems(pb.RemoveItemsRequest(item_ids=["x1", "1"]), timeout=30)
        assert removed.removed == 2
        everything = stub.Recommend(pb.RecommendRequest(history_item_ids=["2"], k=300), timeout=30)
        assert not {"x1", "1"} & {i.item_id for i in everything.items}
        with pytest.raises(grpc.RpcError) as info:
            admin.AddItems(
                pb.AddItemsRequest(items=[pb.NewItem(item_id="x1", text="again")]), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            admin.RemoveItems(pb.RemoveItemsRequest(item_ids=["ghost"]), timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # A restart replays the log.
    with (
        background_server(bundle_dir, catalogue_log=log) as server,
        grpc.insecure_channel(server.target) as ch,
    ):
        stub = pb_grpc.RecommenderServiceStub(ch)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).num_items == 360 + 31 - 2
        again = stub.Recommend(pb.RecommendRequest(history_item_ids=["x1", "2"], k=300), timeout=30)
        assert not again.unknown_item_ids
        assert not {"x1", "1"} & {i.item_id for i in again.items}
