"""The protocol's own types: `irec eval`'s config and the leave-one-out split.

Shared by irec.quality (the stages) and the tracks that have modules of their own
(irec.cold_track, irec.text_history_track).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from server.config import option
from training.run import TrainConfig, TrainConfigError

TRACKS = ("warm", "text_history", "cold")
# The papers' file (MovieLens-1M as SASRec's authors preprocessed it), where the data lives
# on the machines of this project.
EVAL_DATA = "movielens-1m-sasrec:../shared/data/ml-1m-sasrec"


@dataclass(frozen=True)
class EvalConfig:
    """`irec eval`: the model's TrainConfig (the same one `irec train` takes) + the protocol."""

    train: TrainConfig
    # Field metadata makes a field an option of `irec eval` (irec.options).
    out: Path = field(default=Path("reports/latest"), metadata=option("report folder"))
    seeds: tuple[int, ...] = field(
        default=(0,), metadata=option("comma-separated seeds of the warm track")
    )
    cold_minutes: float = field(default=12.0, metadata=option("training budget of the cold track"))
    cold_fraction: float = field(default=0.15, metadata=option("share of items held out as cold"))
    text_history_users: int | None = field(  # None: every test user
        default=None, metadata=option("users of the text-history track (0 = all)")
    )
    id_only_baseline: bool = field(
        default=True,
        metadata=option(
            "train the ID-only SASRec beside irec for every seed (the same code with the "
            "text part off, the same budget)"
        ),
    )
    tracks: tuple[str, ...] = field(  # text_history needs warm (its model and bundle)
        default=TRACKS,
        metadata=option("comma-separated tracks to run: warm, text_history (needs warm), cold"),
    )

    def __post_init__(self) -> None:
        unknown = set(self.tracks) - set(TRACKS)
        if unknown or ("text_history" in self.tracks and "warm" not in self.tracks):
            raise TrainConfigError(
                f"--tracks {','.join(self.tracks)}: choose from {','.join(TRACKS)} "
                "(text_history needs warm)"
            )

    @property
    def seed(self) -> int:
        """The first seed: the model that is clustered, exported and served."""
        return self.seeds[0]


@dataclass
class Split:
    """Leave-one-out split over item rows."""

    train: list[list[int]]
    val_targets: list[int]
    test_histories: list[list[int]]
    test_targets: list[int]


def make_split(sequences: list[list[int]]) -> Split:
    """Train = all but the last two items; validation = second to last; test = last."""
    return Split(
        train=[s[:-2] for s in sequences],
        val_targets=[s[-2] for s in sequences],
        test_histories=[s[:-1] for s in sequences],
        test_targets=[s[-1] for s in sequences],
    )
