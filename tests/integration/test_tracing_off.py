"""Tracing off (the default): a serving process imports nothing of OpenTelemetry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.conftest import ROOT
from tests.optional import module_present

SERVE_ONE_CALL = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    import grpc

    from server.grpc.app import start_server
    from server.config import ServerConfig
    from server.generated.recsys.v1 import recommender_pb2 as pb
    from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc


    async def main() -> int:
        trace = sys.argv[2] or None
        config = ServerConfig(
            bundle=Path(sys.argv[1]), host="127.0.0.1", port=0, device="cpu", trace=trace
        )
        running = await start_server(config)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.RecommenderServiceStub(channel)
                request = pb.RecommendRequest(history_item_ids=["1", "2"], k=2)
                answer = await stub.Recommend(request, timeout=30)
        finally:
            await running.stop(0)
        return len(answer.items)


    items = asyncio.run(main())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print(json.dumps({"items": items, "opentelemetry": loaded}))
    """
)


def _serve_one_call(bundle: Path, trace: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_ONE_CALL, str(bundle), trace],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_tracing_off_imports_no_opentelemetry(bundle_dir: Path) -> None:
    off = _serve_one_call(bundle_dir, "")
    assert off == {"items": 2, "opentelemetry": []}
    if module_present("opentelemetry"):
        # The same check sees the imports when tracing is on: it could fail.
        on = _serve_one_call(bundle_dir, "console")
        assert on["items"] == 2 and "opentelemetry.sdk.trace" in on["opentelemetry"]  # type: ignore[operator]
