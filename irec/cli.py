"""The `irec` console script: train, eval, export, serve, query, bench, score, demo.

Every option has an environment-variable twin (shown in --help), read when the
parser is built in main(), never at import (irec.options). `serve` takes its options
from server.config.ServerConfig and `score` from irec.batch_inference.ScoreOptions.
`serve`, `query` and `bench` import only serving code; `train`, `eval`, `export` and
`demo` import training code lazily and need the `train` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from irec.options import EnvArgs, from_args
from server.config import ServerConfig, default_target

EXIT_USAGE = 2


def _clusters(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        k = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {value!r}") from exc
    if k < 1:
        raise argparse.ArgumentTypeError("must be ≥ 1")
    return k


def _seeds(value: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError("comma-separated integers, e.g. 0,1,2") from exc
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def _tracks(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _positive(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value}: must be > 0")
    return number


def _share(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"{value}: must be in [0, 1)")
    return number


# The head's ID dropout (training.sequence_head.HeadConfig fields; flag = --field-name): the
# price of the text path. Unset options keep HeadConfig's defaults, named in the help.
ID_DROPOUT_OPTIONS = {
    "id_dropout": "share of history positions read by text alone (0.2)",
    "text_only_histories": "share of training histories read by text alone, as written "
    "histories are (0.2)",
    "item_id_dropout": "share of items scored by text alone in a step, as new items are (0.0)",
}


def _model_options(a: EnvArgs) -> None:
    """Options of the model that `irec train` and `irec eval` share (one TrainConfig)."""
    a.add("--model", help="Hugging Face encoder folder (default: packaged all-MiniLM-L6-v2)")
    a.add(
        "--encoder",
        choices=["frozen", "finetune", "contrastive"],
        default="finetune",
        help="frozen: item texts encoded once; finetune: the encoder's top layers trained with "
        "the sequence head on the next-item objective (kept only if better on validation); "
        "contrastive: a history→next-item contrastive stage before the head",
    )
    a.add("--encoder-layers", type=int, default=2, help="top encoder layers fine-tuned")
    a.add("--encoder-lr", type=float, default=5e-5, help="AdamW learning rate of the encoder")
    a.add("--refresh-every", type=int, default=16, help="head steps per encoder update")
    a.add(
        "--encoder-epochs",
        type=int,
        default=3,
        help="epochs of joint encoder + head training (after one head epoch); the head "
        "then trains alone on the tuned item table",
    )
    a.add("--minutes", type=_positive, default=30.0, help="time budget of head (+ encoder)")
    a.add("--epochs", type=int, default=200, help="most epochs of the sequence head")
    a.add("--clusters", type=_clusters, default=None, help="K, or 'auto' (silhouette, 4..16)")
    a.add("--users", type=int, help="use a seeded sample of this many users")
    a.add("--quick", action="store_true", help="a tiny BERT built on the fly, small head")
    a.add("--seed", type=int, default=0, help="random seed")
    a.add("--quiet", action="store_true", help="no progress bars")
    for field, help_text in ID_DROPOUT_OPTIONS.items():
        a.add(f"--{field.replace('_', '-')}", type=_share, default=None, help=help_text)
    # The contrastive stage (--encoder contrastive).
    a.add("--max-steps", type=int, help="contrastive: stop after this many steps")
    a.add("--batch-size", type=int, default=32, help="contrastive: histories per step")
    a.add("--lr", type=float, default=5e-5, help="contrastive: AdamW learning rate")
    a.add("--temperature", type=float, default=0.05, help="contrastive: softmax temperature")
    a.add("--samples-per-user", type=int, default=1, help="contrastive: pairs per user per pass")
    a.add("--passes", type=float, default=1.0, help="contrastive: passes over the users")


def train_config(args: argparse.Namespace, out: Path) -> Any:
    """The TrainConfig of parsed `train` / `eval` options."""
    from training.finetune import FinetuneConfig
    from training.run import EncoderConfig, TrainConfig
    from training.sequence_head import HeadConfig

    return TrainConfig(
        data=args.data,
        out=out,
        model=args.model,
        encoder=EncoderConfig(
            treatment=args.encoder,
            trainable_layers=args.encoder_layers,
            learning_rate=args.encoder_lr,
            refresh_every=args.refresh_every,
            epochs=args.encoder_epochs,
            contrastive=FinetuneConfig(
                epochs=args.passes,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                temperature=args.temperature,
                samples_per_user=args.samples_per_user,
                max_steps=args.max_steps,
                seed=args.seed,
            ),
        ),
        head=HeadConfig(
            epochs=args.epochs,
            **{
                field: getattr(args, field)
                for field in ID_DROPOUT_OPTIONS
                if getattr(args, field) is not None
            },
        ),
        minutes=args.minutes,
        clusters=args.clusters,
        seed=args.seed,
        validation_users=getattr(args, "validation_users", 1000),
        users=args.users,
        quick=args.quick,
        progress=not args.quiet,
        backend=getattr(args, "backend", "local"),
        ray_address=getattr(args, "address", None),
        ray_workers=getattr(args, "ray_workers", 2),
    )


def build_parser() -> argparse.ArgumentParser:
    """The `irec` argument parser: one subcommand per command, each option with its env twin."""
    parser = argparse.ArgumentParser(
        prog="irec",
        description="Learn interest clusters, export a bundle, serve it over gRPC.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train the model (encoder + sequence head + clusters) → run folder",
        description="The one training pipeline: item texts through the encoder (frozen, or "
        "fine-tuned with the sequence head on the next-item objective), the sequence head, "
        "user clusters. The last item of --validation-users users is held out; the trained "
        "model is shipped only if it beats popularity and the pretrained encoder on it, and "
        "the fine-tuned encoder only if it beats the pretrained one (run.json says which and "
        "why). Curves go to TensorBoard event files in RUN/tensorboard.",
    )
    a = EnvArgs(p, "TRAIN")
    a.add(
        "--data",
        required=True,
        help="demo[:USERS] | demo-titles[:USERS] (no categories) | movielens-1m:DIR | "
        "movielens-1m-sasrec:DIR | movielens-latest:DIR | csv:INTERACTIONS,ITEMS (CSV or Parquet)",
    )
    a.add("--out", required=True, type=Path, help="run folder to write, e.g. runs/NAME")
    _model_options(a)
    a.add("--validation-users", type=int, default=1000, help="users whose last item validates")
    a.add(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: one process; ray: Ray Data embedding, Ray Train for --encoder contrastive, "
        "mini-batch K-Means (needs the `ray` extra)",
    )
    a.add("--address", help="Ray cluster address for --backend ray (default: a local Ray)")
    a.add("--ray-workers", type=int, default=2, help="Ray Train workers and embedding actors")

    p = sub.add_parser(
        "eval",
        help="the leave-one-out protocol around the same training → report",
        description="Leave-one-out (last item = test, second to last = validation), all items "
        "ranked, history excluded. Tracks: warm (--seeds), cold items (held out of training, "
        "known by text only), text histories (titles sent as history_texts to a live server).",
    )
    a = EnvArgs(p, "EVAL")
    a.add(
        "--data",
        default="movielens-1m-sasrec:../shared/data/ml-1m-sasrec",
        help="data SPEC (see train); movielens-1m-sasrec:DIR[,MOVIES] is the papers' file",
    )
    a.add("--out", type=Path, default=Path("reports/latest"), help="report folder")
    _model_options(a)
    a.add("--seeds", type=_seeds, default=(0,), help="comma-separated seeds of the warm track")
    a.add(
        "--validation-users",
        type=int,
        default=1000,
        help="users scored at each validation step (model and mode choices); all of them when "
        "this is at least the number of users",
    )
    a.add("--cold-minutes", type=float, default=12.0, help="training budget of the cold track")
    a.add("--cold-fraction", type=float, default=0.15, help="share of items held out as cold")
    a.add(
        "--tracks",
        type=_tracks,
        default=("warm", "text_history", "cold"),
        help="comma-separated tracks to run: warm, text_history (needs warm), cold",
    )
    a.add(
        "--text-history-users",
        type=int,
        default=0,
        help="users of the text-history track (0 = all)",
    )

    p = sub.add_parser(
        "export", help="run folder → verified bundle (ONNX int8/fp16, HNSW, manifest)"
    )
    a = EnvArgs(p, "EXPORT")
    a.add("--run", type=Path, help="run folder written by `irec train`")
    a.add("--out", type=Path, help="bundle folder to write (replaced only if the new one verifies)")
    a.add("--verify", type=Path, help="verify an existing bundle folder instead of exporting")
    a.add(
        "--parity-min",
        type=float,
        default=0.90,
        help="minimum cosine to torch over the parity texts",
    )
    a.add("--parity-mean", type=float, default=0.98, help="minimum mean cosine to torch")
    a.add("--no-fp16", action="store_true", help="skip the fp16 (GPU) encoder")
    a.add(
        "--new-items",
        type=Path,
        help="items table (CSV/Parquet: item_id,title[,year,categories,description]) of items "
        "unknown to training; they enter the bundle by their text alone",
    )
    a.add("--bundle-version", help="bundle version string (default: UTC time + content hash)")
    a.add(
        "--default-mode",
        choices=["all_items", "cluster"],
        default="all_items",
        help="retrieval mode when a request names none",
    )

    p = sub.add_parser("serve", help="serve a bundle over gRPC")
    a = EnvArgs(p, "SERVE")
    a.add_fields(ServerConfig)
    a.add("--log-level", default="INFO", help="logging level")
    a.add("--log-format", choices=["text", "json"], default="text", help="log line format")

    p = sub.add_parser("query", help="send Recommend requests to a running server")
    a = EnvArgs(p, "QUERY")
    a.add("--target", default=default_target(), help="server HOST:PORT")
    a.add("--history", default="", help="comma-separated item IDs, oldest first")
    a.add("--text", action="append", help="free text of interest (repeatable)")
    a.add("-k", "--k", type=int, default=10, help="items to return")
    a.add("--mode", choices=["default", "all", "cluster"], default="default", help="retrieval mode")
    a.add("--clusters", type=int, default=0, help="clusters to return (0 = server default)")
    a.add("--include-seen", action="store_true", help="also return items in the history")
    a.add(
        "--interests",
        type=int,
        default=0,
        help="also answer per interest (up to 5; head bundles): items is then their merge",
    )
    a.add(
        "--stream",
        type=Path,
        help="file of requests (JSON or comma-separated IDs per line) sent over RecommendStream",
    )
    a.add("--info", action="store_true", help="print GetModelInfo and exit")
    a.add("--json", action="store_true", help="print responses as JSON")
    a.add("--timeout", type=float, default=30.0, help="seconds per call")
    a.add("--tls-ca", type=Path, help="CA certificate that signed the server's (TLS on)")
    a.add("--tls-cert", type=Path, help="client certificate for mutual TLS")
    a.add("--tls-key", type=Path, help="client private key for mutual TLS")
    a.add("--token", help="bearer token")

    p = sub.add_parser(
        "clusters",
        help="list the interest clusters: what sets each apart, its size, its top items",
        description="From a running server (ListClusters) or, with --bundle, from a bundle "
        "folder without a server.",
    )
    a = EnvArgs(p, "CLUSTERS")
    a.add("--bundle", type=Path, help="read a bundle folder instead of asking a server")
    a.add("--target", default=default_target(), help="server HOST:PORT")
    a.add("--top-items", type=int, default=5, help="top items per cluster (0 = all kept)")
    a.add("--json", action="store_true", help="print the answer as JSON")
    a.add("--timeout", type=float, default=30.0, help="seconds per call")
    a.add("--tls-ca", type=Path, help="CA certificate that signed the server's (TLS on)")
    a.add("--token", help="bearer token")

    p = sub.add_parser("bench", help="load-test a running server: RPS and latency percentiles")
    a = EnvArgs(p, "BENCH")
    a.add("--target", default=default_target(), help="server HOST:PORT")
    a.add(
        "--rpc",
        choices=["recommend", "recommend-stream", "embed", "embed-stream", "health"],
        default="recommend",
        help="which RPC to drive (health: a trivial Check, the transport's own floor)",
    )
    a.add(
        "-c",
        "--concurrency",
        default="1",
        help="concurrent callers (streams for *-stream); a comma list runs one row each",
    )
    a.add("--duration", type=float, default=10.0, help="measured seconds per row")
    a.add("--requests", type=int, help="measure this many answers instead of a duration")
    a.add("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    a.add("--history-length", type=int, default=20, help="items (or texts) per history")
    a.add("-k", "--k", type=int, default=10, help="items per answer")
    a.add("--texts", type=int, default=1, help="texts per Embed request")
    a.add("--window", type=int, default=32, help="messages in flight per stream")
    a.add("--processes", type=int, default=1, help="client processes sharing the callers")
    a.add("--bundle", type=Path, help="bundle folder whose item IDs make the histories")
    a.add("--seed", type=int, default=0, help="seed of the request pool")
    a.add("--timeout", type=float, default=30.0, help="seconds per call")
    a.add("--tls-ca", type=Path, help="CA certificate that signed the server's (TLS on)")
    a.add("--token", help="bearer token")
    a.add("--json", action="store_true", help="print one JSON object per row")

    p = sub.add_parser(
        "score", help="batch-score a Parquet table of users with a bundle → Parquet parts"
    )
    a = EnvArgs(p, "SCORE")
    a.add("--bundle", required=True, type=Path, help="bundle folder")
    a.add(
        "--input",
        required=True,
        type=Path,
        help="Parquet file or folder: user_id, history_item_ids (oldest first)[, history_texts]",
    )
    a.add("--output", required=True, type=Path, help="folder of part files (a rerun resumes)")
    a.add(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="who runs the engine: this process (local) or a Ray cluster",
    )
    a.add("--address", help="Ray cluster to join (default: start a local one)")
    a.add("--batch-size", type=int, default=1024, help="users per batch (local: per part file)")
    a.add("-k", "--k", type=int, default=10, help="items per user")
    a.add("--clusters", type=int, default=3, help="clusters per user (0 = server default)")
    a.add("--workers", type=int, default=2, help="Ray actors, each loading the bundle once")
    a.add(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="ONNX Runtime device (ray: one GPU per actor where the cluster has GPUs)",
    )
    a.add("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    a.add("--quiet", action="store_true", help="no progress bar")
    a.add("--log-level", default="INFO", help="logging level")

    p = sub.add_parser(
        "demo", help="the whole path on the built-in demo data: train → export → serve → query"
    )
    a = EnvArgs(p, "DEMO")
    a.add("--workdir", type=Path, default=Path("demo-output"), help="where the run and bundle go")
    a.add("--model", help="Hugging Face encoder folder (default: packaged all-MiniLM-L6-v2)")
    a.add("--epochs", type=int, default=6, help="sequence-head epochs (brief on purpose)")
    a.add("--minutes", type=_positive, default=3.0, help="time budget of training")
    a.add("--users", type=int, default=5, help="demo users to show")
    a.add("--seed", type=int, default=0, help="random seed")
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.run import train

    train(train_config(args, args.out))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from irec.quality import EvalConfig, run_eval

    run_eval(
        EvalConfig(
            train=train_config(args, args.out / "run"),
            out=args.out,
            seeds=args.seeds,
            cold_minutes=args.cold_minutes,
            cold_fraction=args.cold_fraction,
            text_history_users=args.text_history_users or None,
            tracks=args.tracks,
        )
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from export.bundle_writer import ExportOptions, export_run, verify_bundle
    from server.core.engine import RetrievalMode

    if args.verify is not None:
        print(verify_bundle(args.verify))
        return 0
    if args.run is None or args.out is None:
        print("irec export: give --run RUN --out BUNDLE, or --verify BUNDLE", file=sys.stderr)
        return EXIT_USAGE
    manifest = export_run(
        args.run,
        args.out,
        ExportOptions(
            parity_min=args.parity_min,
            parity_mean=args.parity_mean,
            fp16=not args.no_fp16,
            version=args.bundle_version,
            default_mode=RetrievalMode(args.default_mode),
            new_items=args.new_items,
        ),
    )
    print(f"wrote bundle {manifest.bundle_version} to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from server.grpc.app import serve
    from server.logs import configure

    configure(args.log_level, args.log_format)
    asyncio.run(serve(from_args(ServerConfig, args)))
    return 0


def _query(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from irec.client import RecommenderClient, format_response, make_request, read_stream_file

    def show(response: Any, label: str) -> None:
        if args.json:
            print(json.dumps(MessageToDict(response)))
        else:
            print(label)
            print(format_response(response))

    with RecommenderClient(
        args.target, args.timeout, args.tls_ca, args.tls_cert, args.tls_key, args.token
    ) as client:
        if args.info:
            print(json.dumps(MessageToDict(client.info()), indent=1))
            return 0
        if args.stream is not None:
            requests = read_stream_file(args.stream, args.k)
            for response in client.recommend_stream(requests):
                show(response, f"request {response.request_id}:")
            return 0
        ids = [i.strip() for i in args.history.split(",") if i.strip()]
        request = make_request(
            ids,
            args.text or [],
            args.k,
            "cli",
            args.mode,
            args.clusters,
            args.include_seen,
            args.interests,
        )
        show(client.recommend(request), f"history {','.join(ids) or '-'}:")
    return 0


def _list_clusters(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from irec.client import RecommenderClient, format_clusters

    if args.top_items < 0:
        print(f"irec clusters: --top-items {args.top_items}: must be ≥ 0", file=sys.stderr)
        return EXIT_USAGE
    if args.bundle is not None:
        response = _clusters_of_bundle(args.bundle, args.top_items)
    else:
        with RecommenderClient(args.target, args.timeout, args.tls_ca, token=args.token) as client:
            response = client.clusters(args.top_items)
    print(json.dumps(MessageToDict(response), indent=1) if args.json else format_clusters(response))
    return 0


def _clusters_of_bundle(path: Path, top_items: int) -> Any:
    """ListClusters' answer for a bundle folder, computed here by the same code."""
    from server.bundle.loader import load_bundle
    from server.core.engine import RecommenderEngine
    from server.grpc.recsys_v1 import list_clusters_response

    return list_clusters_response(RecommenderEngine(load_bundle(path, device="cpu")), top_items)


