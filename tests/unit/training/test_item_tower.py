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
    with pytest.raises(TrainConfigError, match="--encoder-epochs 0"):
        TrainConfig(data="demo", out=tmp_path, encoder=EncoderConfig(epochs=0)).check()


def _head_and_sequences(texts: list[str], encoder, tokenizer, **head_options):
    from training.sequence_head import HeadConfig, SequenceHead
    from training.torch_encoder import embed_texts

    table = torch.from_numpy(embed_texts(encoder, tokenizer, texts, 48, progress=False))
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, len(texts), size=12)) for _ in range(64)]
    config = HeadConfig(dim=16, max_length=12, batch_size=16, dropout=0.0, **head_options)
    return SequenceHead(table, config), sequences


def test_the_encoder_trains_only_in_its_joint_epochs_then_the_head_alone(encoder_and_texts):
    """warmup 1 + 2 joint epochs of 4 steps, refresh every 2 steps: 4 updates, not 8."""
    from training.item_tower import EncoderTuning, ItemTextTower
    from training.sequence_head import train_head

    encoder, tokenizer, texts = encoder_and_texts
    head, sequences = _head_and_sequences(texts, encoder, tokenizer, epochs=5, eval_every=1)
    tower = ItemTextTower(encoder, tokenizer, texts, trainable_layers=1, max_length=48)
    tuning = EncoderTuning(tower, learning_rate=1e-3, refresh_every=2)
    seen: list[int] = []

    def validate(_head) -> float:
        seen.append(tuning.updates)
        return float(len(seen))  # every evaluation improves: all five run

    train_head(
        head,
        sequences,
        validate=validate,
        progress=False,
        encoder_tuning=tuning,
        warmup_epochs=1,
        encoder_epochs=2,
    )
    assert seen == [0, 2, 4, 4, 4]


def test_stale_evaluations_and_the_time_budget_lower_the_learning_rate(encoder_and_texts):
    from training.sequence_head import train_head

    encoder, tokenizer, texts = encoder_and_texts
    head, sequences = _head_and_sequences(
        texts, encoder, tokenizer, epochs=4, eval_every=1, patience=9, lr_decay=0.5
    )
    rates: list[float] = []

    def log(name: str, value: float, step: int) -> None:
        if name == "train/learning_rate":
            rates.append(value)

    history = train_head(head, sequences, validate=lambda _h: 0.5, progress=False, log=log)
    # The first evaluation is the best; each later one halves the rate (4 steps an epoch).
    assert history["lr_decayed_at"] == [2.0, 3.0, 4.0]
    assert rates[0] == rates[7] == head.config.learning_rate
    assert rates[8] == rates[0] / 2 and rates[-1] == rates[0] / 4
    rates.clear()
    head, sequences = _head_and_sequences(
        texts, encoder, tokenizer, epochs=3, lr_decay=1.0, lr_floor=0.1
    )
    train_head(head, sequences, progress=False, log=log, time_budget_s=3600)
    assert rates == sorted(rates, reverse=True) and rates[0] < head.config.learning_rate
    assert rates[-1] > 0.1 * head.config.learning_rate


def test_attention_dropout_is_its_own_knob():
    """Dropout elsewhere off: training-mode passes differ only when attention dropout is on."""
    from training.sequence_head import HeadConfig, SequenceHead

    ids = torch.tensor([[0, 1, 2, 3, 4], [2, 3, 4, 5, 6]])
    for attention, differs in ((0.0, False), (0.5, True)):
        torch.manual_seed(0)
        config = HeadConfig(dim=16, heads=2, max_length=5, dropout=0.0, attention_dropout=attention)
        head = SequenceHead(torch.randn(8, 12), config).train()
        first, second = (head.user_vectors(ids, head.item_text[ids]) for _ in range(2))
        assert (not torch.allclose(first, second)) is differs


def test_the_text_only_loss_runs_on_a_random_share_of_positions():
    from training.sequence_head import _text_loss_rows

    rows = _text_loss_rows(100, 0.25, torch.device("cpu"))
    assert len(rows) == 25 and len(set(rows.tolist())) == 25 and 0 <= int(rows.min())
    assert int(rows.max()) < 100
    assert _text_loss_rows(3, 0.1, torch.device("cpu")).numel() == 1
    assert _text_loss_rows(7, 1.0, torch.device("cpu")).tolist() == list(range(7))
