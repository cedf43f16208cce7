"""`irec bench` drives a real server and reports what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irec.cli import main
from irec.loadgen import (
    RPCS,
    LoadSpec,
    LoadSpecError,
    build_requests,
    format_table,
    item_ids_from_bundle,
    run_load,
)
from tests.conftest import LiveServer


@pytest.mark.parametrize("rpc", RPCS)
def test_each_rpc_is_driven_and_timed(live_server: LiveServer, bundle_dir: Path, rpc: str) -> None:
    spec = LoadSpec(
        target=live_server.target,
        rpc=rpc,
        concurrency=2,
        duration_s=None,
        requests=60,
        warmup_s=0.2,
        item_ids=item_ids_from_bundle(bundle_dir),
        window=4,
    )
    result = run_load(spec)
    assert result.ok == 60 and not result.errors
    assert 0 < result.percentile(50) <= result.percentile(90) <= result.percentile(99)
    assert result.rps > 0
    assert f"| {rpc} | 2 |" in format_table([result])


def test_errors_are_counted_by_status(live_server: LiveServer) -> None:
    # k above the server's --max-k: every answer is INVALID_ARGUMENT, counted, not raised.
    spec = LoadSpec(target=live_server.target, k=10**6, duration_s=None, requests=10, warmup_s=0.0)
    result = run_load(spec)
    assert result.ok == 0
    assert result.errors == {"INVALID_ARGUMENT": 10}


def test_requests_come_from_the_bundle_items(bundle_dir: Path) -> None:
    ids = item_ids_from_bundle(bundle_dir)
    pool = build_requests(LoadSpec(target="x", item_ids=ids, history_length=5), count=8)
    assert all(len(r.history_item_ids) == 5 for r in pool)
    assert {i for r in pool for i in r.history_item_ids} <= set(ids)
    # Same seed, same pool: runs are comparable.
    assert pool == build_requests(LoadSpec(target="x", item_ids=ids, history_length=5), count=8)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "--concurrency"),
        ({"rpc": "nope"}, "--rpc"),
        ({"processes": 3, "concurrency": 2}, "--processes"),
        ({"duration_s": 0.0}, "--duration"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, object], field: str) -> None:
    with pytest.raises(LoadSpecError, match=f"^{field}"):
        LoadSpec(target="x", **options).check()  # type: ignore[arg-type]


def test_cli_prints_one_json_row_per_level(
    live_server: LiveServer, bundle_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--target", live_server.target, "-c", "1,3", "--requests", "20"]
    assert main([*argv, "--warmup", "0", "--bundle", str(bundle_dir), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["concurrency"], r["ok"]) for r in rows] == [(1, 20), (3, 20)]
    assert main(["bench", "--target", live_server.target, "-c", "x"]) == 1
    assert "--concurrency" in capsys.readouterr().err
