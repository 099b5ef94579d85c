"""Automated model selection: the best configuration by mean validation score over folds x seeds,
then the one-standard-error rule towards the smaller adapter.

Candidates are finished trials that completed every repetition. Each candidate's score is the
mean over validation folds of its final-epoch validation metric (seeds averaged within their
fold, since they share its split), and its standard error the std over folds / sqrt(folds).
The best candidate sets a bar one standard error below its mean (above it for a metric to
minimise); of the candidates that clear the bar, the one with the fewest trainable parameters
(adapters, modality encoders, heads: the saved adapter-only weights) is selected, ties broken
by score. Scores within one SE of the best are noise at this sample size, and the smaller
model is the safer bet (Hastie, Tibshirani & Friedman, ESL 7.10).

Out-of-fold scores of the selected model are optimistic: the same folds chose it. Only a held-out
test fold (``test_fold`` in the study spec) or nested cross-validation gives an unbiased estimate.

A selected model at or below chance (a C-index of 0.5, a balanced accuracy of 1/k over k
subtypes: ``CaseMetric.chance``) is still selected, so that the study's outcome stays what the
rule says, but with a warning that is logged and written into the report: on such folds nothing
was learned that held out, and the usual cause is folds that cannot be scored (too few deaths
or one subtype: ``modaltune validate`` and ``plan`` check them).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from modaltune.analysis.predictions import RepetitionPredictions
from modaltune.analysis.summary import final_epochs
from modaltune.data import Cohort
from modaltune.data.labels import load_labels
from modaltune.data.layout import CohortLayout
from modaltune.errors import InputError
from modaltune.metrics import METRICS, evaluate_predictions
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec
from modaltune.train.checkpoints import ADAPTER_FILE, CONFIG_FILE, STATE_FILE

logger = logging.getLogger(__name__)

OPTIMISM_NOTE = (
    "Out-of-fold scores of the selected model are optimistic: the same folds that score it also chose it. "
    "Only a held-out test fold (`test_fold` in the study spec) or nested cross-validation estimates how it "
    "will do on new patients."
)


@dataclass(frozen=True)
class Selection:
    metric: str
    direction: str
    trial_id: str
    best_trial_id: str
    bar: float
    candidates: pd.DataFrame  # one row per candidate trial: levels, mean, se, n, trainable_params, within_1se, selected
    warnings: tuple[str, ...] = ()  # e.g. the selected model scores at or below chance

    @property
    def row(self) -> pd.Series:
        return self.candidates.set_index("trial_id").loc[self.trial_id]

    @property
    def score_text(self) -> str:
        """The selected trial's score, e.g. ``0.6865 ± 0.0215 (SE, 2 folds)``."""
        row = self.row
        spread = "no SE" if math.isnan(row["se"]) else f"SE, {int(row['n'])} folds"
        return f"{row['mean']:.4f}" + ("" if math.isnan(row["se"]) else f" ± {row['se']:.4f}") + f" ({spread})"


def final_checkpoint(trial_dir: Path, fold: int, seed: int) -> Path:
    """The checkpoint of one repetition's last epoch. Ray Train keeps every epoch's, of every
    repetition of the trial, in ``trial_dir/train``; each says which run it is in its config."""
    checkpoints = [
        p for p in (trial_dir / "train").glob("checkpoint_*")
        if (p / STATE_FILE).exists() and _is_repetition(json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))["train"], fold, seed)
    ]
    if not checkpoints:
        raise FileNotFoundError(f"{trial_dir / 'train'}: no checkpoint of fold {fold}, seed {seed} with {STATE_FILE}")
    return max(checkpoints, key=lambda p: json.loads((p / STATE_FILE).read_text(encoding="utf-8"))["epoch"])


def _is_repetition(train: dict[str, Any], fold: int, seed: int) -> bool:
    return train["fold"] == fold and train["seed"] == seed


def trainable_parameters(study_dir: Path, trial_id: str, fold: int, seed: int) -> int:
    """Number of trained weights of one trial, read from its adapter-only checkpoint."""
    checkpoint = final_checkpoint(StudyLayout(study_dir).runs / trial_id, fold, seed)
    weights = torch.load(checkpoint / ADAPTER_FILE, weights_only=True, map_location="cpu")
    return int(sum(t.numel() for t in weights.values()))


