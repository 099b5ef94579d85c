"""Per-case predictions of one trial at the epoch it is scored by, for every repetition.

The sweep writes, per trial x repetition, ``epoch_NNN.parquet`` (validation cases, every
evaluated epoch) and, at the final epoch, ``epoch_NNN_train.parquet`` (the fold's training
cases: risk cutoffs and censoring distributions come from them) and, with a held-out test fold,
``epoch_NNN_test.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from modaltune.sweeps.layout import StudyLayout

SPLITS = ("val", "train", "test")


@dataclass(frozen=True)
class RepetitionPredictions:
    """One repetition (fold x seed) of a trial: its final epoch's cases per split."""

    fold: int
    seed: int
    epoch: int
    val: pd.DataFrame
    train: pd.DataFrame | None
    test: pd.DataFrame | None


def prediction_file(directory: Path, epoch: int, split: str) -> Path:
    suffix = "" if split == "val" else f"_{split}"
    return directory / f"epoch_{epoch:03d}{suffix}.parquet"


def trial_predictions(study_dir: str | Path, trial_id: str, finals: pd.DataFrame) -> list[RepetitionPredictions]:
    """The trial's repetitions at their final epochs (``finals``: its rows of ``final_epochs``).

    A repetition whose validation file is missing raises, naming the file; train and test files
    are None when the run did not write them (a test fold not configured, an older study).
    """
    layout = StudyLayout(study_dir)
    repetitions = []
    for row in finals.sort_values(["seed", "fold"]).itertuples():
        directory = layout.predictions / trial_id / f"fold{row.fold}_seed{row.seed}"
        val_file = prediction_file(directory, int(row.epoch), "val")
        if not val_file.exists():
            raise FileNotFoundError(f"{val_file}: predictions of trial {trial_id} at its final epoch are missing")
        optional = {split: prediction_file(directory, int(row.epoch), split) for split in ("train", "test")}
        repetitions.append(
            RepetitionPredictions(
                fold=int(row.fold), seed=int(row.seed), epoch=int(row.epoch), val=pd.read_parquet(val_file),
                **{split: pd.read_parquet(path) if path.exists() else None for split, path in optional.items()},
            )
        )
    return repetitions
