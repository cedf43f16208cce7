"""Benchmark 4: the text encoder's variants, side by side — latency and ranking quality.

    python -m benchmarks.encoder_variants [--model DIR] [--repeats N] [--ndcg-run DIR]

(a) Latency: PyTorch eager fp32 (transformers AutoModel + mean pooling + L2 under
``torch.inference_mode``, the original design's way), ONNX fp32, ONNX int8 as the
export made it before (unfused graph, per-channel dynamic int8) and the variants
built here, at batch × tokens 1×32, 1×128 and 32×64. Variants run round-robin in one
process (the order rotates every repeat) so machine noise hits all alike; the table
gives median and p90 over repeats and eager's median over each variant's.

(b) Quality: on the MovieLens-1M run given by ``--ndcg-run``, every variant re-embeds
the item texts, the trained sequence head takes them in place of its own (its text
projection is applied as served), and NDCG@10 over test users is computed with the
quality report's own functions (``score_users``, ``target_ranks``, ``summarise``).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxruntime.capi._pybind_state import quantize_matmul_8bits
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.optimizer import optimize_model

from benchmarks import results
from export.onnx_encoder import export_fp32, quantize_int8
from irec.quality import ITEM_TEXT_MAX_LENGTH, make_split
from server.bundle.text_encoder import CPU, TextEncoder, load_tokenizer, open_session
from training.data import load_spec
from training.evaluate import summarise, target_ranks
from training.run_folder import RUN_INFO_FILE, RunFolder
from training.sequence_head import SequenceHead, score_users
from training.torch_encoder import MeanPoolEncoder, embed_texts, load_encoder, resolve_model_dir

SHAPES: tuple[tuple[int, int], ...] = ((1, 32), (1, 128), (32, 64))
THREADS = 2  # the machine's cores; eager gets torch.set_num_threads(THREADS) too
WARMUP = 3
EAGER = "PyTorch eager fp32"
EMBED_BATCH = 64

# Ops quantized in the fused graph: the set optimum's avx512_vnni config names.
FUSED_INT8_OPS = ("MatMul", "Attention", "Gather", "EmbedLayerNormalization")
# Block-wise int8 (MatMulNBits): 32 weights per scale; accuracy level 4 = int8 compute
# with activations quantized per block of the same 32 (not per tensor).
NBITS_BLOCK = 32
NBITS_ACCURACY_LEVEL = 4

Feeds = dict[str, np.ndarray]


def fuse_transformer(fp32_path: Path, out_path: Path) -> None:
    """ONNX Runtime's transformer fusions offline (Attention, SkipLayerNorm, BiasGelu, ...).

    ``opt_level=0``: the fusions only, no hardware-specific rewrites; heads and width
    are read from the graph.
    """
    model = optimize_model(str(fp32_path), model_type="bert", opt_level=0)
    model.save_model_to_file(str(out_path))


def quantize_fused_int8(fused_path: Path, out_path: Path) -> None:
    """Dynamic per-channel int8 of a fused graph (QAttention, QEmbedLayerNorm, MatMulInteger)."""
    quantize_dynamic(
        fused_path,
        out_path,
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(FUSED_INT8_OPS),
        # Contrib ops defeat ONNX shape inference; their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_blockwise_int8(fused_path: Path, out_path: Path) -> None:
    """Every MatMul with a constant weight → MatMulNBits (8 bits, symmetric, block-wise).

    Written here rather than with onnxruntime's MatMulNBitsQuantizer, which needs the
    onnx_ir package (not installed); the packing is onnxruntime's own C++ routine.
    """
    model = onnx.load(str(fused_path))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        w = np.ascontiguousarray(numpy_helper.to_array(weights[node.input[1]]), dtype=np.float32)
        k, n = w.shape
        blocks = -(-k // NBITS_BLOCK)
        packed = np.zeros((n, blocks, NBITS_BLOCK), dtype=np.uint8)
        scales = np.zeros((n, blocks), dtype=np.float32)
        zero_points = np.zeros((n, blocks), dtype=np.uint8)
        quantize_matmul_8bits(packed, w, scales, zero_points, NBITS_BLOCK, n, k, True)
        q_name, s_name = f"{node.input[1]}_q8", f"{node.input[1]}_scales"
        graph.initializer.extend(
            [numpy_helper.from_array(packed, q_name), numpy_helper.from_array(scales, s_name)]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], q_name, s_name],
                [node.output[0]],
                name=f"{node.name}_q8",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=8,
                block_size=NBITS_BLOCK,
                accuracy_level=NBITS_ACCURACY_LEVEL,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(out_path))


@dataclass
class EncoderVariant:
    """One way of running the encoder: on fixed token feeds, and on texts."""

    name: str
    threads: int
    run: Callable[[Feeds], np.ndarray]
    embed: Callable[[Sequence[str], int], np.ndarray]
    note: str = ""


def _eager_variant(encoder: MeanPoolEncoder, tokenizer: Any, threads: int) -> EncoderVariant:
    encoder = encoder.cpu().eval()

    def run(feeds: Feeds) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
            return encoder(**inputs).numpy()

    def embed(texts: Sequence[str], max_length: int) -> np.ndarray:
        return embed_texts(encoder, tokenizer, list(texts), max_length, EMBED_BATCH, progress=False)

    return EncoderVariant(EAGER, threads, run, embed, f"torch {torch.__version__}")


def _session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _onnx_variant(
    name: str,
    path: Path,
    tokenizer_json: Path,
    threads: int,
    note: str,
    session: ort.InferenceSession | None = None,
) -> EncoderVariant:
    """An ONNX encoder; by default opened exactly as the server opens it (open_session)."""
    session = session or open_session(path, [CPU], threads)

    def run(feeds: Feeds) -> np.ndarray:
        return np.asarray(session.run(None, feeds)[0])

    def embed(texts: Sequence[str], max_length: int) -> np.ndarray:
        encoder = TextEncoder(load_tokenizer(tokenizer_json, max_length), session)
        # Length-sorted batches pad little (as embed_texts does), then back in order.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), 0), dtype=np.float32)
        parts = [
            encoder.encode([texts[i] for i in order[start : start + EMBED_BATCH]])
            for start in range(0, len(texts), EMBED_BATCH)
        ]
        if parts:
            stacked = np.concatenate(parts)
            out = np.empty_like(stacked)
            out[order] = stacked
        return out

    return EncoderVariant(name, threads, run, embed, note)


def build_variants(
    model_dir: Path, workdir: Path, threads: int = THREADS
) -> tuple[list[EncoderVariant], list[str], int]:
    """Every encoder variant of the benchmark, built from `model_dir` into `workdir`.

    ONNX sessions get `threads` intra-op threads; eager runs on torch's own setting
    (main() sets it to the same number). Returns the variants (eager first) and the
    model's input names and vocabulary size.
    """
    encoder, tokenizer = load_encoder(model_dir)
    input_names: list[str] = [
        n
        for n in ("input_ids", "attention_mask", "token_type_ids")
        if n in tokenizer.model_input_names
    ]
    tokenizer_json = model_dir / "tokenizer.json"
    fp32 = workdir / "encoder.fp32.onnx"
    export_fp32(encoder, input_names, fp32)
    exported = workdir / "encoder.int8.onnx"
    quantize_int8(fp32, exported)  # exactly what `irec export` ships for CPU
    fused = workdir / "encoder.fp32.fused.onnx"
    fuse_transformer(fp32, fused)
    fused_int8 = workdir / "encoder.int8.fused.onnx"
    quantize_fused_int8(fused, fused_int8)
    blockwise = workdir / "encoder.int8.blockwise.onnx"
    quantize_blockwise_int8(fused, blockwise)
    variants = [
        _eager_variant(encoder, tokenizer, torch.get_num_threads()),
        _onnx_variant("ONNX fp32", fp32, tokenizer_json, threads, "torch.onnx.export, opset 17"),
        _onnx_variant(
            "ONNX fp32, fused",
            fused,
            tokenizer_json,
            threads,
            "ORT transformer optimizer offline: Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm",
        ),
        _onnx_variant(
            "ONNX int8 (as exported)",
            exported,
            tokenizer_json,
            threads,
            "export.onnx_encoder.quantize_int8: optimum avx512_vnni, dynamic, per-channel "
            "weights, per-tensor activations; ORT fuses it at load (DynamicQuantizeMatMul)",
        ),
        _onnx_variant(
            "ONNX int8 (as exported), no spinning",
            exported,
            tokenizer_json,
            threads,
            "same file; session.intra_op.allow_spinning = 0",
            ort.InferenceSession(str(exported), _session_options(threads, False), providers=[CPU]),
        ),
        _onnx_variant(
            "ONNX int8, fused then quantized",
            fused_int8,
            tokenizer_json,
            threads,
            "fused graph → dynamic per-channel int8 (QAttention, QEmbedLayerNorm, MatMulInteger)",
        ),
        _onnx_variant(
            "ONNX int8 block-wise (MatMulNBits)",
            blockwise,
            tokenizer_json,
            threads,
            f"fused graph; MatMul → MatMulNBits 8-bit, block {NBITS_BLOCK}, accuracy level "
            f"{NBITS_ACCURACY_LEVEL} (activations quantized per block); Attention stays fp32",
        ),
    ]
    return variants, input_names, len(tokenizer)


def synthetic_feeds(
    batch: int, tokens: int, input_names: Sequence[str], vocab_size: int, seed: int = 0
) -> Feeds:
    """Token feeds of exactly batch × tokens, no padding (seeded ids from the vocabulary)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(vocab_size // 10, vocab_size, size=(batch, tokens), dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        "token_type_ids": np.zeros((batch, tokens), dtype=np.int64),
    }
    return {name: feeds[name] for name in input_names}


