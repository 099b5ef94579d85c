"""Where one training run reads and writes: its folder's files (``RunLayout``, next to
``CohortLayout`` and ``StudyLayout``) and what a worker is handed for a run (``RunInputs``).

Why typed: the run folder is written by the workers, read by a study's driver (results it
backfills, markers it skips) and by tests and operators; one class names each file once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def metrics(self) -> Path:
        """Every epoch's row (``modaltune.train.records.upsert_epoch_rows``)."""
        return self.root / "metrics.parquet"

    @property
    def finished(self) -> Path:
        """Written last: the run is done, with its last scores (a restarted trial skips it)."""
        return self.root / "finished.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def config(self) -> Path:
        return self.root / "train_config.yaml"

    def worker_record(self, rank: int) -> Path:
        """Which process, host and Ray node runs ``rank`` now (``workers/rank<r>.json``)."""
        return self.root / "workers" / f"rank{rank}.json"


@dataclass(frozen=True)
class RunInputs:
    """What a training worker reads and where it writes for one run."""

    cohort: Path
    label_bank: Path
    output: Path  # the run's folder (``RunLayout``)
    predictions: Path | None = None  # per-epoch predictions; default the run folder's (a study keeps them apart)
    tags: dict[str, Any] = field(default_factory=dict)  # written with the predictions and finished.json
    owner: str | None = None  # who started the run (a sweep trial's incarnation), in each worker record
    resume_from: str | None = None  # a checkpoint to start from (``modaltune train --resume-from``)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.output)

    def as_json(self) -> dict[str, Any]:
        """As saved with each checkpoint (``train_config.json``'s ``paths``; export reads the label bank)."""
        return {key: str(value) if isinstance(value, Path) else value for key, value in asdict(self).items()}

    @property
    def predictions_dir(self) -> Path:
        return self.predictions or self.layout.predictions
