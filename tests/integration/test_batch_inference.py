"""`irec score`: batch scoring answers like the server, resumes, and names bad input.

The input is a folder of two Parquet files of seeded users drawn from the tiny bundle's
items, plus rows the engine refuses. Scores are compared with a tolerance because the
int8 encoder quantizes activations per run, and batch scoring groups runs differently
from a server answering one call at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from irec.batch_inference import ScoreOptions, ScoringError, read_scores, score
from irec.client import RecommenderClient, make_request
from irec.loadgen import item_ids_from_bundle
from tests.optional import require_module

ROOT = Path(__file__).resolve().parents[2]
K = 5
CLUSTERS = 3
BATCH = 10
SCORE_TOLERANCE = 0.02
TIE = 1e-3
USERS_PER_FILE = 25


def _rows(item_ids: list[str], rng: np.random.Generator, first: int, count: int) -> list[dict]:
    rows = []
    for user in range(first, first + count):
        history = list(rng.choice(item_ids, size=int(rng.integers(2, 12)), replace=False))
        rows.append({"user_id": f"u{user:03d}", "history_item_ids": history, "history_texts": []})
    return rows


@pytest.fixture(scope="module")
def users_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    items = list(item_ids_from_bundle(bundle_dir))
    rng = np.random.default_rng(0)
    first = _rows(items, rng, 0, USERS_PER_FILE)
    second = _rows(items, rng, USERS_PER_FILE, USERS_PER_FILE - 4)
    second += [
        {"user_id": "ghosts", "history_item_ids": ["ghost-1", "ghost-2"], "history_texts": []},
        {"user_id": "empty", "history_item_ids": [], "history_texts": []},
        {"user_id": "mixed", "history_item_ids": [items[3], "ghost-3"], "history_texts": []},
        {"user_id": "texts", "history_item_ids": [], "history_texts": ["jazz quartet live"]},
    ]
    folder = tmp_path_factory.mktemp("users")
    for name, rows in (("a.parquet", first), ("b.parquet", second)):
        pq.write_table(pa.Table.from_pylist(rows), folder / name)
    return folder


@pytest.fixture(scope="module")
def local_scores(bundle_dir: Path, users_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    options = ScoreOptions(
        bundle=bundle_dir,
        input=users_dir,
        output=tmp_path_factory.mktemp("scores") / "local",
        batch_size=BATCH,
        k=K,
        num_clusters=CLUSTERS,
        device="cpu",
        progress=False,
    )
    summary = score(options)
    return options, summary, _by_user(read_scores(options.output))


def _by_user(table: pa.Table) -> dict[str, dict]:
    return {row["user_id"]: row for row in table.to_pylist()}


def _assert_close(got: dict, want: dict, label: str) -> None:
    """Same clusters and items in the same order, scores within SCORE_TOLERANCE.

    Near-duplicate items (e.g. two titles that render alike) score within TIE of each
    other; a quantization difference of ~1e-5 may swap them, and only them.
    """
    assert got["cluster_ids"] == want["cluster_ids"], label
    for key in ("item_scores", "cluster_scores"):
        np.testing.assert_allclose(got[key], want[key], atol=SCORE_TOLERANCE, err_msg=label)
    assert len(got["item_ids"]) == len(want["item_ids"]), label
    want_score = dict(zip(want["item_ids"], want["item_scores"], strict=True))
    for position, (item, wanted) in enumerate(zip(got["item_ids"], want["item_ids"], strict=True)):
        if item == wanted:
            continue
        score = got["item_scores"][position]
        assert abs(score - want["item_scores"][position]) <= TIE, (label, position)
        # The swapped-in item is tied with its place in the other ranking, or with its cut-off.
        other = want_score.get(item, want["item_scores"][-1])
        assert abs(score - other) <= TIE, (label, position)


def _parts(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime ns) of every finished part file: a rewrite changes both."""
    return {
        str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*.parquet")
        if not p.name.startswith(".")
    }


def test_local_backend_answers_like_the_server(users_dir, local_scores, live_server):
    _, summary, scores = local_scores
    inputs = [
        row
        for name in ("a", "b")
        for row in pq.read_table(users_dir / f"{name}.parquet").to_pylist()
    ]
    assert set(scores) == {row["user_id"] for row in inputs}
    assert summary.rows == len(inputs) and summary.parts_written == 3 + 3
    assert summary.errors == 2
    with RecommenderClient(live_server.target, timeout_s=30) as client:
        for row in inputs:
            got = scores[row["user_id"]]
            request = make_request(
                row["history_item_ids"], row["history_texts"], k=K, num_clusters=CLUSTERS
            )
            try:
                want = client.recommend(request)
            except grpc.RpcError as exc:  # the same refusal, as a row error
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert got["error"] == exc.details()
                assert got["item_ids"] is None
                continue
            assert got["error"] is None
            assert got["bundle_version"] == want.bundle_version
            assert got["unknown_item_ids"] == list(want.unknown_item_ids)
            server = {
                "item_ids": [i.item_id for i in want.items],
                "item_scores": [i.score for i in want.items],
                "cluster_ids": [c.cluster_id for c in want.clusters],
                "cluster_scores": [c.score for c in want.clusters],
            }
            _assert_close(got, server, row["user_id"])
    assert "none of the 2 item IDs" in scores["ghosts"]["error"]
    assert scores["mixed"]["unknown_item_ids"] == ["ghost-3"]
    assert len(scores["texts"]["item_ids"]) == K


