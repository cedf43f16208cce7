"""The parity gate: an exported encoder must embed like the torch encoder it came from.

Measured through the server's own path (tokenizers + ONNX Runtime), so a
tokenizer mismatch fails the gate as surely as a bad quantization does.

Thresholds: on all-MiniLM-L6-v2, int8 per-channel reaches cosine mean 0.991-0.992
and min 0.950-0.965 over mixed short/long texts, while per-tensor int8 — which
measurably hurts ranking — gets mean 0.953, min 0.863 (REFERENCE.md §1). A mean of
0.98 and a min of 0.90 pass the good scheme with margin and refuse the bad one;
the worst case is always a one- or two-word text, hence the looser min.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from server.bundle.manifest import ParityReport
from server.bundle.text_encoder import TextEncoder
from server.vectors import unit_rows

PARITY_MIN_COSINE = 0.90
PARITY_MEAN_COSINE = 0.98


class ParityError(ValueError):
    """The exported encoder drifted too far from torch; the export is refused."""


def measure_parity(
    reference: np.ndarray,
    encoder: TextEncoder,
    texts: Sequence[str],
    min_cosine: float = PARITY_MIN_COSINE,
    mean_cosine: float = PARITY_MEAN_COSINE,
    batch_size: int = 32,
) -> ParityReport:
    """Cosine between torch (reference rows) and ONNX embeddings of the same texts."""
    got = np.concatenate(
        [encoder.encode(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    )
    cosines = (unit_rows(reference) * unit_rows(got)).sum(axis=1)
    return ParityReport(
        cosine_min=round(float(cosines.min()), 5),
        cosine_mean=round(float(cosines.mean()), 5),
        num_texts=len(texts),
        threshold_min=min_cosine,
        threshold_mean=mean_cosine,
    )


def check_parity(name: str, report: ParityReport) -> None:
    """Raise ParityError when a report misses either threshold."""
    if report.cosine_min < report.threshold_min or report.cosine_mean < report.threshold_mean:
        raise ParityError(
            f"{name} encoder fails the parity gate: cosine to torch mean "
            f"{report.cosine_mean:.4f} (need ≥ {report.threshold_mean}), min "
            f"{report.cosine_min:.4f} (need ≥ {report.threshold_min}) over "
            f"{report.num_texts} texts"
        )
