"""A small gRPC client of the server (`irec query`, `irec clusters`, the demo, `irec eval`).

Builds requests, opens channels (TLS, bearer token, retries, round-robin) and prints
answers. Client code: it lives beside the commands, not in the server package.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from server.config import default_target, option
from server.generated.recsys.v1 import recommender_pb2 as pb
from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc

MODES = {
    "default": pb.RETRIEVAL_MODE_UNSPECIFIED,
    "all": pb.RETRIEVAL_MODE_ALL_ITEMS,
    "cluster": pb.RETRIEVAL_MODE_CLUSTER,
}


# Seconds a call may take unless the caller says otherwise.
CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ClientOptions:
    """Where the server is and how to reach it: the options every client command shares.

    Field metadata makes a field an option of `irec query`, `irec clusters` and
    `irec bench` (irec.options).
    """

    target: str = field(default=default_target(), metadata=option("server HOST:PORT"))
    timeout_s: float = field(
        default=CALL_TIMEOUT_S, metadata=option("seconds per call", "--timeout")
    )
    tls_ca: Path | None = field(
        default=None, metadata=option("CA certificate that signed the server's (TLS on)")
    )
    tls_cert: Path | None = field(
        default=None, metadata=option("client certificate for mutual TLS")
    )
    tls_key: Path | None = field(default=None, metadata=option("client private key for mutual TLS"))
    token: str | None = field(default=None, metadata=option("bearer token"))


# The ClientOptions fields only mutual TLS needs (not every command offers it).
MUTUAL_TLS = ("tls_cert", "tls_key")


class StreamFileError(ValueError):
    """A --stream file line is malformed; the message names file and line."""


def make_request(
    history_item_ids: Sequence[str] = (),
    history_texts: Sequence[str] = (),
    k: int = 10,
    request_id: str = "",
    mode: str = "default",
    num_clusters: int = 0,
    include_seen_items: bool = False,
    num_interests: int = 0,
) -> pb.RecommendRequest:
    """A RecommendRequest from plain values."""
    return pb.RecommendRequest(
        request_id=request_id,
        history_item_ids=list(history_item_ids),
        history_texts=list(history_texts),
        k=k,
        mode=MODES[mode],
        num_clusters=num_clusters,
        include_seen_items=include_seen_items,
        num_interests=num_interests,
    )


def read_stream_file(path: Path, k: int) -> list[pb.RecommendRequest]:
    """Requests from a file: per line a JSON object or a comma-separated list of item IDs."""
    requests = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StreamFileError(f"{path}: cannot read ({exc.strerror})") from exc
    for line_no, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                raw = json.loads(line)
                requests.append(
                    make_request(
                        history_item_ids=[str(i) for i in raw.get("history_item_ids", [])],
                        history_texts=[str(t) for t in raw.get("history_texts", [])],
                        k=int(raw.get("k", k)),
                        request_id=str(raw.get("request_id", f"line-{line_no}")),
                    )
                )
            except (json.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
                raise StreamFileError(
                    f"{path}:{line_no}: not a valid request object ({exc})"
                ) from exc
        else:
            ids = [i.strip() for i in line.split(",") if i.strip()]
            requests.append(make_request(ids, k=k, request_id=f"line-{line_no}"))
    return requests


# Retry UNAVAILABLE (server starting, draining, or a replica gone) with backoff,
# through gRPC's own retry support, and balance round-robin over resolved addresses.
RETRY_SERVICE_CONFIG = json.dumps(
    {
        # Spread calls over every address the target resolves to (a headless Service's
        # pods); harmless for a single address.
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "recsys.v1.RecommenderService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


CHANNEL_OPTIONS = [
    ("grpc.service_config", RETRY_SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    # Reconnect within a second of a replica coming back, inside the retry window above.
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client side of TLS (and of mutual TLS when cert and key are given)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def call_security(
    tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None, token: str | None
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]] | None]:
    """Channel credentials (None = plaintext) and per-call metadata for a bearer token."""
    credentials = channel_credentials(tls_ca, tls_cert, tls_key) if tls_ca or tls_cert else None
    return credentials, ([("authorization", f"Bearer {token}")] if token else None)


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, aio: bool = False
) -> Any:
    """A channel with the retry / load-balancing options: TLS when credentials are given."""
    module: Any = grpc.aio if aio else grpc
    if credentials is not None:
        return module.secure_channel(target, credentials, CHANNEL_OPTIONS)
    return module.insecure_channel(target, CHANNEL_OPTIONS)


Client = TypeVar("Client", bound="_ClientBase")


class _ClientBase:
    """One channel with credentials, retries and balancing; a stub; a per-call timeout."""

    AIO = False

    def __init__(
        self,
        target: str,
        timeout_s: float = CALL_TIMEOUT_S,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        token: str | None = None,
    ) -> None:
        credentials, self.metadata = call_security(tls_ca, tls_cert, tls_key, token)
        self.channel: Any = open_channel(target, credentials, aio=self.AIO)
        self.stub = pb_grpc.RecommenderServiceStub(self.channel)
        self.timeout_s = timeout_s

    @classmethod
    def of(cls: type[Client], options: ClientOptions) -> Client:
        """A client as the options say."""
        o = options
        return cls(o.target, o.timeout_s, o.tls_ca, o.tls_cert, o.tls_key, o.token)


class RecommenderClient(_ClientBase):
    """Blocking client over one channel: TLS / mTLS and a bearer token by option, retries."""

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects (raises grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        """Unary Recommend."""
        return self.stub.Recommend(request, timeout=self.timeout_s, metadata=self.metadata)

    def recommend_stream(
        self, requests: Iterable[pb.RecommendRequest]
    ) -> Iterator[pb.RecommendResponse]:
        """Bidirectional RecommendStream."""
        return self.stub.RecommendStream(
            iter(requests), timeout=self.timeout_s, metadata=self.metadata
        )

    def info(self) -> pb.ModelInfo:
        """GetModelInfo."""
        return self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self.timeout_s, metadata=self.metadata
        )

    def clusters(self, top_items: int = 0) -> pb.ListClustersResponse:
        """ListClusters."""
        return self.stub.ListClusters(
            pb.ListClustersRequest(top_items=top_items),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )


class AsyncRecommenderClient(_ClientBase):
    """asyncio twin of RecommenderClient (grpc.aio channel, same retries and credentials)."""

    AIO = True

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channel.close()

    async def recommend(self, request: pb.RecommendRequest) -> pb.RecommendResponse:
        """Unary Recommend."""
        return await self.stub.Recommend(request, timeout=self.timeout_s, metadata=self.metadata)

    async def recommend_stream(
        self, requests: Iterable[pb.RecommendRequest], ordered: bool = False
    ) -> AsyncIterator[pb.RecommendResponse]:
        """Bidirectional RecommendStream; `ordered` asks for request order."""
        metadata = list(self.metadata or []) + ([("irec-ordered", "true")] if ordered else [])
        call = self.stub.RecommendStream(iter(requests), timeout=self.timeout_s, metadata=metadata)
        async for response in call:
            yield response

    async def info(self) -> pb.ModelInfo:
        """GetModelInfo."""
        return await self.stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=self.timeout_s, metadata=self.metadata
        )


def format_clusters(response: pb.ListClustersResponse) -> str:
    """One block per cluster: number, users, description, then its top items."""
    lines = [f"bundle {response.bundle_version}: {len(response.clusters)} interest clusters"]
    for c in response.clusters:
        lines.append(
            f"#{c.cluster_id:<3} {c.size:>6} users {c.num_items:>6} items  {c.description}"
        )
        for item in c.top_items:
            lines.append(f"       {item.item_id:>10}  {item.title}")
    return "\n".join(lines)


def format_response(response: pb.RecommendResponse, indent: str = "  ") -> str:
    """Readable lines: clusters with descriptions, then ranked items with titles and scores."""
    if response.HasField("error"):
        code = grpc.StatusCode(
            next(c for c in grpc.StatusCode if c.value[0] == response.error.code)
        )
        return f"{indent}error {code.name}: {response.error.message}"
    lines = [f"{indent}clusters:"]
    for c in response.clusters:
        lines.append(f"{indent}  #{c.cluster_id:<3} {c.score:6.3f}  {c.description}")
    lines.append(f"{indent}top items:")
    for rank, item in enumerate(response.items, start=1):
        lines.append(f"{indent}  {rank:>2}. {item.score:6.3f}  {item.title}  [id {item.item_id}]")
    for interest in response.interests:
        lines.append(
            f"{indent}interest #{interest.cluster_id} (weight {interest.weight:.2f}) "
            f"{interest.description}"
        )
        lines.append(f"{indent}  because you took: {', '.join(interest.because_item_ids[:5])}")
        for item in interest.items:
            lines.append(f"{indent}    {item.score:6.3f}  {item.title}  [id {item.item_id}]")
    if response.unknown_item_ids:
        lines.append(f"{indent}unknown item IDs skipped: {', '.join(response.unknown_item_ids)}")
    t = response.timing
    lines.append(
        f"{indent}bundle {response.bundle_version} · server {t.total_ms:.1f} ms "
        f"(queue {t.queue_ms:.1f}, encode {t.encode_ms:.1f}, search {t.search_ms:.2f})"
    )
    return "\n".join(lines)