def measure_latency(
    variants: Sequence[EncoderVariant],
    feeds_by_shape: dict[tuple[int, int], Feeds],
    repeats: int,
    warmup: int = WARMUP,
) -> dict[tuple[str, tuple[int, int]], list[float]]:
    """Milliseconds per call of every (variant, shape), variants interleaved round-robin."""
    times: dict[tuple[str, tuple[int, int]], list[float]] = {}
    for shape, feeds in feeds_by_shape.items():
        for variant in variants:
            for _ in range(warmup):
                variant.run(feeds)
            times[(variant.name, shape)] = []
        for r in range(repeats):
            k = r % len(variants)
            for variant in [*variants[k:], *variants[:k]]:
                started = time.perf_counter()
                variant.run(feeds)
                times[(variant.name, shape)].append((time.perf_counter() - started) * 1e3)
    return times


def latency_table(
    variants: Sequence[EncoderVariant],
    times: dict[tuple[str, tuple[int, int]], list[float]],
    shapes: Sequence[tuple[int, int]],
) -> str:
    """Markdown: median / p90 ms and eager's median over the variant's, per shape."""
    head = "| variant | threads |" + "".join(
        f" {b}×{t} median / p90 ms | ×eager |" for b, t in shapes
    )
    lines = [head, "|---|---|" + "---:|---:|" * len(shapes)]
    eager = {s: float(np.median(times[(variants[0].name, s)])) for s in shapes}
    for v in variants:
        cells = []
        for s in shapes:
            t = times[(v.name, s)]
            median = float(np.median(t))
            cells.append(
                f" {median:.2f} / {float(np.percentile(t, 90)):.2f} | {eager[s] / median:.2f} |"
            )
        lines.append(f"| {v.name} | {v.threads} |" + "".join(cells))
    return "\n".join(lines)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine between two embedding matrices."""
    a = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    b = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return np.asarray((a * b).sum(axis=1))


# -- quality: NDCG@10 of the sequence head fed each variant's item text embeddings --------


@dataclass
class RankingTask:
    """A trained head, its item texts (row order) and the test users' histories/targets."""

    head: SequenceHead
    texts: list[str]
    histories: list[list[int]]
    targets: list[int]
    users_note: str


