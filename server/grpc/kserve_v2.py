"""KServe v2 / Open Inference Protocol beside recsys.v1, so Triton and KServe clients work.

Two models:

- ``irec-encoder``: ``TEXT`` BYTES [n] → ``EMBEDDING`` FP32 [n, text_dim]
- ``irec-recommender``: ``HISTORY_ITEM_IDS`` BYTES [n] (one user, oldest first),
  optional ``K`` INT32 [1] → ``ITEM_IDS`` BYTES [k], ``SCORES`` FP32 [k],
  ``CLUSTER_IDS`` INT32 [c]

Tensors are read from ``raw_input_contents`` (what tritonclient sends) or ``contents``,
and answered in ``raw_output_contents``. This module only maps tensors ↔ domain objects:
ModelInfer goes through server.core.dispatch like every recsys.v1 call (deadlines,
``--max-queue``, batching, ``--workers``, metrics under rpc="ModelInfer", tracing), and
errors use the one mapping table (server.grpc.calls).
"""

from __future__ import annotations

import struct
from importlib import metadata
from typing import Any

import grpc
import numpy as np

from server.core.dispatch import Dispatcher
from server.core.engine import RecommendQuery
from server.errors import InvalidArgument, NotFound
from server.generated.inference import grpc_service_pb2 as kpb
from server.generated.inference import grpc_service_pb2_grpc as kpb_grpc
from server.grpc.calls import deadline_of, unary

ENCODER = "irec-encoder"
RECOMMENDER = "irec-recommender"
MODELS = (ENCODER, RECOMMENDER)
RPC = "ModelInfer"  # the rpc label of its metrics
# The datatype each known input must have; anything else is INVALID_ARGUMENT.
DATATYPES = {"TEXT": "BYTES", "HISTORY_ITEM_IDS": "BYTES", "K": "INT32"}


