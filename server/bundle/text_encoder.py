"""Text → embedding with `tokenizers` and ONNX Runtime (CUDA when it really runs, else CPU)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's default: warnings and above


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    """Load tokenizer.json with truncation to the encoder's budget and batch padding."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages where they are the only copy.

    onnxruntime-gpu does not find them on its own; ``preload_dlls`` (onnxruntime ≥ 1.21)
    does, and is harmless where the libraries are on the system path (CUDA images).
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a failed preload only means CUDA may not start
        log.warning("could not preload CUDA libraries: %s", exc)


def open_session(
    path: Path, providers: list[str], intra_op_threads: int = 0
) -> ort.InferenceSession:
    """One ONNX Runtime session with full graph optimisation."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), options, providers=providers)


def create_session(
    encoders: dict[str, Path], device: str = "auto", intra_op_threads: int = 0
) -> tuple[ort.InferenceSession, str]:
    """Create the encoder session and name its variant (fp16 on CUDA, else int8 on CPU).

    ``device`` is ``auto``, ``cuda`` or ``cpu``. `get_available_providers()` lists CUDA
    whenever onnxruntime-gpu is installed, even with no GPU, so the decision is made
    on ``session.get_providers()`` after creating the session.
    """
    want_cuda = device in ("auto", "cuda") and CUDA in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        raise RuntimeError("device=cuda asked for, but this onnxruntime has no CUDA provider")
    if want_cuda:
        preload_cuda_libraries()
        variant = "fp16" if "fp16" in encoders else "int8"
        # A failed CUDA load logs an error before falling back; we report the
        # outcome ourselves below, so silence it for this one call.
        ort.set_default_logger_severity(3)
        try:
            session = open_session(encoders[variant], [CUDA, CPU], intra_op_threads)
        finally:
            ort.set_default_logger_severity(_DEFAULT_LOG_SEVERITY)
        if CUDA in session.get_providers():
            return session, variant
        if device == "cuda":
            raise RuntimeError("device=cuda asked for, but the CUDA provider failed to start")
        log.warning("CUDA provider listed but not usable here; falling back to CPU int8")
    return open_session(encoders["int8"], [CPU], intra_op_threads), "int8"


class TextEncoder:
    """Encodes texts into L2-normalised embeddings (pooling and norm are inside the graph)."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        session: ort.InferenceSession,
        variant: str = "int8",
        io_binding: bool | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.session = session
        self.variant = variant  # which exported encoder runs: "int8" or "fp16"
        # On CUDA, IO binding lets ONNX Runtime place the output on the device and copy
        # it once, instead of allocating per run; on by default there, off on CPU.
        self.io_binding = CUDA in self.providers if io_binding is None else io_binding
        self._device = "cuda" if CUDA in self.providers else "cpu"
        # Milliseconds spent tokenizing, per thread, since the last take_tokenize_ms():
        # the batcher reads it on the thread that ran the batch.
        self._clock = threading.local()
        self._input_names = {i.name for i in session.get_inputs()}
        self._output_name = session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses."""
        return list(self.session.get_providers())

    def take_tokenize_ms(self) -> float:
        """Tokenizing time of this thread since the last call (then reset to 0)."""
        ms = float(getattr(self._clock, "ms", 0.0))
        self._clock.ms = 0.0
        return ms

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings [len(texts), dim] as float32."""
        started = time.perf_counter()
        # encode_batch hands work to the tokenizers thread pool: worth it for a batch,
        # pure overhead (a thread hop) for the lone text of a request at concurrency 1.
        if len(texts) == 1:
            encodings = [self.tokenizer.encode(texts[0])]
        else:
            encodings = self.tokenizer.encode_batch(list(texts))
        self._clock.ms = self.take_tokenize_ms() + (time.perf_counter() - started) * 1e3
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        if self.io_binding:
            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, array)
            binding.bind_output(self._output_name, self._device)
            self.session.run_with_iobinding(binding)
            (output,) = binding.copy_outputs_to_cpu()
        else:
            (output,) = self.session.run([self._output_name], feeds)
        return np.asarray(output, dtype=np.float32)
