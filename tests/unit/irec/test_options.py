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
