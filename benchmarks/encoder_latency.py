"""Latency of the served encoder by device, variant, IO binding and input shape.

`python -m benchmarks.encoder_latency --bundle DIR [--device cpu,cuda]` loads
the bundle's exported encoders exactly as the server does (server.bundle.text_encoder) and
times `TextEncoder.encode` (tokenize + ONNX Runtime + copy out) on texts built to
an exact token count, for each batch × tokens shape. Configurations are timed
round-robin in one run (these machines are noisy), medians and p90 reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import results
from server.bundle import manifest as fmt
from server.bundle.text_encoder import CPU, CUDA, TextEncoder, load_tokenizer, open_session

DEFAULT_SHAPES = ((1, 32), (1, 128), (32, 64), (32, 128), (256, 128))


@dataclass(frozen=True)
class Config:
    """One way to run the encoder."""

    device: str  # cpu | cuda
    variant: str  # int8 | fp16
    io_binding: bool

    @property
    def label(self) -> str:
        """Human name for the table."""
        return f"{self.device} {self.variant}" + (" + IO binding" if self.io_binding else "")


def _one_token_word(encoder: TextEncoder) -> str:
    """A word the tokenizer keeps whole ("movie" in MiniLM's vocabulary)."""
    candidates = ["movie", "the", "film", "a"] + sorted(encoder.tokenizer.get_vocab())
    for word in candidates:
        if word.isalpha() and len(encoder.tokenizer.encode(f"{word} {word}").ids) == 4:
            return word
    raise ValueError("no single-token word in the vocabulary")


def shaped_texts(encoder: TextEncoder, batch: int, tokens: int) -> list[str]:
    """`batch` texts of exactly `tokens` tokens (special tokens included)."""
    word = _one_token_word(encoder)
    text = " ".join([word] * max(tokens - 2, 1))
    got = len(encoder.tokenizer.encode(text).ids)
    if got != tokens:
        raise ValueError(f"built a {got}-token text for {tokens} tokens")
    return [text] * batch


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    """'1x32,32x64' → [(1, 32), (32, 64)]."""
    shapes = []
    for part in spec.split(","):
        batch, _, tokens = part.strip().partition("x")
        shapes.append((int(batch), int(tokens)))
    return shapes


def build_encoders(bundle: Path, devices: Sequence[str], threads: int) -> dict[Config, TextEncoder]:
    """Every configuration the devices allow, loaded from the bundle's ONNX files."""
    import onnxruntime as ort

    manifest = fmt.read_manifest(bundle)
    tokenizer = load_tokenizer(bundle / fmt.TOKENIZER_FILE, manifest.max_sequence_length)
    encoders: dict[Config, TextEncoder] = {}
    for device in devices:
        if device == "cuda":
            if CUDA not in ort.get_available_providers():
                print("cuda: this onnxruntime has no CUDA provider; skipped", file=sys.stderr)
                continue
            from server.bundle.text_encoder import preload_cuda_libraries

            preload_cuda_libraries()
            for variant in ("fp16", "int8"):
                if variant not in manifest.encoders:
                    continue
                session = open_session(bundle / manifest.encoders[variant], [CUDA, CPU], threads)
                if CUDA not in session.get_providers():
                    print(f"cuda {variant}: CUDA provider did not start", file=sys.stderr)
                    continue
                for binding in (False, True):
                    encoders[Config("cuda", variant, binding)] = TextEncoder(
                        tokenizer, session, variant, io_binding=binding
                    )
        else:
            session = open_session(bundle / manifest.encoders["int8"], [CPU], threads)
            encoders[Config("cpu", "int8", False)] = TextEncoder(
                tokenizer, session, "int8", io_binding=False
            )
    return encoders


def run(
    encoders: dict[Config, TextEncoder], shapes: Sequence[tuple[int, int]], repeats: int
) -> list[dict[str, object]]:
    """Round-robin timings; one row per (configuration, shape)."""
    any_encoder = next(iter(encoders.values()))
    texts = {shape: shaped_texts(any_encoder, *shape) for shape in shapes}
    times: dict[tuple[Config, tuple[int, int]], list[float]] = {}
    for config, encoder in encoders.items():  # warm-up: first runs allocate and tune
        for shape in shapes:
            for _ in range(3):
                encoder.encode(texts[shape])
            times[(config, shape)] = []
    reference = {shape: None for shape in shapes}
    for _ in range(repeats):
        for (config, shape), samples in times.items():
            started = time.perf_counter()
            out = encoders[config].encode(texts[shape])
            samples.append((time.perf_counter() - started) * 1e3)
            ref = reference[shape]
            if ref is None:
                reference[shape] = out  # type: ignore[assignment]
            elif not np.allclose(out, ref, atol=0.05):
                raise AssertionError(f"{config.label} {shape}: embeddings differ")
    rows = []
    for (config, (batch, tokens)), samples in times.items():
        median = statistics.median(samples)
        rows.append(
            {
                "config": config.label,
                "shape": f"{batch}×{tokens}",
                "median_ms": median,
                "p90_ms": float(np.percentile(samples, 90)),
                "texts_per_s": batch / (median / 1e3),
            }
        )
    return rows


def format_rows(rows: Sequence[dict[str, object]]) -> str:
    """Markdown table."""
    lines = [
        "| encoder | batch×tokens | median ms | p90 ms | texts/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['shape']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} "
            f"| {r['texts_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, time every configuration, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--device", default="cpu", help="comma list of cpu, cuda")
    parser.add_argument(
        "--shapes",
        default=",".join(f"{b}x{t}" for b, t in DEFAULT_SHAPES),
        help="comma list of BATCHxTOKENS",
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per configuration")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = cores)")
    args = parser.parse_args(argv)
    before = results.machine()
    encoders = build_encoders(args.bundle, args.device.split(","), args.threads)
    if not encoders:
        print("no encoder configuration could run here", file=sys.stderr)
        return 1
    rows = run(encoders, parse_shapes(args.shapes), args.repeats)
    table = format_rows(rows)
    print(table)
    subject = f"{args.bundle.name} {args.device}"
    print(f"recorded in {results.record_table('encoder_latency', subject, table, before, rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