def candidate_scores(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Finished trials that ran every repetition: mean, SE and n of the metric over folds."""
    column = f"val_{metric}"
    if column not in results.columns:
        raise InputError(f"metric {metric!r}: results.parquet has no column {column!r}")
    n_repetitions = len(spec.fold_indices) * len(spec.seeds)
    finished = set(trials.loc[trials["state"] == "finished", "trial_id"])
    finals = final_epochs(results)
    finals = finals[finals["trial_id"].isin(finished)]
    complete = finals.groupby("trial_id")[column].count() == n_repetitions
    by_fold = finals[finals["trial_id"].map(complete)].groupby(["trial_id", "fold"])[column].mean().groupby("trial_id")
    table = pd.DataFrame({"mean": by_fold.mean(), "std": by_fold.std(ddof=1), "n": by_fold.count()}).reset_index()
    table["se"] = table["std"] / table["n"].pow(0.5)
    levels = trials.set_index("trial_id")[["cell", *spec.factors, *[c for c in trials.columns if c in spec.search.params]]]
    return table.join(levels, on="trial_id")


def select_model(
    study_dir: str | Path, spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metric: str | None = None
) -> Selection:
    """Score the study's candidates and apply the one-standard-error rule (see the module docstring)."""
    metric = metric or spec.search.primary.name
    direction = next((m.direction for m in spec.search.metrics if m.name == metric), "min" if metric == "loss" else "max")
    table = candidate_scores(spec, results, trials, metric).dropna(subset=["mean"])
    if table.empty:
        raise InputError(f"{study_dir}: no finished trial has a {metric!r} score on every repetition; nothing to select")
    table["trainable_params"] = [
        trainable_parameters(Path(study_dir), trial, spec.fold_indices[0], spec.seeds[0]) for trial in table["trial_id"]
    ]
    selection = one_standard_error_rule(table, metric, direction, chance_level(spec, metric))
    for warning in selection.warnings:
        logger.warning("%s: %s", study_dir, warning)
    return selection


def chance_level(spec: StudySpec, metric: str) -> float | None:
    """What a model that knows nothing scores on ``metric``, averaged over the study's cancer types
    as the metric is; None for a metric without one (the loss) or when labels.yaml cannot be read."""
    if metric not in METRICS or METRICS[metric].chance is None:
        return None
    chance = METRICS[metric].chance
    try:
        labels = load_labels(CohortLayout(spec.cohort).labels)
    except InputError as exc:
        logger.warning("chance level of %s not known: %s", metric, exc)
        return None
    cancer_types = [name for name in (spec.cohorts or list(labels.cohorts)) if name in labels.cohorts]
    return sum(chance(labels.subtypes_of(name)) for name in cancer_types) / len(cancer_types) if cancer_types else None


def one_standard_error_rule(table: pd.DataFrame, metric: str, direction: str, chance: float | None = None) -> Selection:
    """``table``: trial_id, mean, se, trainable_params per candidate. The fewest-parameter candidate
    within one SE of the best (a missing SE, from one repetition, counts as 0); a warning when it
    scores at or below ``chance``."""
    sign = 1 if direction == "max" else -1
    table = table.copy()
    best = table.loc[(sign * table["mean"]).idxmax()]
    se = 0.0 if math.isnan(best["se"]) else float(best["se"])
    bar = float(best["mean"] - sign * se)
    table["within_1se"] = sign * table["mean"] >= sign * bar - 1e-12
    eligible = table[table["within_1se"]].assign(order=lambda f: -sign * f["mean"])
    chosen = str(eligible.sort_values(["trainable_params", "order", "trial_id"]).iloc[0]["trial_id"])
    table["selected"] = table["trial_id"] == chosen
    ordered = table.sort_values("mean", ascending=direction == "min").reset_index(drop=True)
    selection = Selection(metric, direction, chosen, str(best["trial_id"]), bar, ordered)
    if chance is not None and sign * selection.row["mean"] <= sign * chance:
        best_text = "" if chosen == selection.best_trial_id else f" (the best, {selection.best_trial_id}, {best['mean']:.4f})"
        warning = (
            f"the selected trial {chosen} scores {metric} {selection.score_text}{best_text}, at or below chance "
            f"({chance:.3g}): nothing it learned held out on these folds; do not use it. Folds with too few deaths or "
            "one subtype score so; `modaltune validate` and `modaltune plan` check them"
        )
        selection = Selection(metric, direction, chosen, selection.best_trial_id, bar, ordered, (warning,))
    return selection


def held_out_metrics(spec: StudySpec, repetitions: list[RepetitionPredictions]) -> pd.DataFrame | None:
    """Each fold model's metrics on the held-out test fold; None without one."""
    tested = [rep for rep in repetitions if rep.test is not None]
    if spec.test_fold is None or not tested:
        return None
    labels = Cohort(spec.cohort).labels
    classes_of = {name: labels.subtypes_of(name) for name in labels.cohorts}
    return pd.DataFrame([
        {"fold": rep.fold, "seed": rep.seed,
         **evaluate_predictions(rep.test, classes_of, f"test fold {spec.test_fold}, model of fold {rep.fold}, seed {rep.seed}")}
        for rep in tested
    ])

