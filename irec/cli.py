"""The `irec` console script: train, eval, export, serve, query, clusters, bench, score, demo.

Every option has an environment-variable twin (shown in --help), read when the command's
parser is built, never at import (irec.options). A command's options are made from its
config dataclass, so each default lives in one place: train and eval from
training.run.TrainConfig (and irec.protocol.EvalConfig), export from
export.bundle_writer.ExportOptions, serve from server.config.ServerConfig, score from
irec.batch_inference.ScoreOptions, bench from irec.loadgen.LoadSpec, demo from
irec.demo.DemoConfig; query, clusters and bench share irec.client.ClientOptions. Only the
command that runs builds its parser: `serve`, `query`, `clusters` and `bench` import only
serving code; `train`, `eval`, `export` and `demo` import training code and need the
`train` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irec.options import CommandParser, EnvArgs, MissingModule, default_of, from_args
from server.config import option

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


# The HeadConfig fields that are options (training.sequence_head carries no option metadata);
# --epochs' default is TrainConfig's head's (training.sequence_head.HeadConfig.epochs).
HEAD_OPTIONS = {"epochs": option("most epochs of the sequence head")}
# TrainConfig fields only `irec train` offers (`irec eval` trains locally).
RAY_FIELDS = ("backend", "ray_address", "ray_workers")
DATA_HELP = (
    "demo[:USERS] | demo-titles[:USERS] (no categories) | movielens-1m:DIR | "
    "movielens-1m-sasrec:DIR | movielens-latest:DIR | csv:INTERACTIONS,ITEMS (CSV or Parquet)"
)


def _model_options(a: EnvArgs, ray: bool) -> None:
    """Options of the model that `irec train` and `irec eval` share (one TrainConfig)."""
    from training.finetune import FinetuneConfig
    from training.run import EncoderConfig, TrainConfig
    from training.sequence_head import HeadConfig

    a.add_fields(
        TrainConfig,
        parsers={"minutes": _positive, "clusters": _clusters},
        exclude=() if ray else RAY_FIELDS,
    )
    a.add_fields(EncoderConfig, dest_prefix="encoder.")
    a.add_fields(
        HeadConfig,
        dest_prefix="head.",
        defaults=default_of(TrainConfig, "head"),
        metadata=HEAD_OPTIONS,
    )
    # Unset: the head's own default (named in the help).
    for field, help_text in ID_DROPOUT_OPTIONS.items():
        a.add(f"--{field.replace('_', '-')}", type=_share, default=None, help=help_text)
    # The contrastive stage (--encoder contrastive).
    a.add_fields(FinetuneConfig, dest_prefix="contrastive.")
    a.add("--quiet", action="store_true", help="no progress bars")


def train_config(args: argparse.Namespace, out: Path) -> Any:
    """The TrainConfig of parsed `train` / `eval` options."""
    from training.finetune import FinetuneConfig
    from training.run import EncoderConfig, TrainConfig
    from training.sequence_head import HeadConfig

    contrastive = from_args(FinetuneConfig, args, "contrastive.", seed=args.seed)
    dropouts = {f: getattr(args, f) for f in ID_DROPOUT_OPTIONS if getattr(args, f) is not None}
    return from_args(
        TrainConfig,
        args,
        out=out,
        encoder=from_args(EncoderConfig, args, "encoder.", contrastive=contrastive),
        head=from_args(HeadConfig, args, "head.", **dropouts),
        progress=not args.quiet,
    )


def eval_config(args: argparse.Namespace) -> Any:
    """The EvalConfig of parsed `eval` options."""
    from irec.protocol import EvalConfig

    return from_args(
        EvalConfig,
        args,
        train=train_config(args, args.out / "run"),
        text_history_users=args.text_history_users or None,
    )


def _train_options(p: argparse.ArgumentParser) -> None:
    a = EnvArgs(p, "TRAIN")
    a.add("--data", required=True, help=DATA_HELP)
    a.add("--out", required=True, type=Path, help="run folder to write, e.g. runs/NAME")
    _model_options(a, ray=True)


def _eval_options(p: argparse.ArgumentParser) -> None:
    from irec.protocol import EVAL_DATA, EvalConfig

    a = EnvArgs(p, "EVAL")
    a.add(
        "--data",
        default=EVAL_DATA,
        help="data SPEC (see train); movielens-1m-sasrec:DIR[,MOVIES] is the papers' file",
    )
    _model_options(a, ray=False)
    a.add_fields(EvalConfig, parsers={"seeds": _seeds, "tracks": _tracks})


def _export_options(p: argparse.ArgumentParser) -> None:
    from export.bundle_writer import ExportOptions

    a = EnvArgs(p, "EXPORT")
    a.add("--run", type=Path, help="run folder written by `irec train`")
    a.add("--out", type=Path, help="bundle folder to write (replaced only if the new one verifies)")
    a.add("--verify", type=Path, help="verify an existing bundle folder instead of exporting")
    a.add_fields(ExportOptions)
    a.add("--no-fp16", action="store_true", help="skip the fp16 (GPU) encoder")


def _serve_options(p: argparse.ArgumentParser) -> None:
    from server.config import ServerConfig

    a = EnvArgs(p, "SERVE")
    a.add_fields(ServerConfig)
    _log_options(a)
    a.add("--log-format", choices=["text", "json"], default="text", help="log line format")


def _query_options(p: argparse.ArgumentParser) -> None:
    from irec.client import ClientOptions

    a = EnvArgs(p, "QUERY")
    a.add_fields(ClientOptions)
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


def _clusters_options(p: argparse.ArgumentParser) -> None:
    from irec.client import MUTUAL_TLS, ClientOptions

    a = EnvArgs(p, "CLUSTERS")
    a.add("--bundle", type=Path, help="read a bundle folder instead of asking a server")
    a.add_fields(ClientOptions, exclude=MUTUAL_TLS)
    a.add("--top-items", type=int, default=5, help="top items per cluster (0 = all kept)")
    a.add("--json", action="store_true", help="print the answer as JSON")


def _bench_options(p: argparse.ArgumentParser) -> None:
    from irec.client import MUTUAL_TLS, ClientOptions
    from irec.loadgen import LoadSpec

    a = EnvArgs(p, "BENCH")
    a.add_fields(ClientOptions, exclude=MUTUAL_TLS)
    a.add(
        "-c",
        "--concurrency",
        default=str(default_of(LoadSpec, "concurrency")),
        help="concurrent callers (streams for *-stream); a comma list runs one row each",
    )
    a.add_fields(LoadSpec)
    a.add("--bundle", type=Path, help="bundle folder whose item IDs make the histories")
    a.add("--json", action="store_true", help="print one JSON object per row")


def _score_options(p: argparse.ArgumentParser) -> None:
    from irec.batch_inference import ScoreOptions

    a = EnvArgs(p, "SCORE")
    a.add_fields(ScoreOptions)
    a.add("--quiet", action="store_true", help="no progress bar")
    _log_options(a)


def _demo_options(p: argparse.ArgumentParser) -> None:
    from irec.demo import DemoConfig

    a = EnvArgs(p, "DEMO")
    a.add_fields(DemoConfig, parsers={"minutes": _positive})


def _log_options(a: EnvArgs) -> None:
    a.add("--log-level", default="INFO", help="logging level")


def build_parser() -> argparse.ArgumentParser:
    """The `irec` argument parser: one subcommand per command, each option with its env twin.

    A command's options are added when its parser is first used (irec.options.CommandParser).
    """
    parser = argparse.ArgumentParser(
        prog="irec",
        description="Learn interest clusters, export a bundle, serve it over gRPC.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )
    for name, command in COMMANDS.items():
        sub.add_parser(
            name, help=command.help, description=command.description, options=command.options
        )
    return parser


def _train(args: argparse.Namespace) -> int:
    from training.run import train

    train(train_config(args, args.out))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from irec.quality import run_eval

    run_eval(eval_config(args))
    return 0


def export_options(args: argparse.Namespace) -> Any:
    """The ExportOptions of parsed `export` options."""
    from export.bundle_writer import ExportOptions

    return from_args(ExportOptions, args, fp16=not args.no_fp16)


def _export(args: argparse.Namespace) -> int:
    from export.bundle_writer import export_run, verify_bundle

    if args.verify is not None:
        print(verify_bundle(args.verify))
        return 0
    if args.run is None or args.out is None:
        print("irec export: give --run RUN --out BUNDLE, or --verify BUNDLE", file=sys.stderr)
        return EXIT_USAGE
    manifest = export_run(args.run, args.out, export_options(args))
    print(f"wrote bundle {manifest.bundle_version} to {args.out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from server.config import ServerConfig
    from server.grpc.app import serve
    from server.logs import configure

    configure(args.log_level, args.log_format)
    asyncio.run(serve(from_args(ServerConfig, args)))
    return 0


def _query(args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    from irec.client import (
        ClientOptions,
        RecommenderClient,
        format_response,
        make_request,
        read_stream_file,
    )

    def show(response: Any, label: str) -> None:
        if args.json:
            print(json.dumps(MessageToDict(response)))
        else:
            print(label)
            print(format_response(response))

    with RecommenderClient.of(from_args(ClientOptions, args)) as client:
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

    from irec.client import ClientOptions, RecommenderClient, format_clusters

    if args.top_items < 0:
        print(f"irec clusters: --top-items {args.top_items}: must be ≥ 0", file=sys.stderr)
        return EXIT_USAGE
    if args.bundle is not None:
        response = _clusters_of_bundle(args.bundle, args.top_items)
    else:
        with RecommenderClient.of(from_args(ClientOptions, args)) as client:
            response = client.clusters(args.top_items)
    print(json.dumps(MessageToDict(response), indent=1) if args.json else format_clusters(response))
    return 0


def _clusters_of_bundle(path: Path, top_items: int) -> Any:
    """ListClusters' answer for a bundle folder, computed here by the same code."""
    from server.bundle.loader import load_bundle
    from server.core.engine import RecommenderEngine
    from server.grpc.recsys_v1 import list_clusters_response

    return list_clusters_response(RecommenderEngine(load_bundle(path, device="cpu")), top_items)


