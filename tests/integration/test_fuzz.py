"""Hypothesis-generated requests against a spawned `irec serve`: never a crash, never INTERNAL.

Every RPC that takes input is fuzzed: Recommend, RecommendStream, Embed, EmbedStream and
KServe ModelInfer, with random and known item IDs, empty, huge, unicode and control-
character texts, int32 extremes for k / num_clusters / mode, and raw bytes on the wire
(random, truncated or bit-flipped valid messages, hand-made fields with int64 varints)
sent through identity serializers. Each answer must be OK (and well formed) or a clear
status: INVALID_ARGUMENT with the field first in the message, NOT_FOUND for an unknown
model, RESOURCE_EXHAUSTED. Never INTERNAL or UNKNOWN, never a dead or hung server.

Examples are bounded (MAX_EXAMPLES per test, derandomized: the same cases every run, no
database written into the working tree).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.generated.inference import grpc_service_pb2 as kpb
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc
from tests.integration.conftest import ServedProcess, served_process

MAX_EXAMPLES = 200
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT_S = 30.0
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Clear refusals; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, DEADLINE_EXCEEDED) fails.
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# "field: problem", "field[3]: problem", "inputs[0].datatype: problem".
FIELD_FIRST = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+)?: \S")
SERVICE = "/recsys.v1.RecommenderService/"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

KNOWN_IDS = [str(i) for i in range(1, 361)]
int32s = st.one_of(
    st.integers(INT32_MIN, INT32_MAX),
    st.sampled_from([0, 1, -1, 2, 3, 10, 12, 13, 359, 360, 361, 1000, 1001, INT32_MIN, INT32_MAX]),
)
texts = st.one_of(
    st.text(max_size=40),  # any unicode, control characters included
    st.text(alphabet=st.characters(codec="ascii", categories=["Cc", "Zs"]), max_size=20),
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(0, 6000)),
    st.sampled_from(["", " ", "\x00", "\u200b", "🎷🎷", "jazz quartet", "é" * 4097]),
)
item_ids = st.one_of(st.sampled_from(KNOWN_IDS), st.text(max_size=300), st.just("1\x00"))
id_lists = st.one_of(
    st.lists(item_ids, max_size=12),
    st.integers(2040, 2060).map(lambda n: [KNOWN_IDS[i % 360] for i in range(n)]),
)
text_lists = st.one_of(
    st.lists(texts, max_size=5),
    st.integers(60, 70).map(lambda n: ["a text"] * n),
)
recommend_requests = st.builds(
    pb.RecommendRequest,
    request_id=st.text(max_size=20),
    history_item_ids=id_lists,
    history_texts=text_lists,
    k=int32s,
    include_seen_items=st.booleans(),
    mode=st.one_of(st.sampled_from([0, 1, 2]), int32s),
    num_clusters=int32s,
)
embed_requests = st.builds(pb.EmbedRequest, request_id=st.text(max_size=20), texts=text_lists)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as protobuf writes them: 10 bytes
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def wire_fields(draw: st.DrawFn) -> bytes:
    """Hand-made protobuf fields: any field number and wire type, int64 varints."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        number = draw(st.one_of(st.integers(1, 8), st.integers(1, 2**29 - 1)))
        wire_type = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))
        out += _varint(number << 3 | wire_type)
        if wire_type == 0:
            value = draw(st.one_of(st.sampled_from([INT64_MIN, INT64_MAX, -1, 2**64 - 1]), int32s))
            out += _varint(value)
        elif wire_type == 2:
            payload = draw(st.one_of(st.binary(max_size=30), st.text(max_size=30).map(str.encode)))
            length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32)))
            out += _varint(length) + payload
        elif wire_type in (1, 5):
            out += draw(st.binary(min_size=0, max_size=8))
    return out


