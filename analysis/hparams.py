"""TensorBoard's HParams view of a study: one run per trial with its levels, tuned parameters
and final metrics (mean over repetitions), under ``STUDY/tensorboard/hparams``.

``tensorboard --logdir STUDY`` shows it next to every repetition's own curves (``trials/``).
It is derived data, so it is rewritten from the results on every analysis.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
from torch.utils.tensorboard import SummaryWriter

from modaltune.analysis.summary import final_epochs
from modaltune.metrics import METRICS
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec


def write_hparams(study_dir: Path, spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> Path:
    """Write the HParams runs; returns their folder."""
    directory = StudyLayout(study_dir).tensorboard / "hparams"
    shutil.rmtree(directory, ignore_errors=True)
    finals = final_epochs(results) if len(results) else results
    scored = [f"val_{m}" for m in METRICS.names() if f"val_{m}" in finals.columns]
    means = finals.groupby("trial_id")[scored].mean() if len(finals) else pd.DataFrame()
    parameters = [*spec.factors, *[p for p in spec.search.params if p in trials.columns]]
    with SummaryWriter(log_dir=str(directory)) as writer:
        for row in trials.to_dict("records"):
            hparams = {name: _scalar(row[name]) for name in parameters} | {"cell": row["cell"], "state": row["state"]}
            trial_means = means.loc[row["trial_id"]].items() if row["trial_id"] in means.index else []
            metrics = {f"hparam/{name.removeprefix('val_')}": float(value) for name, value in trial_means}
            metrics = {k: v for k, v in metrics.items() if not math.isnan(v)}
            writer.add_hparams(hparams, metrics or {"hparam/c_index": math.nan}, run_name=str(row["trial_id"]))
    return directory


def _scalar(value: object) -> object:
    """HParams takes bool, str, int or float."""
    return value if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and math.isnan(value)) else str(value)
