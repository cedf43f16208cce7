"""`irec eval` on the real SASRec MovieLens-1M file, briefly: the protocol's numbers are sane."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-1m-sasrec"


@pytest.mark.skipif(not (DATA / "ml-1m.txt.gz").exists(), reason="shared MovieLens data not here")
def test_eval_on_movielens_1m_sample(tmp_path):
    from irec.quality import EvalConfig, run_eval
    from training.run import EncoderConfig, TrainConfig
    from training.sequence_head import HeadConfig

    train = TrainConfig(
        data=f"movielens-1m-sasrec:{DATA}",
        out=tmp_path / "report" / "run",
        users=1000,
        encoder=EncoderConfig(treatment="frozen"),
        head=HeadConfig(epochs=6, eval_every=2),
        minutes=10,
        progress=False,
    )
    report = run_eval(
        EvalConfig(train=train, out=tmp_path / "report", cold_minutes=10, text_history_users=50)
    )
    assert report["data"] == {
        "spec": f"movielens-1m-sasrec:{DATA}",
        "users": 1000,
        "items": 3416,
        "interactions": report["data"]["interactions"],
    }
    models = report["models"]
    # Sequence-aware ItemKNN beats popularity on this split (REFERENCE.md §3).
    assert (
        models["ItemKNN (recency 0.6)"]["ndcg@10"]["mean"] > models["popularity"]["ndcg@10"]["mean"]
    )
    assert abs(report["served"]["relative_ndcg@10_loss"]) <= 0.05
    assert report["served"]["parity"]["int8"]["cosine_mean"] >= 0.98