def _bench(args: argparse.Namespace) -> int:
    from irec.loadgen import LoadSpec, LoadSpecError, format_table, item_ids_from_bundle, sweep

    try:
        levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError as exc:
        raise LoadSpecError(f"--concurrency: not a comma list of integers ({exc})") from exc
    spec = LoadSpec(
        target=args.target,
        rpc=args.rpc,
        concurrency=levels[0] if levels else 0,
        duration_s=None if args.requests else args.duration,
        requests=args.requests,
        warmup_s=args.warmup,
        history_length=args.history_length,
        k=args.k,
        texts_per_request=args.texts,
        window=args.window,
        processes=args.processes,
        seed=args.seed,
        timeout_s=args.timeout,
        item_ids=item_ids_from_bundle(args.bundle) if args.bundle else (),
        tls_ca=args.tls_ca,
        token=args.token,
    )
    results = sweep(spec, levels)  # each level is checked before it runs
    if args.json:
        for result in results:
            print(json.dumps(result.row()))
    else:
        print(format_table(results))
    return 0 if all(not r.errors for r in results) else 2


def _score(args: argparse.Namespace) -> int:
    from server.logs import configure

    configure(args.log_level)
    try:
        from irec.batch_inference import ScoreOptions, score, summary_dict

        summary = score(
            ScoreOptions(
                bundle=args.bundle,
                input=args.input,
                output=args.output,
                backend=args.backend,
                batch_size=args.batch_size,
                k=args.k,
                num_clusters=args.clusters,
                device=args.device,
                threads=args.threads,
                workers=args.workers,
                address=args.address,
                progress=not args.quiet,
            )
        )
    except ModuleNotFoundError as exc:
        if exc.name not in ("pyarrow", "ray"):
            raise
        print(
            f"irec score: needs {exc.name} (missing module): pip install 'irec[cpu,ray]'",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(summary_dict(summary)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from irec.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            workdir=args.workdir,
            model=args.model,
            epochs=args.epochs,
            minutes=args.minutes,
            users=args.users,
            seed=args.seed,
        )
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "train": _train,
    "eval": _eval,
    "export": _export,
    "serve": _serve,
    "query": _query,
    "clusters": _list_clusters,
    "bench": _bench,
    "demo": _demo,
    "score": _score,
}


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that get a one-line message instead of a traceback."""
    import grpc

    from irec.client import StreamFileError
    from irec.loadgen import LoadSpecError
    from server.bundle.manifest import ManifestError
    from server.errors import IrecError

    errors: list[type[BaseException]] = [
        IrecError,
        ManifestError,
        StreamFileError,
        LoadSpecError,
        grpc.RpcError,
    ]
    if "training.data" in sys.modules or "export.bundle_writer" in sys.modules:
        from export.bundle_writer import ExportError
        from export.parity import ParityError
        from training.data import DataError
        from training.run import TrainConfigError
        from training.torch_encoder import ModelError

        errors += [DataError, ModelError, TrainConfigError, ExportError, ParityError]
    return tuple(errors)


# Commands whose progress is logged (training, export, the demo): our packages at INFO.
LOGGED_COMMANDS = ("train", "eval", "export", "demo")
PACKAGES = ("irec", "training", "export", "server")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one command; known errors print one line and exit non-zero."""
    args = build_parser().parse_args(argv)
    if args.command in LOGGED_COMMANDS:
        from server.logs import configure

        configure(packages=PACKAGES)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if args.command not in ("train", "eval", "export", "demo"):
            raise
        print(
            f"irec {args.command}: needs the training extra (missing module {exc.name!r}): "
            "pip install 'irec[cpu,train]'",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        if not isinstance(exc, _known_errors()):
            raise
        import grpc

        if isinstance(exc, grpc.RpcError):
            print(f"irec {args.command}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        print(f"irec {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