def _mutations(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    truncated = st.tuples(valid, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    flipped = st.tuples(valid, st.integers(0, 10_000), st.integers(0, 7)).map(
        lambda t: (
            t[0][: t[1] % len(t[0])]
            + bytes([t[0][t[1] % len(t[0])] ^ (1 << t[2])])
            + t[0][t[1] % len(t[0]) + 1 :]
            if t[0]
            else b"\xff"
        )
    )
    return st.one_of(st.binary(max_size=200), truncated, flipped, wire_fields())


raw_recommend = _mutations(recommend_requests.map(lambda r: r.SerializeToString()))
raw_embed = _mutations(embed_requests.map(lambda r: r.SerializeToString()))


@pytest.fixture(scope="module")
def served(bundle_dir, tmp_path_factory) -> Iterator[ServedProcess]:
    with served_process(bundle_dir, tmp_path_factory.mktemp("fuzz")) as process:
        yield process
        assert process.process.poll() is None, "the server died during the fuzz"
        log = process.log_text()
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.target) as channel:
        yield channel


def _identity(data: bytes) -> bytes:
    return data


def check_refusal(error: grpc.RpcError) -> None:
    """A clear status: a code callers can act on, the field first in the message."""
    code, details = error.code(), error.details() or ""
    assert code in CLEAR_CODES, f"{code.name}: {details}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        assert FIELD_FIRST.match(details), details


def check_error_field(error: pb.Error) -> None:
    """A stream's per-message error: the same rule as a call's status."""
    codes = {c.value[0] for c in CLEAR_CODES}
    assert error.code in codes, f"{error.code}: {error.message}"
    if error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]:
        assert FIELD_FIRST.match(error.message), error.message


def check_recommendation(request: pb.RecommendRequest, answer: pb.RecommendResponse) -> None:
    assert answer.request_id == request.request_id
    seen = set(request.history_item_ids) & set(KNOWN_IDS)
    unseen = len(KNOWN_IDS) - (0 if request.include_seen_items else len(seen))
    assert len(answer.items) == min(request.k or 10, unseen)
    assert len(answer.clusters) == (request.num_clusters or 3)
    ids = [i.item_id for i in answer.items]
    assert len(set(ids)) == len(ids)
    assert all(math.isfinite(i.score) for i in answer.items)
    if not request.include_seen_items:
        assert not set(ids) & set(request.history_item_ids)


def check_embedding(request: pb.EmbedRequest, answer: pb.EmbedResponse) -> None:
    assert len(answer.embeddings) == len(request.texts)
    for e in answer.embeddings:
        assert len(e.values) == answer.dimension
        assert abs(math.sqrt(sum(v * v for v in e.values)) - 1.0) < 0.02


