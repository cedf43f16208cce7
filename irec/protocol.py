"""The protocol's own types: `irec eval`'s config and the leave-one-out split.

Shared by irec.quality (the stages) and the tracks that have modules of their own
(irec.cold_track, irec.text_history_track).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.run import TrainConfig, TrainConfigError

TRACKS = ("warm", "text_history", "cold")


@dataclass(frozen=True)
class EvalConfig:
    """`irec eval`: the model's TrainConfig (the same one `irec train` takes) + the protocol."""

    train: TrainConfig
    out: Path
    seeds: tuple[int, ...] = (0,)
    cold_minutes: float = 12.0
    cold_fraction: float = 0.15
    text_history_users: int | None = None  # None: every test user
    tracks: tuple[str, ...] = TRACKS  # text_history needs warm (its model and bundle)

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
