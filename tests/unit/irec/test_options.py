"""`irec serve` options are made from ServerConfig: same defaults, env twins, no copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from irec.cli import build_parser
from irec.options import from_args
from server.config import ServerConfig


def test_serve_options_round_trip_to_the_config_defaults() -> None:
    args = build_parser().parse_args(["serve", "--bundle", "b"])
    assert from_args(ServerConfig, args) == ServerConfig(bundle=Path("b"))


def test_serve_flags_and_env_twins_set_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IREC_SERVE_BUNDLE", "/bundles/current")
    monkeypatch.setenv("IREC_SERVE_MAX_BATCH", "64")
    monkeypatch.setenv("IREC_SERVE_MAX_CONNECTION_AGE", "300")
    argv = ["serve", "--threads", "2", "--grace", "20", "--trace", "otlp", "--metrics-port", "0"]
    config = from_args(ServerConfig, build_parser().parse_args(argv))
    assert config == dataclasses.replace(
        ServerConfig(bundle=Path("/bundles/current")),
        max_batch=64,
        max_connection_age_s=300.0,
        intra_op_threads=2,
        grace_s=20.0,
        trace="otlp",
        metrics_port=0,
    )


def test_eval_validation_users_reach_the_validation_slice(tmp_path: Path) -> None:
    from irec.cli import train_config
    from irec.quality import QualityRun

    args = build_parser().parse_args(["eval", "--validation-users", "6040"])
    assert train_config(args, tmp_path).validation_users == 6040
    everyone = QualityRun._sample_users(50, 0, 6040)  # more asked than there are: all of them
    assert sorted(everyone) == list(range(50))
    some = QualityRun._sample_users(50, 0, 10)
    assert len(set(some)) == 10 and some == QualityRun._sample_users(50, 0, 10)


def test_id_dropout_options_set_the_head_and_unset_ones_keep_its_defaults(tmp_path: Path) -> None:
    from irec.cli import train_config
    from training.sequence_head import HeadConfig

    args = build_parser().parse_args(["eval", "--item-id-dropout", "0.3", "--id-dropout", "0.1"])
    head = train_config(args, tmp_path).head
    assert (head.item_id_dropout, head.id_dropout) == (0.3, 0.1)
    assert head.text_only_histories == HeadConfig().text_only_histories
    default = train_config(build_parser().parse_args(["eval"]), tmp_path).head
    assert default == HeadConfig(epochs=default.epochs)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "demo", "--out", "r", "--id-dropout", "1"])


def test_id_dropout_help_names_the_heads_defaults() -> None:
    from irec.cli import ID_DROPOUT_OPTIONS
    from training.sequence_head import HeadConfig

    for field, help_text in ID_DROPOUT_OPTIONS.items():
        assert help_text.endswith(f"({getattr(HeadConfig(), field)})"), field
