"""What the search learned: hyperparameter importance and the C-index / balanced-accuracy Pareto front.

Both are Optuna's own: the finished trials (their tuned parameters and factor levels, scored by
the mean over repetitions) are added to an in-memory Optuna study, then
``optuna.importance.get_param_importances`` (PED-ANOVA by default, fANOVA on request) and
``Study.best_trials`` of a two-objective study do the work.
"""

from __future__ import annotations

import logging

import optuna
import pandas as pd

from modaltune.analysis.selection import candidate_scores
from modaltune.sweeps.spec import StudySpec

logger = logging.getLogger(__name__)

EVALUATORS = {
    "ped_anova": optuna.importance.PedAnovaImportanceEvaluator,
    "fanova": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
}


def _distributions(spec: StudySpec, scores: pd.DataFrame) -> dict[str, optuna.distributions.BaseDistribution]:
    """Tuned parameters, plus every factor with more than one level as a categorical parameter."""
    distributions = {name: dist.to_optuna() for name, dist in spec.search.params.items() if name in scores.columns}
    for factor in spec.factors:
        levels = sorted(scores[factor].astype(str).unique())
        if len(levels) > 1:
            distributions[factor] = optuna.distributions.CategoricalDistribution(levels)
    return distributions


def _as_study(spec: StudySpec, scores: pd.DataFrame, direction: str) -> optuna.Study:
    """The finished trials as an in-memory Optuna study, scored by their mean over repetitions."""
    distributions = _distributions(spec, scores)
    study = optuna.create_study(direction="maximize" if direction == "max" else "minimize")
    for row in scores.to_dict("records"):
        params = {name: (str(row[name]) if name in spec.factors else row[name]) for name in distributions}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=row["mean"]))
    return study


def param_importances(
    spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metric: str, evaluator: str = "ped_anova"
) -> tuple[pd.DataFrame, str]:
    """(importance per parameter, note). Empty with a note saying why when it cannot be computed."""
    scores = candidate_scores(spec, results, trials, metric).dropna(subset=["mean"])
    distributions = _distributions(spec, scores)
    empty = pd.DataFrame(columns=["parameter", "importance"])
    if not distributions:
        return empty, "no tuned parameter or factor varies across trials"
    if len(scores) < 4:
        return empty, f"{len(scores)} finished trials: too few to attribute variance (need 4 or more)"
    direction = next((m.direction for m in spec.search.metrics if m.name == metric), "max")
    study = _as_study(spec, scores, direction)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=EVALUATORS[evaluator]())
    except (RuntimeError, ValueError) as exc:
        return empty, f"{evaluator}: {exc}"
    table = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
    return table, f"{evaluator} over {len(scores)} finished trials, {metric} mean over repetitions"


def pareto_front(
    spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metrics: tuple[str, str] = ("c_index", "balanced_accuracy")
) -> pd.DataFrame:
    """Every finished trial's mean of both metrics, with ``pareto`` True on the non-dominated ones."""
    first = candidate_scores(spec, results, trials, metrics[0])[["trial_id", "cell", *spec.factors, "mean"]]
    second = candidate_scores(spec, results, trials, metrics[1])[["trial_id", "mean"]]
    table = first.rename(columns={"mean": metrics[0]}).merge(second.rename(columns={"mean": metrics[1]}), on="trial_id")
    table = table.dropna(subset=list(metrics)).reset_index(drop=True)
    if table.empty:
        return table.assign(pareto=pd.Series(dtype=bool))
    study = optuna.create_study(directions=["maximize", "maximize"])
    for row in table.to_dict("records"):
        study.add_trial(optuna.trial.create_trial(values=[row[m] for m in metrics], user_attrs={"trial_id": row["trial_id"]}))
    front = {t.user_attrs["trial_id"] for t in study.best_trials}
    return table.assign(pareto=table["trial_id"].isin(front))
