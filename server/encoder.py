"""Text → embedding with `tokenizers` and ONNX Runtime (CUDA when it really runs, else CPU)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's default: warnings and above


@dataclass(frozen=True)
class EncoderChoice:
    """Which exported encoder to run, and where."""

    path: Path
    providers: tuple[str, ...]


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """Load tokenizer.json with truncation to the encoder's budget and batch padding."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def create_session(
    encoders: dict[str, Path], device: str = "auto", intra_op_threads: int = 0
) -> ort.InferenceSession:
    """Create the encoder session: fp16 on CUDA when CUDA really runs, else int8 on CPU.

    ``device`` is ``auto``, ``cuda`` or ``cpu``. `get_available_providers()` lists CUDA
    whenever onnxruntime-gpu is installed, even with no GPU, so the decision is made
    on ``session.get_providers()`` after creating the session.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise RuntimeError("device=cuda asked for, but this onnxruntime has no CUDA provider")
    if want_cuda:
        path = encoders.get("fp16", encoders["int8"])
        # A failed CUDA load logs an error before falling back; we report the
        # outcome ourselves below, so silence it for this one call.
        ort.set_default_logger_severity(3)
        try:
            session = ort.InferenceSession(str(path), options, providers=[CUDA, CPU])
        finally:
            ort.set_default_logger_severity(_DEFAULT_LOG_SEVERITY)
        if CUDA in session.get_providers():
            return session
        if device == "cuda":
            raise RuntimeError("device=cuda asked for, but the CUDA provider failed to start")
        log.warning("CUDA provider listed but not usable here; falling back to CPU int8")
    return ort.InferenceSession(str(encoders["int8"]), options, providers=[CPU])


class TextEncoder:
    """Encodes texts into L2-normalised embeddings (pooling and norm are inside the graph)."""

    def __init__(self, tokenizer: Tokenizer, session: ort.InferenceSession) -> None:
        self.tokenizer = tokenizer
        self.session = session
        self._input_names = {i.name for i in session.get_inputs()}
        self._output_name = session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self.session.get_providers())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings [len(texts), dim] as float32."""
        encodings = self.tokenizer.encode_batch(list(texts))
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (output,) = self.session.run([self._output_name], feeds)
        return np.asarray(output, dtype=np.float32)
