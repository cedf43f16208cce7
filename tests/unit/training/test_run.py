from __future__ import annotations

import json

import numpy as np


def test_run_folder_holds_the_validated_model(trained_run):
    run = json.loads((trained_run / "run.json").read_text())
    validation = run["validation_ndcg@10"]
    assert {"popularity", "pretrained encoder", "sequence model"} <= set(validation)
    # What shipped beat what it started from on the held-out next items.
    if run["shipped"] == "sequence model":
        assert validation["sequence model"] > validation["pretrained encoder"]
        assert (trained_run / "head.pt").is_file()
    else:
        assert run["shipped"] == "pretrained encoder"
        assert not (trained_run / "head.pt").exists()
    assert validation["popularity"] < max(validation.values())
    losses = run["training"]["head"]["loss"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert run["encoder"]["treatment"] == "finetune"
    assert run["encoder"]["finetuned"] == (run["training"]["encoder_updates_kept"] > 0)
    items = np.load(trained_run / "item_embeddings.npy")
    users = np.load(trained_run / "user_embeddings.npy")
    assert items.shape[0] == 360 and users.shape == (600, items.shape[1])
    clusters = json.loads((trained_run / "clusters.json").read_text())["clusters"]
    assert len(clusters) == 12 and sum(c["size"] for c in clusters) == 600
    assert (trained_run / "model" / "tokenizer.json").is_file()
    events = list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not trained_run.with_name(trained_run.name + ".partial").exists()


def test_new_items_are_served_as_validation_chose(trained_run, bundle_dir):
    from server.bundle import manifest as fmt
    from training import new_item_choice as choice

    run = json.loads((trained_run / "run.json").read_text())
    spec = fmt.read_manifest(bundle_dir).sequence_head
    if run["shipped"] != "sequence model":
        assert "new_items" not in run and spec is None  # text bundles add items by text
        return
    chosen = run["new_items"]
    assert chosen["weight"] in choice.WEIGHTS and chosen["neighbours"] in choice.NEIGHBOURS
    assert len(chosen["tried"]) == len(choice.NEIGHBOURS) * (len(choice.WEIGHTS) - 1) + 1
    assert "new-item setting" in run["timings_s"]
    # The bundle serves AddItems with the setting the run chose.
    assert spec is not None
    assert (spec.new_item_neighbours, spec.new_item_id_weight) == (
        chosen["neighbours"],
        chosen["weight"],
    )