def test_cli_rerun_rewrites_only_the_missing_part(local_scores, tmp_path):
    options, _, before = local_scores
    out = tmp_path / "copy"
    # A copy of the finished output, so the module's output stays intact.
    subprocess.run(["cp", "-a", str(options.output), str(out)], check=True)
    parts = _parts(out)
    missing = "part-00001-000001.parquet"
    (out / missing).unlink()
    args = [
        "score",
        "--bundle",
        str(options.bundle),
        "--input",
        str(options.input),
        "--output",
        str(out),
        "--batch-size",
        str(BATCH),
        "--k",
        str(K),
        "--device",
        "cpu",
        "--quiet",
    ]
    result = _irec(*args)
    assert result.returncode == 0, result.stderr
    assert '"parts_written": 1, "parts_skipped": 5, "rows": 10' in result.stdout
    assert "part-00000-000000.parquet exists (finished by an earlier run): skipped" in (
        result.stderr
    )
    after = _parts(out)
    assert set(after) == set(parts)
    changed = {name for name in parts if after[name] != parts[name]}
    assert changed == {missing}
    assert _by_user(read_scores(out)) == before
    # Other settings would mix two runs' parts: refused, naming what changed.
    result = _irec(*[a if a != str(BATCH) else "7" for a in args])
    assert result.returncode == 1
    assert "other settings (batch_size)" in result.stderr


def _irec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "irec.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "IREC_SCORE_CLUSTERS": str(CLUSTERS)},
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (pa.table({"user_id": ["u"]}), r"bad\.parquet: no column 'history_item_ids'"),
        (
            pa.table({"user_id": ["u"], "history_item_ids": [[1, 2]]}),
            r"bad\.parquet: column 'history_item_ids' is list<\w+: int64>, expected list<string>",
        ),
        (
            pa.table({"user_id": [7], "history_item_ids": [["1"]]}),
            r"bad\.parquet: column 'user_id' is int64, expected string",
        ),
        (
            pa.table({"user_id": ["u"], "history_item_ids": [["1"]], "history_texts": ["x"]}),
            r"bad\.parquet: column 'history_texts' is string, expected list<string>",
        ),
    ],
)
def test_bad_input_names_file_and_column(bundle_dir, tmp_path, table, message):
    pq.write_table(table, tmp_path / "bad.parquet")
    options = ScoreOptions(bundle_dir, tmp_path / "bad.parquet", tmp_path / "out", progress=False)
    with pytest.raises(ScoringError, match=message):
        score(options)
    assert not (tmp_path / "out").exists()


def test_cli_bad_input_is_one_clear_line(bundle_dir, tmp_path):
    pq.write_table(pa.table({"user": ["u"]}), tmp_path / "users.parquet")
    result = _irec(
        "score", "--bundle", str(bundle_dir), "--input", str(tmp_path / "users.parquet"),
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "users.parquet: no column 'user_id' (expected string; found user)"
    )
    assert "Traceback" not in result.stderr


# -- Ray: one local Ray for the module ------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    ray = require_module("ray", "the ray extra")
    ray.init(num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.timeout(900)  # Ray start-up, actors and two scoring passes
def test_ray_backend_equals_local_and_resumes(ray_session, local_scores, tmp_path):
    options, _, local = local_scores
    ray_options = replace(options, backend="ray", workers=2, output=tmp_path / "ray")
    summary = score(ray_options)
    assert (summary.parts_written, summary.rows, summary.errors) == (2, len(local), 2)
    scores = _by_user(read_scores(ray_options.output))
    assert set(scores) == set(local)
    for user, row in scores.items():
        assert row["error"] == local[user]["error"], user
        if row["error"] is None:
            _assert_close(row, local[user], user)
    # Restart: the input file whose part folder is missing is scored again, nothing else.
    parts = _parts(ray_options.output)
    for path in (ray_options.output / "part-00001").iterdir():
        path.unlink()
    (ray_options.output / "part-00001").rmdir()
    summary = score(ray_options)
    assert (summary.parts_written, summary.parts_skipped) == (1, 1)
    after = _parts(ray_options.output)
    kept = {name for name in parts if name.startswith("part-00000")}
    assert kept and all(after[name] == parts[name] for name in kept)
    assert {name for name in after if name.startswith("part-00001")}
    assert _by_user(read_scores(ray_options.output)) == scores
