"""Every command's defaults are its config's: no option given → the config's own defaults.

The options are made from the config dataclasses (irec.options); a default written into
the command line by hand that disagrees with its field fails here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from irec.cli import bench_spec, build_parser, eval_config, export_options, train_config
from irec.options import EnvArgs, from_args
from server.config import option

ROOT = Path(__file__).resolve().parents[3]


def test_train_defaults_are_train_configs(tmp_path: Path) -> None:
    from training.run import TrainConfig

    args = build_parser().parse_args(["train", "--data", "demo", "--out", str(tmp_path)])
    assert train_config(args, tmp_path) == TrainConfig(data="demo", out=tmp_path)


def test_eval_defaults_are_eval_configs() -> None:
    from irec.protocol import EVAL_DATA, EvalConfig
    from training.run import TrainConfig

    config = eval_config(build_parser().parse_args(["eval"]))
    out = EvalConfig.__dataclass_fields__["out"].default
    assert config == EvalConfig(train=TrainConfig(data=EVAL_DATA, out=out / "run"))


def test_export_defaults_are_export_options() -> None:
    from export.bundle_writer import ExportOptions

    args = build_parser().parse_args(["export", "--run", "r", "--out", "b"])
    assert export_options(args) == ExportOptions()


def test_score_defaults_are_score_options() -> None:
    from irec.batch_inference import ScoreOptions
    from irec.cli import score_options

    args = build_parser().parse_args(["score", "--bundle", "b", "--input", "i", "--output", "o"])
    assert score_options(args) == ScoreOptions(Path("b"), Path("i"), Path("o"))


def test_bench_defaults_are_load_spec_and_client_options() -> None:
    from irec.client import ClientOptions
    from irec.loadgen import LoadSpec

    spec, levels = bench_spec(build_parser().parse_args(["bench"]))
    assert spec == LoadSpec(target=ClientOptions().target)
    assert levels == [LoadSpec(target="").concurrency]


def test_client_defaults_are_client_options() -> None:
    from irec.client import ClientOptions

    for command in ("query", "clusters", "bench"):
        args = build_parser().parse_args([command])
        assert from_args(ClientOptions, args) == ClientOptions(), command


def test_query_defaults_are_the_requests() -> None:
    from irec.client import make_request

    args = build_parser().parse_args(["query"])
    asked = make_request(
        k=args.k,
        mode=args.mode,
        num_clusters=args.clusters,
        include_seen_items=args.include_seen,
        num_interests=args.interests,
    )
    assert asked == make_request()


def test_demo_defaults_are_demo_configs() -> None:
    from irec.demo import DemoConfig

    assert from_args(DemoConfig, build_parser().parse_args(["demo"])) == DemoConfig()


def test_a_commands_options_are_made_only_when_it_runs() -> None:
    # `irec serve` must not import the training code `irec train`'s options come from.
    code = (
        "import sys; from irec.cli import build_parser;"
        "build_parser().parse_args(['serve', '--bundle', 'b']);"
        "sys.exit(1 if 'training' in sys.modules or 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@dataclass(frozen=True)
class Switches:
    on: bool = field(default=True, metadata=option("on unless --no-on"))
    off: bool = field(default=False, metadata=option("off unless --off"))


def test_a_switch_on_by_default_can_be_turned_off() -> None:
    parser = argparse.ArgumentParser()
    EnvArgs(parser, "TEST").add_fields(Switches)
    assert from_args(Switches, parser.parse_args([])) == Switches()
    assert from_args(Switches, parser.parse_args(["--no-on", "--off"])) == Switches(False, True)