def bench_spec(args: argparse.Namespace) -> tuple[Any, list[int]]:
    """The LoadSpec of parsed `bench` options, and the concurrency of each row."""
    from irec.loadgen import LoadSpec, LoadSpecError, item_ids_from_bundle

    try:
        levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError as exc:
        raise LoadSpecError(f"--concurrency: not a comma list of integers ({exc})") from exc
    spec = from_args(
        LoadSpec,
        args,
        concurrency=levels[0] if levels else 0,
        duration_s=None if args.requests else args.duration_s,
        item_ids=item_ids_from_bundle(args.bundle) if args.bundle else (),
    )
    return spec, levels


def _bench(args: argparse.Namespace) -> int:
    from irec.loadgen import format_table, sweep

    spec, levels = bench_spec(args)
    results = sweep(spec, levels)  # each level is checked before it runs
    if args.json:
        for result in results:
            print(json.dumps(result.row()))
    else:
        print(format_table(results))
    return 0 if all(not r.errors for r in results) else 2


def score_options(args: argparse.Namespace) -> Any:
    """The ScoreOptions of parsed `score` options."""
    from irec.batch_inference import ScoreOptions

    return from_args(ScoreOptions, args, progress=not args.quiet)


def _score(args: argparse.Namespace) -> int:
    from irec.batch_inference import score, summary_dict
    from server.logs import configure

    configure(args.log_level)
    summary = score(score_options(args))
    print(json.dumps(summary_dict(summary)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from irec.demo import DemoConfig, run_demo

    return run_demo(from_args(DemoConfig, args))


@dataclass(frozen=True)
class Command:
    """One `irec` command: its line in `irec --help`, its options and what it runs."""

    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None


COMMANDS = {
    "train": Command(
        "train the model (encoder + sequence head + clusters) → run folder",
        _train_options,
        _train,
        "The one training pipeline: item texts through the encoder (frozen, or fine-tuned "
        "with the sequence head on the next-item objective), the sequence head, user clusters. "
        "The last item of --validation-users users is held out; the trained model is shipped "
        "only if it beats popularity and the pretrained encoder on it, and the fine-tuned "
        "encoder only if it beats the pretrained one (run.json says which and why). Curves go "
        "to TensorBoard event files in RUN/tensorboard.",
    ),
    "eval": Command(
        "the leave-one-out protocol around the same training → report",
        _eval_options,
        _eval,
        "Leave-one-out (last item = test, second to last = validation), all items ranked, "
        "history excluded. Tracks: warm (--seeds), cold items (held out of training, known by "
        "text only), text histories (titles sent as history_texts to a live server).",
    ),
    "export": Command(
        "run folder → verified bundle (ONNX int8/fp16, HNSW, manifest)", _export_options, _export
    ),
    "serve": Command("serve a bundle over gRPC", _serve_options, _serve),
    "query": Command("send Recommend requests to a running server", _query_options, _query),
    "clusters": Command(
        "list the interest clusters: what sets each apart, its size, its top items",
        _clusters_options,
        _list_clusters,
        "From a running server (ListClusters) or, with --bundle, from a bundle folder without "
        "a server.",
    ),
    "bench": Command(
        "load-test a running server: RPS and latency percentiles", _bench_options, _bench
    ),
    "score": Command(
        "batch-score a Parquet table of users with a bundle → Parquet parts",
        _score_options,
        _score,
    ),
    "demo": Command(
        "the whole path on the built-in demo data: train → export → serve → query",
        _demo_options,
        _demo,
    ),
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


def _missing_module(command: str, exc: ModuleNotFoundError) -> bool:
    """Say which extra `command` needs when `exc` is a module of one; False if it is not."""
    if command in ("train", "eval", "export", "demo"):
        print(
            f"irec {command}: needs the training extra (missing module {exc.name!r}): "
            "pip install 'irec[cpu,train]'",
            file=sys.stderr,
        )
        return True
    if command == "score" and exc.name in ("pyarrow", "ray"):
        print(
            f"irec score: needs {exc.name} (missing module): pip install 'irec[cpu,ray]'",
            file=sys.stderr,
        )
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one command; known errors print one line and exit non-zero."""
    try:
        args = build_parser().parse_args(argv)
    except MissingModule as missing:  # the command's options come from an extra
        if _missing_module(missing.command, missing.error):
            return 1
        raise missing.error from None
    if args.command in LOGGED_COMMANDS:
        from server.logs import configure

        configure(packages=PACKAGES)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if _missing_module(args.command, exc):
            return 1
        raise
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