def load_ranking_task(run_dir: Path, users: int | None, seed: int = 0) -> RankingTask:
    """The run's head and items, and the leave-one-out test split of its dataset.

    Rows follow the dataset's item order, as in `irec eval`; a mismatch with the run's
    items.jsonl is an error. `users` picks a seeded subset (None: all test users).
    """
    run = RunFolder.open(run_dir)
    info = run.info()
    records = run.items()
    dataset = load_spec(info["data"])
    items = dataset.items.reset_index(drop=True)
    if [str(i) for i in items["item_id"]] != [str(r["id"]) for r in records]:
        raise ValueError(f"{run_dir}: items.jsonl is not in {info['data']}'s item order")
    row_of = {item_id: row for row, item_id in enumerate(items["item_id"])}
    sequences = [[row_of[i] for i in seq] for seq in dataset.sequences().values()]
    sequences = [s for s in sequences if len(s) >= 3]
    total = len(sequences)
    note = f"all {total} test users"
    if users is not None and users < total:
        sequences = random.Random(seed).sample(sequences, users)
        note = f"{users} of {total} test users (random.Random({seed}).sample)"
    split = make_split(sequences)
    return RankingTask(
        run.load_head(),
        [r["text"] for r in records],
        split.test_histories,
        split.test_targets,
        note,
    )


def head_ndcg(
    head: SequenceHead,
    item_text: np.ndarray,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    seed: int = 0,
) -> dict[str, float]:
    """NDCG@10 (mean, 95% interval) of `head` with `item_text` as every item's text embedding."""
    original = head.item_text.clone()
    try:
        head.item_text = torch.cat(
            [torch.zeros(1, item_text.shape[1]), torch.from_numpy(item_text).float()]
        )
        users, items = score_users(head, histories)
    finally:
        head.item_text = original
    ranks = target_ranks(users @ items.T, histories, targets)
    return summarise(ranks, seed=seed)["ndcg@10"]


