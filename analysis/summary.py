"""The headline table of a study: each cell's best tuned configuration, scored over all repetitions.

A cell's score is the mean over repetitions (folds x seeds) of the final-epoch validation
metric of its best *finished* trial, chosen by the study's primary metric; trials stopped
early or failed never stand for a cell. The spread is the standard deviation over repetitions.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.result_parts import results_table, trial_states_table
from modaltune.sweeps.spec import StudySpec
from modaltune.sweeps.trial_rows import best_trials


def load_study(study_dir: str | Path) -> tuple[StudySpec, pd.DataFrame, pd.DataFrame]:
    """The study's spec (as run), epoch results and trial table."""
    layout = StudyLayout(study_dir)
    spec = StudySpec.model_validate(yaml.safe_load(layout.spec.read_text(encoding="utf-8")))
    results = results_table(layout.results).read()  # results.parquet and any parts written since
    trials = trial_states_table(layout.trials).read()
    return spec, results, trials


def load_confirmation(study_dir: str | Path) -> tuple[StudySpec, pd.DataFrame, pd.DataFrame] | None:
    """The confirm stage's spec, results and trials (sweeps/confirm.py); None until it has results."""
    folder = StudyLayout(study_dir).confirmation
    if not trial_states_table(StudyLayout(folder).trials).exists():
        return None
    loaded = load_study(folder)
    return loaded if len(loaded[1]) else None


def final_epochs(results: pd.DataFrame) -> pd.DataFrame:
    """The last epoch of every trial x repetition: the value a repetition is scored by."""
    ordered = results.sort_values("epoch")
    return ordered.groupby(["trial_id", "fold", "seed"], as_index=False).tail(1)


def cell_summary(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: levels, trial counts, best trial and mean/std of each metric over repetitions."""
    factors = list(spec.factors)
    searched = [m.name for m in spec.search.metrics]
    metrics = searched + [m for m in ("c_index", "balanced_accuracy") if m not in searched]
    finals = final_epochs(results) if len(results) else results
    best_of = best_trials(spec, trials)
    rows = []
    for cell, group in trials.groupby("cell", sort=True):
        row: dict[str, object] = {"cell": cell, **{f: group[f].iloc[0] for f in factors}}
        states = group["state"].value_counts()
        row |= {
            "trials": len(group),
            "finished": int(states.get("finished", 0)),
            "stopped": int(states.get("stopped_early", 0)),
            "errors": int(states.get("error", 0)),
        }
        best = best_of.get(cell)
        row["best_trial"] = best
        scored = finals[finals["trial_id"] == best] if best is not None else finals.iloc[0:0]
        row["repetitions"] = len(scored)
        for metric in metrics:
            values = scored.get(f"val_{metric}", pd.Series(dtype=float)).astype(float)
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def format_summary(summary: pd.DataFrame, spec: StudySpec) -> str:
    """A plain-text table: levels, then ``mean ± std`` per metric, best first by the primary metric."""
    primary = spec.search.primary.name
    metrics = [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    table = summary[["cell", *spec.factors, "finished", "stopped", "errors"]].copy()
    for metric in metrics:
        table[metric] = [
            "n/a" if math.isnan(m) else (f"{m:.3f}" if math.isnan(s) else f"{m:.3f} ± {s:.3f}")
            for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"], strict=True)
        ]
    order = summary[f"{primary}_mean"].fillna(-math.inf if spec.search.primary.direction == "max" else math.inf)
    table = table.loc[order.sort_values(ascending=spec.search.primary.direction == "min").index]
    return table.to_string(index=False)
