"""The sequence head as ONNX (fp32: it is small), with its own parity check against torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from training.sequence_head import SequenceHead, right_aligned

# ONNX vs torch on the same fp32 weights: anything below this is an export bug.
HEAD_PARITY_MIN_COSINE = 0.999


def export_head(head: SequenceHead, path: Path) -> None:
    """ONNX with inputs item_ids [batch, L] and item_text [batch, L, text_dim]; output user."""
    length = head.config.max_length
    ids = torch.zeros(2, length, dtype=torch.long)
    ids[:, -3:] = torch.tensor([1, 2, 3])
    text = head.item_text[ids]
    # The fused "fast path" of nn.TransformerEncoder has no ONNX export.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(
                head.eval(),
                (ids, text),
                str(path),
                input_names=["item_ids", "item_text"],
                output_names=["user"],
                dynamic_axes={
                    "item_ids": {0: "batch"},
                    "item_text": {0: "batch"},
                    "user": {0: "batch"},
                },
                opset_version=17,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def head_parity(head: SequenceHead, path: Path, histories: list[list[int]]) -> float:
    """Minimum cosine between ONNX and torch user vectors over the given histories."""
    ids = right_aligned(histories, head.config.max_length)
    text = head.item_text[torch.from_numpy(ids)].numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_users,) = session.run(["user"], {"item_ids": ids, "item_text": text})
    with torch.no_grad():
        torch_users = head.user_vectors(torch.from_numpy(ids), torch.from_numpy(text)).numpy()
    cos = (onnx_users * torch_users).sum(1) / (
        np.linalg.norm(onnx_users, axis=1) * np.linalg.norm(torch_users, axis=1) + 1e-12
    )
    return float(cos.min())
