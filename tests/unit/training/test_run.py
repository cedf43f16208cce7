from __future__ import annotations

import json

import numpy as np


def test_run_folder_is_complete_and_fine_tuning_helped(trained_run):
    run = json.loads((trained_run / "run.json").read_text())
    losses = run["loss"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) * 0.8
    metrics = run["metrics"]
    assert metrics["fine-tuned encoder"]["ndcg@10"] > metrics["pretrained encoder"]["ndcg@10"]
    assert metrics["fine-tuned encoder"]["ndcg@10"] > metrics["popularity"]["ndcg@10"]
    items = np.load(trained_run / "item_embeddings.npy")
    users = np.load(trained_run / "user_embeddings.npy")
    assert items.shape == (360, 32) and users.shape == (600, 32)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-4)
    clusters = json.loads((trained_run / "clusters.json").read_text())["clusters"]
    assert len(clusters) == 12 and sum(c["size"] for c in clusters) == 600
    assert (trained_run / "model" / "tokenizer.json").is_file()
    assert not trained_run.with_name(trained_run.name + ".partial").exists()