def quality_rows(
    variants: Sequence[EncoderVariant], task: RankingTask, max_length: int = ITEM_TEXT_MAX_LENGTH
) -> list[dict[str, Any]]:
    """Per variant: item-text cosine to eager, NDCG@10 and its relative loss vs eager."""
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    stored = task.head.item_text[1:].numpy()
    for variant in variants:
        started = time.perf_counter()
        embeddings = variant.embed(task.texts, max_length)
        seconds = time.perf_counter() - started
        if reference is None:
            reference = embeddings
            # The head was trained on eager embeddings of these texts: they must agree.
            drift = float(np.abs(embeddings - stored).max())
            print(f"[bench] eager item texts vs the head's stored ones: max |Δ| {drift:.2e}")
        cos = cosine_rows(embeddings, reference)
        ndcg = head_ndcg(task.head, embeddings, task.histories, task.targets)
        rows.append(
            {
                "variant": variant.name,
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "ndcg": ndcg,
                "embed_s": seconds,
            }
        )
        print(f"[bench] {variant.name}: NDCG@10 {ndcg['mean']:.4f} ({seconds:.0f} s)", flush=True)
    eager = rows[0]["ndcg"]["mean"]
    for row in rows:
        row["relative_loss"] = 1 - row["ndcg"]["mean"] / max(eager, 1e-12)
    return rows


def quality_table(rows: Sequence[dict[str, Any]], items: int) -> str:
    """Markdown: item-text cosine to eager, NDCG@10 with interval, relative loss."""
    lines = [
        f"| variant | item-text cosine to eager, mean / min ({items} items) "
        "| NDCG@10 | 95% interval | relative loss vs eager | embed s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = r["ndcg"]
        lines.append(
            f"| {r['variant']} | {r['cos_mean']:.4f} / {r['cos_min']:.4f} | {n['mean']:.4f} "
            f"| {n['low']:.4f}–{n['high']:.4f} | {r['relative_loss']:+.2%} | {r['embed_s']:.0f} |"
        )
    return "\n".join(lines)


def _run_dir(path: Path) -> Path:
    """Accept a run folder or an `irec eval` output folder holding run/."""
    return path / "run" if (path / "run" / RUN_INFO_FILE).is_file() else path


def main(argv: Sequence[str] | None = None) -> None:
    """Print the latency table and, with --ndcg-run, the NDCG@10 table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="encoder folder (default: the run's, else MiniLM)"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per variant and shape")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--ndcg-run", type=Path, default=None, help="MovieLens-1M run for NDCG@10")
    parser.add_argument("--ndcg-users", type=int, default=None, help="seeded subset of test users")
    args = parser.parse_args(argv)

    run_dir = _run_dir(args.ndcg_run) if args.ndcg_run else None
    if args.model is not None or run_dir is None:
        model_dir = resolve_model_dir(args.model)
    else:
        model_dir = RunFolder(run_dir).model_dir  # the encoder the head's item texts came from
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        variants, input_names, vocab = build_variants(model_dir, Path(tmp), args.threads)
        feeds = {s: synthetic_feeds(*s, input_names, vocab) for s in SHAPES}
        started, load = time.perf_counter(), os.getloadavg()[0]
        times = measure_latency(variants, feeds, args.repeats)
        print(
            f"\n## Encoder latency ({model_dir.name}; {args.repeats} repeats, round-robin; "
            f"torch {torch.get_num_threads()} threads, ORT intra-op {args.threads} / inter-op 1; "
            f"onnxruntime {ort.__version__}; {os.cpu_count()} CPUs, 1-min load average "
            f"{load:.1f} → {os.getloadavg()[0]:.1f}; {time.perf_counter() - started:.0f} s)\n"
        )
        latency = latency_table(variants, times, SHAPES)
        print(latency)
        record = results.record_table
        record("encoder_variants", f"latency {model_dir.name}", latency, results.machine())
        print("\nvariants:")
        for v in variants:
            print(f"- {v.name}: {v.note}")
        if run_dir is not None:
            task = load_ranking_task(run_dir, args.ndcg_users)
            rows = quality_rows(variants, task)
            print(
                f"\n## NDCG@10 on {run_dir} ({task.users_note}; item texts re-embedded by "
                f"each variant at {ITEM_TEXT_MAX_LENGTH} tokens)\n"
            )
            quality = quality_table(rows, len(task.texts))
            print(quality)
            record("encoder_variants", f"ndcg {run_dir.name}", quality, results.machine())


if __name__ == "__main__":
    main()
