"""Where a study keeps its files (``StudyLayout``), next to ``CohortLayout``
(``modaltune/data/layout.py``) and a run's ``RunLayout`` (``modaltune/train/layout.py``).

A study folder, ``STORAGE/NAME``::

    study.yaml           the spec as run, with absolute paths (never rewritten by a resume)
    identity.json        what the trials compute: fingerprint, cohort files, harmless changes (sweeps/identity.py)
    driver.lock, driver.json   the driver holding the study: record lock and lease (sweeps/lock.py)
    results.parquet      one row per trial x repetition x epoch (sweeps/results.py)
    trials.parquet       one row per trial
    trials/<trial_id>/   each trial's runs (checkpoints, metrics, TensorBoard)
    predictions/         per-case predictions of every run and epoch
    optuna.journal       the per-cell Optuna studies
    progress.json, interrupted.json, label_banks/, report/, best/, confirm/, tensorboard/
    tune-state.last-good     a copy of Ray Tune's last readable saved state (sweeps/tune_state.py)
    set-aside/           damaged files and orphaned trials a resume moved out of the way, never deleted
"""

from __future__ import annotations

import os
from pathlib import Path


class StudyLayout:
    """Where a study keeps its files, under ``STORAGE/NAME``; shared by the sweep and the analysis."""

    def __init__(self, study_dir: str | os.PathLike[str]) -> None:
        self.root = Path(study_dir)

    @property
    def spec(self) -> Path:
        return self.root / "study.yaml"  # the spec as run, with absolute paths

    @property
    def identity(self) -> Path:
        return self.root / "identity.json"  # what the trials compute (sweeps/identity.py)

    @property
    def driver_lock(self) -> Path:
        return self.root / "driver.lock"  # the record lock of the driver holding the study (sweeps/lock.py)

    @property
    def driver_lease(self) -> Path:
        return self.root / "driver.json"  # who holds it: host, pid, since, heartbeat (sweeps/lock.py)

    @property
    def tune_state_copy(self) -> Path:
        return self.root / "tune-state.last-good"  # Ray Tune's last readable saved state (sweeps/tune_state.py)

    @property
    def set_aside(self) -> Path:
        return self.root / "set-aside"  # damaged files and orphaned trials moved out of the way

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def trials(self) -> Path:
        return self.root / "trials.parquet"

    @property
    def runs(self) -> Path:
        return self.root / "trials"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def optuna(self) -> Path:
        return self.root / "optuna.journal"  # the per-cell Optuna studies (sweeps/searcher.py), for optuna-dashboard

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"  # state and counts, kept by the driver (sweeps/progress.py)

    @property
    def interrupted(self) -> Path:
        return self.root / "interrupted.json"  # why the driver interrupted the study (sweeps/interrupt.py)

    @property
    def label_banks(self) -> Path:
        return self.root / "label_banks"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def confirmation(self) -> Path:
        return self.root / "confirm"  # the confirm stage: a study folder of its own (sweeps/confirm.py)

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"