@FUZZ
@given(request=recommend_requests)
def test_recommend(channel, request):
    stub = pb_grpc.RecommenderServiceStub(channel)
    try:
        check_recommendation(request, stub.Recommend(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        check_refusal(error)


@FUZZ
@given(request=embed_requests)
def test_embed(channel, request):
    stub = pb_grpc.RecommenderServiceStub(channel)
    try:
        check_embedding(request, stub.Embed(request, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        check_refusal(error)


@FUZZ
@given(requests=st.lists(recommend_requests, min_size=1, max_size=5))
def test_recommend_stream(channel, requests):
    for position, request in enumerate(requests):
        request.request_id = str(position)  # to match answers with requests
    stub = pb_grpc.RecommenderServiceStub(channel)
    answers = list(stub.RecommendStream(iter(requests), timeout=CALL_TIMEOUT_S))
    assert sorted(a.request_id for a in answers) == sorted(r.request_id for r in requests)
    for answer in answers:
        if answer.HasField("error"):
            check_error_field(answer.error)
        else:
            check_recommendation(requests[int(answer.request_id)], answer)


@FUZZ
@given(requests=st.lists(embed_requests, min_size=1, max_size=5))
def test_embed_stream(channel, requests):
    for position, request in enumerate(requests):
        request.request_id = str(position)
    stub = pb_grpc.RecommenderServiceStub(channel)
    answers = list(stub.EmbedStream(iter(requests), timeout=CALL_TIMEOUT_S))
    assert sorted(a.request_id for a in answers) == sorted(r.request_id for r in requests)
    for answer in answers:
        if answer.HasField("error"):
            check_error_field(answer.error)
        else:
            check_embedding(requests[int(answer.request_id)], answer)


@FUZZ
@given(method=st.sampled_from(["Recommend", "Embed"]), data=st.data())
def test_malformed_bytes_on_the_wire(channel, method, data):
    raw = data.draw(raw_recommend if method == "Recommend" else raw_embed)
    call = channel.unary_unary(
        SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        answer = call(raw, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        check_refusal(error)
        return
    # Answered OK: the bytes were a valid request, and the answer is the right one for it.
    if method == "Recommend":
        request = pb.RecommendRequest.FromString(raw)
        check_recommendation(request, _parsed(pb.RecommendResponse, answer))
    else:
        check_embedding(pb.EmbedRequest.FromString(raw), _parsed(pb.EmbedResponse, answer))


def _parsed(message_type, raw: bytes):  # type: ignore[no-untyped-def]
    """The answer's bytes as `message_type`; fails the test if they are not one."""
    return message_type.FromString(raw)


def _parses(message_type: type, raw: bytes) -> bool:
    try:
        message_type.FromString(raw)
    except Exception:
        return False
    return True


@FUZZ
@given(method=st.sampled_from(["RecommendStream", "EmbedStream"]), data=st.data())
def test_malformed_bytes_in_a_stream(channel, method, data):
    message_type = pb.RecommendRequest if method == "RecommendStream" else pb.EmbedRequest
    raws = data.draw(
        st.lists(raw_recommend if method == "RecommendStream" else raw_embed, max_size=4)
    )
    call = channel.stream_stream(
        SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    answers = []
    responses = call(iter(raws), timeout=CALL_TIMEOUT_S)
    parsed = [_parses(message_type, raw) for raw in raws]
    try:
        for response in responses:
            answers.append(response)
        # A stream that ends OK answered every message: none was malformed.
        assert all(parsed) and len(answers) == len(raws)
    except grpc.RpcError as error:
        check_refusal(error)
        if not all(parsed):
            # Every message before the malformed one was answered first.
            assert len(answers) == parsed.index(False)
            assert error.details().startswith("request: not a valid")


def _bytes_tensor(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


@st.composite
def infer_requests(draw: st.DrawFn) -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(
        model_name=draw(
            st.sampled_from(["irec-encoder", "irec-recommender", "irec-recommender", "x"])
        ),
        id=draw(st.text(max_size=10)),
    )
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from(["TEXT", "HISTORY_ITEM_IDS", "K", "OTHER", ""])),
            datatype=draw(st.sampled_from(["BYTES", "BYTES", "INT32", "INT32", "FP32", ""])),
            shape=draw(
                st.lists(
                    st.one_of(st.integers(INT64_MIN, INT64_MAX), st.integers(-1, 5)), max_size=3
                )
            ),
        )
        values = draw(st.lists(st.one_of(item_ids, texts).map(str.encode), max_size=5))
        numbers = draw(st.lists(int32s, max_size=3))
        if use_raw:
            request.raw_input_contents.append(
                draw(
                    st.one_of(
                        st.just(_bytes_tensor(values)),
                        st.just(struct.pack(f"<{len(numbers)}i", *numbers)),
                        st.binary(max_size=40),
                    )
                )
            )
        else:
            tensor.contents.bytes_contents.extend(values)
            tensor.contents.int_contents.extend(numbers)
    if use_raw and draw(st.booleans()):
        request.raw_input_contents.append(b"\x01\x00\x00\x00x")  # one entry too many
    return request


@FUZZ
@given(request=infer_requests())
def test_kserve_model_infer(channel, request):
    call = channel.unary_unary(
        MODEL_INFER,
        request_serializer=kpb.ModelInferRequest.SerializeToString,
        response_deserializer=kpb.ModelInferResponse.FromString,
    )
    try:
        answer = call(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        check_refusal(error)
        return
    assert request.model_name in {"irec-encoder", "irec-recommender"}
    assert answer.model_name == request.model_name and answer.id == request.id
    assert len(answer.outputs) == len(answer.raw_output_contents) >= 1


@FUZZ
@given(raw=_mutations(infer_requests().map(lambda r: r.SerializeToString())))
def test_kserve_malformed_bytes(channel, raw):
    call = channel.unary_unary(
        MODEL_INFER, request_serializer=_identity, response_deserializer=_identity
    )
    try:
        answer = _parsed(kpb.ModelInferResponse, call(raw, timeout=CALL_TIMEOUT_S))
    except grpc.RpcError as error:
        check_refusal(error)
        return
    # Answered OK: the bytes were a valid request for a served model, answered in full.
    request = kpb.ModelInferRequest.FromString(raw)
    assert request.model_name in {"irec-encoder", "irec-recommender"}
    assert answer.model_name == request.model_name and answer.id == request.id
    assert len(answer.outputs) == len(answer.raw_output_contents) >= 1


def test_zz_after_the_fuzz_the_server_answers_a_normal_request(served, channel):
    # Runs last in this file (pytest keeps file order).
    assert served.process.poll() is None
    stub = pb_grpc.RecommenderServiceStub(channel)
    answer = stub.Recommend(pb.RecommendRequest(history_item_ids=["1", "2"], k=5), timeout=30)
    assert len(answer.items) == 5 and len(answer.clusters) == 3
