"""The item tower: cached lower layers + trainable top layers = the encoder, and it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture()
def encoder_and_texts(tiny_model_dir):
    from training.demo_data import generate_demo
    from training.text import render_items
    from training.torch_encoder import load_encoder

    encoder, tokenizer = load_encoder(tiny_model_dir)
    texts = render_items(generate_demo(num_users=10).items)[:80]
    return encoder, tokenizer, texts


def test_tower_table_equals_the_whole_encoder(encoder_and_texts):
    from training.item_tower import ItemTextTower
    from training.torch_encoder import embed_texts

    encoder, tokenizer, texts = encoder_and_texts
    tower = ItemTextTower(encoder, tokenizer, texts, trainable_layers=1, max_length=48)
    whole = embed_texts(encoder, tokenizer, texts, 48, progress=False)
    np.testing.assert_allclose(tower.table().numpy(), whole, atol=1e-5)


def test_encoder_tuning_moves_the_table_toward_the_gradient_and_saves_with_the_encoder(
    encoder_and_texts,
):
    from training.item_tower import EncoderTuning, ItemTextTower
    from training.torch_encoder import embed_texts

    encoder, tokenizer, texts = encoder_and_texts
    tower = ItemTextTower(encoder, tokenizer, texts, trainable_layers=1, max_length=48)
    before = tower.table()
    target = torch.nn.functional.normalize(torch.randn_like(before), dim=-1)
    tuning = EncoderTuning(tower, learning_rate=1e-2, refresh_every=2)
    table = before
    for step in range(20):
        # d(-cos(table, target))/d(table) ≈ -target: minimising pulls the table toward it.
        refreshed = tuning.accumulate(-target)
        assert (refreshed is None) == (step % 2 == 0)
        if refreshed is not None:
            table = refreshed
    assert tuning.updates == 10
    assert (table * target).sum(-1).mean() > (before * target).sum(-1).mean() + 0.05
    # The layers are the encoder's own: the whole encoder now gives the tuned table.
    whole = embed_texts(encoder, tokenizer, texts, 48, progress=False)
    np.testing.assert_allclose(table.numpy(), whole, atol=1e-4)
    saved = tuning.state()
    tuning.accumulate(-target)
    tuning.accumulate(-target)
    tuning.restore(saved)
    np.testing.assert_allclose(tower.table().numpy(), table.numpy(), atol=1e-6)


def test_tower_refuses_a_bad_layer_count(encoder_and_texts):
    from training.item_tower import ItemTextTower
    from training.torch_encoder import ModelError

    encoder, tokenizer, texts = encoder_and_texts
    with pytest.raises(ModelError, match="--encoder-layers 9"):
        ItemTextTower(encoder, tokenizer, texts, trainable_layers=9, max_length=48)


def test_train_config_errors_name_the_option(tmp_path):
    from training.run import EncoderConfig, TrainConfig, TrainConfigError

    with pytest.raises(TrainConfigError, match="--minutes"):
        TrainConfig(data="demo", out=tmp_path, minutes=0).check()
    with pytest.raises(TrainConfigError, match="--encoder 'lora'"):
        TrainConfig(data="demo", out=tmp_path, encoder=EncoderConfig(treatment="lora")).check()
    with pytest.raises(TrainConfigError, match="--backend ray"):
        TrainConfig(data="demo", out=tmp_path, backend="ray").check()