def _decode_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES wire form: each element is a little-endian uint32 length + bytes."""
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument("raw_input_contents", "truncated BYTES tensor")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument("raw_input_contents", "truncated BYTES tensor")
        out.append(raw[offset : offset + length])
        offset += length
    return out


def _encode_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _inputs(request: kpb.ModelInferRequest) -> dict[str, Any]:
    """Input tensors by name as lists (BYTES) or numpy arrays."""
    tensors: dict[str, Any] = {}
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument("raw_input_contents", "one entry per input is required")
    for position, tensor in enumerate(request.inputs):
        expected = DATATYPES.get(tensor.name, tensor.datatype)
        if tensor.datatype != expected:
            raise InvalidArgument(
                f"inputs[{position}].datatype",
                f"{tensor.name} must be {expected}, not {tensor.datatype!r}",
            )
        if raw and tensor.datatype == "INT32" and len(raw[position]) % 4:
            raise InvalidArgument(
                f"raw_input_contents[{position}]",
                f"{len(raw[position])} bytes is not a whole number of INT32 values",
            )
        if tensor.datatype == "BYTES":
            tensors[tensor.name] = (
                _decode_bytes(raw[position]) if raw else list(tensor.contents.bytes_contents)
            )
        elif tensor.datatype == "INT32":
            tensors[tensor.name] = (
                np.frombuffer(raw[position], dtype="<i4")
                if raw
                else np.asarray(tensor.contents.int_contents, dtype=np.int32)
            )
        else:
            raise InvalidArgument(
                f"inputs[{position}].datatype",
                f"{tensor.datatype!r} is not supported (BYTES, INT32)",
            )
    return tensors


def _output(name: str, datatype: str, shape: list[int]) -> kpb.ModelInferResponse.InferOutputTensor:
    return kpb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)


class InferenceServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the dispatch layer."""

    def __init__(self, dispatch: Dispatcher) -> None:
        self.dispatch = dispatch

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Live whenever the process answers."""
        return kpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Ready once a bundle is loaded and warmed."""
        return kpb.ServerReadyResponse(ready=self.dispatch.ready)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Both models are ready with the bundle."""
        return kpb.ModelReadyResponse(ready=request.name in MODELS and self.dispatch.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Server name and version."""
        try:
            version = metadata.version("irec")
        except metadata.PackageNotFoundError:
            version = "dev"
        return kpb.ServerMetadataResponse(name="irec", version=version, extensions=[])

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Inputs and outputs of one model."""
        return await unary(self._metadata(request.name), context)

    async def _metadata(self, name: str) -> kpb.ModelMetadataResponse:
        engine = self.dispatch.current().engine
        meta = kpb.ModelMetadataResponse.TensorMetadata
        version = [engine.bundle.version]
        if name == ENCODER:
            spec = engine.bundle.manifest.sequence_head
            dim = spec.text_dimension if spec else engine.bundle.manifest.dimension
            return kpb.ModelMetadataResponse(
                name=name,
                versions=version,
                platform="onnxruntime_onnx",
                inputs=[meta(name="TEXT", datatype="BYTES", shape=[-1])],
                outputs=[meta(name="EMBEDDING", datatype="FP32", shape=[-1, dim])],
            )
        if name == RECOMMENDER:
            return kpb.ModelMetadataResponse(
                name=name,
                versions=version,
                platform="irec",
                inputs=[
                    meta(name="HISTORY_ITEM_IDS", datatype="BYTES", shape=[-1]),
                    meta(name="K", datatype="INT32", shape=[1]),
                ],
                outputs=[
                    meta(name="ITEM_IDS", datatype="BYTES", shape=[-1]),
                    meta(name="SCORES", datatype="FP32", shape=[-1]),
                    meta(name="CLUSTER_IDS", datatype="INT32", shape=[-1]),
                ],
            )
        raise NotFound(f"model_name: {name!r} is not served (models: {', '.join(MODELS)})")

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """Run one of the two models."""
        return await unary(self._infer(request, deadline_of(context)), context)

    async def _infer(
        self, request: kpb.ModelInferRequest, deadline: float | None
    ) -> kpb.ModelInferResponse:
        self.dispatch.current()  # not ready: UNAVAILABLE before anything else
        inputs = _inputs(request)
        response = kpb.ModelInferResponse(model_name=request.model_name, id=request.id)
        if request.model_name == ENCODER:
            if "TEXT" not in inputs:
                raise InvalidArgument("inputs", "TEXT (BYTES) is required")
            texts = [t.decode("utf-8", "replace") for t in inputs["TEXT"]]
            embedded = await self.dispatch.embed(texts, RPC, deadline)
            vectors = embedded.vectors
            response.model_version = embedded.bundle_version
            response.outputs.append(_output("EMBEDDING", "FP32", list(vectors.shape)))
            response.raw_output_contents.append(vectors.astype("<f4").tobytes())
            return response
        if request.model_name == RECOMMENDER:
            if "HISTORY_ITEM_IDS" not in inputs:
                raise InvalidArgument("inputs", "HISTORY_ITEM_IDS (BYTES) is required")
            ids = [i.decode("utf-8", "replace") for i in inputs["HISTORY_ITEM_IDS"]]
            k = int(inputs["K"][0]) if "K" in inputs and len(inputs["K"]) else 0
            query = RecommendQuery(history_item_ids=ids, k=k)
            answer = await self.dispatch.recommend(query, RPC, deadline, request_id=request.id)
            result = answer.recommendation
            response.model_version = result.bundle_version
            item_ids = [i.item_id.encode() for i in result.items]
            scores = np.array([i.score for i in result.items], dtype="<f4")
            clusters = np.array([c.cluster_id for c in result.clusters], dtype="<i4")
            response.outputs.extend(
                [
                    _output("ITEM_IDS", "BYTES", [len(item_ids)]),
                    _output("SCORES", "FP32", [len(scores)]),
                    _output("CLUSTER_IDS", "INT32", [len(clusters)]),
                ]
            )
            response.raw_output_contents.extend(
                [_encode_bytes(item_ids), scores.tobytes(), clusters.tobytes()]
            )
            return response
        raise NotFound(
            f"model_name: {request.model_name!r} is not served (models: {', '.join(MODELS)})"
        )
