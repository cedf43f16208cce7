"""benchmarks.server_variants: options parsed per variant, medians and ratios to the first."""

from __future__ import annotations

import pytest

from benchmarks.server_variants import LOADS, _named, format_table, main


def _figures(rps_by_variant: dict[str, list[float]]) -> dict[str, dict[str, dict[str, list]]]:
    return {
        name: {load: {"rps": rps, "p50_ms": [1.0, 3.0, 2.0]} for load in LOADS}
        for name, rps in rps_by_variant.items()
    }


def test_the_table_gives_medians_and_ratios_to_the_first_variant():
    table = format_table(_figures({"pool": [100.0, 300.0, 200.0], "loop": [250.0, 90.0, 300.0]}))
    pool, loop = table.splitlines()[2:]
    assert pool.count("200 (1.00), 2.00") == len(LOADS)
    assert loop.count("250 (1.25), 2.00") == len(LOADS)


def test_variants_and_their_environment_must_be_named(tmp_path):
    assert _named(["loop=--lone-requests loop"], "--variant") == [("loop", "--lone-requests loop")]
    with pytest.raises(SystemExit, match="--variant 'loop': expected NAME="):
        _named(["loop"], "--variant")
    with pytest.raises(SystemExit, match="no --variant named 'poll'"):
        main(["--bundle", str(tmp_path), "--variant", "a=", "--env", "poll=X=1"])
