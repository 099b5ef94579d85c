"""What a study cost: trials run, stopped early and failed, and CPU/GPU-hours per cell.

Hours are reserved resources x wall time (what a cluster bills): each trial's Tune wall time
(``time_total_s``) times its Train workers' CPUs and GPUs (``num_workers x cpus_per_worker``).
"""

from __future__ import annotations

import pandas as pd

from sweeps.spec import StudySpec


def cost_table(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and a ``total`` row: trial counts by state, wall hours, CPU- and GPU-hours."""
    frame = trials.copy()
    wall_h = frame["time_total_s"].fillna(0.0) / 3600.0
    workers = _per_trial(results, frame, "num_workers", spec.resources.num_workers)
    cpus = _per_trial(results, frame, "cpus_per_worker", spec.resources.cpus_per_worker)
    gpus = spec.resources.gpus_per_worker if spec.resources.use_gpu else 0.0
    frame = frame.assign(wall_hours=wall_h, cpu_hours=wall_h * workers * cpus, gpu_hours=wall_h * workers * gpus)
    for state in ("finished", "stopped_early", "error", "interrupted"):
        frame[state] = frame["state"] == state
    columns = ["finished", "stopped_early", "error", "interrupted", "wall_hours", "cpu_hours", "gpu_hours"]
    table = frame.groupby("cell", sort=True).agg(trials=("trial_id", "count"), **{c: (c, "sum") for c in columns})
    levels = frame.groupby("cell", sort=True)[list(spec.factors)].first()
    table = levels.join(table).reset_index()
    total = table[["trials", *columns]].sum().to_frame().T.assign(cell="total", **{f: "" for f in spec.factors})
    return pd.concat([table, total], ignore_index=True).astype({c: int for c in ["trials", "finished", "stopped_early", "error", "interrupted"]})


def _per_trial(results: pd.DataFrame, trials: pd.DataFrame, column: str, default: float) -> pd.Series:
    """A resource each trial ran with, as recorded in its result rows; the spec's where none are."""
    if column not in results.columns:
        return pd.Series(default, index=trials.index)
    return trials["trial_id"].map(results.groupby("trial_id")[column].first()).fillna(default)
