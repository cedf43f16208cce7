"""The sequence head: the bounded ID delta, new items by text alone, ID-only, the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from training.sequence_head import (
    HeadConfig,
    SequenceHead,
    next_item_loss,
    score_users,
    train_head,
)

ITEMS, TEXT_DIM = 40, 16
SMALL = HeadConfig(
    dim=16,
    blocks=1,
    max_length=12,
    batch_size=16,
    dropout=0.0,
    epochs=6,
    eval_every=1,
    id_dropout=0.0,
    text_only_histories=0.0,
)


def _text(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(ITEMS, TEXT_DIM, generator=generator), dim=-1)


def _cycles(users: int = 120, length: int = 10, seed: int = 0) -> list[list[int]]:
    """Histories that walk the catalogue in steps of one: the next item is predictable."""
    rng = np.random.default_rng(seed)
    return [
        [(start + k) % ITEMS for k in range(length)] for start in rng.integers(0, ITEMS, size=users)
    ]


def _next_item_hit_rate(head: SequenceHead, histories: list[list[int]]) -> float:
    users, items = score_users(head, histories)
    top = np.argmax(users @ items.T, axis=1)
    return float(np.mean([t == (h[-1] + 1) % ITEMS for t, h in zip(top, histories, strict=True)]))


def test_the_id_delta_never_exceeds_its_cap_after_training() -> None:
    config = replace(SMALL, delta_cap=0.3, learning_rate=3e-2)
    head = SequenceHead(_text(), config)
    train_head(head, _cycles(), progress=False)
    with torch.no_grad():
        text_part = head.text_item_vectors(head.item_text[1:])
        delta = head.all_item_vectors() - text_part
    assert (
        float(head.id_residual.weight.detach().norm(dim=-1).max()) > 0.3
    )  # raw deltas grew past it
    ratio = delta.norm(dim=-1) / text_part.norm(dim=-1)
    assert float(ratio.max()) <= 0.3 + 1e-5
    assert float(ratio.max()) > 0.2  # and training pushed them up to it


def test_a_new_item_is_its_text_with_delta_zero() -> None:
    head = SequenceHead(_text(), replace(SMALL, learning_rate=3e-2))
    train_head(head, _cycles(), progress=False)
    fresh_text = torch.nn.functional.normalize(torch.randn(3, TEXT_DIM), dim=-1)
    no_id = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        vectors = head.item_vectors_from(no_id, fresh_text)
        np.testing.assert_allclose(
            vectors.numpy(), (fresh_text @ head.text_projection.weight.T).numpy(), atol=1e-6
        )
        # A trained item read by its text alone (no ID) is its text projection too.
        trained = head.item_vectors_from(torch.tensor([5]), head.item_text[5:6])
        by_text = head.item_vectors_from(torch.tensor([0]), head.item_text[5:6])
        projected = head.text_item_vectors(head.item_text[5:6])
    assert not torch.allclose(trained, by_text)
    np.testing.assert_allclose(by_text.numpy(), projected.numpy())


def test_the_id_only_switch_trains_without_text() -> None:
    config = replace(SMALL, use_text=False, learning_rate=3e-2, epochs=10)
    head = SequenceHead(_text(), config)
    train_head(head, _cycles(), progress=False)
    histories = _cycles(users=60, seed=1)
    assert _next_item_hit_rate(head, histories) > 0.5  # random: 1 in 40
    # Text plays no part: other text embeddings give the same item and user vectors.
    other = SequenceHead(_text(seed=9), config)
    other.load_state_dict(
        {k: v for k, v in head.state_dict().items() if k != "item_text"}, strict=False
    )
    users, items = score_users(head, histories)
    other_users, other_items = score_users(other, histories)
    np.testing.assert_allclose(items, other_items, atol=1e-6)
    np.testing.assert_allclose(users, other_users, atol=1e-5)
    assert head.text_projection.weight.grad is None  # never reached by the loss


@pytest.mark.parametrize("negatives", [0, 16])
def test_the_text_and_id_head_learns_the_next_item(negatives: int) -> None:
    config = replace(SMALL, learning_rate=3e-2, negatives=negatives, epochs=10)
    head = SequenceHead(_text(), config)
    history = train_head(head, _cycles(), progress=False, validate=lambda h: 0.0)
    assert _next_item_hit_rate(head, _cycles(users=60, seed=1)) > 0.3  # random: 1 in 40
    assert len(history["seconds"]) == len(history["loss"]) // 8 >= 1  # one per epoch


def test_shared_negatives_that_cover_the_catalogue_give_the_full_softmax() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=generator)
    vectors = torch.randn(11, 5, generator=generator)
    wanted = torch.tensor([0, 3, 3, 10, 5, 1, 2])
    every_row = torch.arange(11)
    reference = torch.nn.functional.cross_entropy(hidden @ vectors.T, wanted)
    sampled = next_item_loss(hidden, wanted, vectors, every_row)
    assert float(sampled) == pytest.approx(float(reference), rel=1e-5)
    # Fewer negatives: a smaller denominator, a smaller loss.
    assert float(next_item_loss(hidden, wanted, vectors, every_row[:4])) < float(reference)


def test_excluded_items_are_never_ranked_in_training() -> None:
    hidden = torch.randn(4, 5)
    vectors = torch.randn(6, 5)
    mask = torch.zeros(6)
    mask[[4, 5]] = float("-inf")
    wanted = torch.tensor([0, 1, 2, 3])
    masked = next_item_loss(hidden, wanted, vectors, None, mask)
    reference = torch.nn.functional.cross_entropy(hidden @ vectors[:4].T, wanted)
    assert float(masked) == pytest.approx(float(reference), rel=1e-5)
