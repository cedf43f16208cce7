"""The real all-MiniLM-L6-v2: load (sha256-checked), brief fine-tune, export, parity, serve."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_minilm_train_export_parity_and_serve(tmp_path):
    from export.bundle_writer import export_run
    from server.bundle.loader import load_bundle
    from server.core.engine import RecommenderEngine, RecommendQuery
    from training.run import EncoderConfig, TrainConfig, train
    from training.sequence_head import HeadConfig
    from training.torch_encoder import default_model_dir

    assert (default_model_dir() / "model.safetensors").is_file()
    run = train(
        TrainConfig(
            data="demo:200",
            out=tmp_path / "run",
            clusters=6,
            validation_users=50,
            # The real encoder's top layer trains with the head for a few updates.
            encoder=EncoderConfig(treatment="finetune", trainable_layers=1, refresh_every=4),
            head=HeadConfig(dim=32, max_length=50, batch_size=32, epochs=3, eval_every=1),
            minutes=10,
            progress=False,
        )
    )
    manifest = export_run(run, tmp_path / "bundle")
    # The text side is MiniLM's 384-d space; item vectors are the head's when it won on
    # validation (which one wins is not fixed: 3 epochs on 150 users).
    head = manifest.sequence_head
    assert (head.text_dimension if head is not None else manifest.dimension) == 384
    int8 = manifest.parity["int8"]
    # REFERENCE.md §1: per-channel int8 on MiniLM reaches mean ≈ 0.99, min ≈ 0.95.
    assert int8.cosine_mean >= 0.98 and int8.cosine_min >= 0.90
    assert manifest.parity["fp16"].cosine_mean >= 0.999

    bundle = load_bundle(tmp_path / "bundle", device="cpu")
    texts = [item.text for item in bundle.items[:32]]
    served = bundle.encoder.encode(texts)
    # The served int8 encoder reads item texts as the (possibly fine-tuned) torch one did.
    reference = (
        bundle.head.item_text[:32] if bundle.head is not None else bundle.item_embeddings[:32]
    )
    cosines = (served * reference).sum(axis=1)
    assert np.median(cosines) > 0.98
    result = RecommenderEngine(bundle).recommend(
        RecommendQuery(history_item_ids=[bundle.items[0].item_id], k=5)
    )
    assert len(result.items) == 5
