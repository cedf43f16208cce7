"""The encoder as ONNX: fp32 export with pooling + norm in the graph, then int8 and fp16.

int8 uses optimum's ORTQuantizer with dynamic, per-channel avx512_vnni settings:
per-tensor quantization loses too much (REFERENCE.md §1: min cosine 0.863 vs 0.965
per-channel on MiniLM). fp16 is for the CUDA provider.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig

from training.torch_encoder import MeanPoolEncoder

OPSET = 17
OUTPUT_NAME = "embedding"


def export_fp32(encoder: MeanPoolEncoder, input_names: Sequence[str], path: Path) -> None:
    """Torch → ONNX with dynamic batch and sequence axes and one output, the embedding."""
    encoder = encoder.cpu().eval()
    dummy = {name: torch.ones(2, 8, dtype=torch.long) for name in input_names}
    if "token_type_ids" in dummy:
        dummy["token_type_ids"] = torch.zeros(2, 8, dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            encoder,
            (dummy,),
            str(path),
            input_names=list(input_names),
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantization, per-channel weights (optimum ORTQuantizer)."""
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    with tempfile.TemporaryDirectory() as tmp:
        quantizer = ORTQuantizer.from_pretrained(fp32_path.parent, file_name=fp32_path.name)
        quantizer.quantize(save_dir=tmp, quantization_config=config, file_suffix="int8")
        (produced,) = Path(tmp).glob("*.onnx")
        shutil.move(str(produced), out_path)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """fp16 weights and compute, fp32 inputs/outputs kept so clients see no change."""
    model = onnx.load(str(fp32_path))
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))
