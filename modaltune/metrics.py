"""Validation metrics per task and per cancer type, from a table of per-case predictions.

C-index is Harrell's, via lifelines (risk: higher = shorter survival, by definition — never
flipped after the fact). A metric that cannot be computed on a split (one class only, no
comparable pairs) is NaN, and the reason is logged, never silently 0, naming what was scored
(``evaluate_predictions``' ``where`` and the cancer type), so a warning says which fold it is about.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifelines.utils import concordance_index
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from modaltune.registry import Registry

logger = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("case_id", "cohort", "subtype", "time", "event", "risk", "predicted_subtype", "class_probabilities")
_SCORED: ContextVar[str] = ContextVar("scored", default="")  # what is being scored, for the undefined-metric warnings


@contextmanager
def scoring(what: str) -> Iterator[None]:
    """Within the block, an undefined metric's warning says it was scoring ``what`` (e.g.
    ``BRCA, validation fold 2, seed 0``); ``evaluate_predictions`` sets it per cancer type."""
    token = _SCORED.set(what)
    try:
        yield
    finally:
        _SCORED.reset(token)


def _undefined(metric: str, reason: str) -> None:
    scored = _SCORED.get()
    logger.warning("%s undefined%s: %s", metric, f" for {scored}" if scored else "", reason)


def c_index(time: npt.ArrayLike, risk: npt.ArrayLike, event: npt.ArrayLike) -> float:
    """Harrell's C: the fraction of comparable pairs whose higher-risk case died first."""
    event_arr = np.asarray(event)
    if event_arr.sum() == 0 or len(event_arr) < 2:
        _undefined("C-index", "no deaths" if len(event_arr) >= 2 else "fewer than two cases")
        return math.nan
    try:
        return float(concordance_index(np.asarray(time), -np.asarray(risk, dtype=float), event_arr))
    except ZeroDivisionError:
        _undefined("C-index", "no comparable pairs")
        return math.nan


def balanced_accuracy(truth: Collection[str], predicted: Collection[str]) -> float:
    if len(truth) == 0:
        return math.nan
    return float(balanced_accuracy_score(truth, predicted))


def macro_auc(truth: Sequence[str], probabilities: np.ndarray, classes: Sequence[str]) -> float:
    """One-vs-rest macro AUC; NaN (with the reason logged) when a class is absent from ``truth``."""
    present = set(truth)
    if len(present) < len(classes):
        _undefined("macro AUC", f"classes {sorted(set(classes) - present)} absent from this split")
        return math.nan
    if len(classes) == 2:
        return float(roc_auc_score([t == classes[1] for t in truth], probabilities[:, 1]))
    order = np.argsort(classes)  # sklearn wants the label list sorted, with columns to match
    return float(
        roc_auc_score(list(truth), probabilities[:, order], multi_class="ovr", average="macro", labels=[classes[i] for i in order])
    )


@dataclass(frozen=True)
class CaseMetric:
    """A validation metric computed per cancer type from its cases' predictions."""

    direction: str  # "max" or "min": which way is better
    score: Callable[[pd.DataFrame, list[str]], float]  # (one cancer type's predictions, its classes) -> value
    task: str | None = None  # the task whose labels it scores: what its folds must hold (modaltune.data.fold_checks)
    every_class: bool = False  # undefined where a fold lacks one of a cancer type's subtypes
    chance: Callable[[list[str]], float] | None = None  # one cancer type's classes -> the score of a model that knows nothing


METRICS: Registry[CaseMetric] = Registry("metric")
METRICS.register("c_index")(CaseMetric(
    "max", lambda group, classes: c_index(group["time"], group["risk"], group["event"]), task="survival", chance=lambda classes: 0.5,
))
METRICS.register("balanced_accuracy")(CaseMetric(
    "max", lambda group, classes: balanced_accuracy(group["subtype"], group["predicted_subtype"]), task="diagnosis",
    chance=lambda classes: 1 / len(classes),
))
METRICS.register("macro_auc")(CaseMetric(
    "max", lambda group, classes: macro_auc(list(group["subtype"]), np.stack(list(group["class_probabilities"])), classes),
    task="diagnosis", every_class=True, chance=lambda classes: 0.5,
))


def evaluate_predictions(predictions: pd.DataFrame, classes_of: dict[str, list[str]], where: str = "") -> dict[str, float]:
    """Each registered metric per cohort (``BRCA/c_index``) and overall.

    Overall values are the mean over cancer types, as in the paper's tables; pan-cancer
    predictions are scored within each cancer type (risk scores of different cancers are not
    comparable, and each slide is classified among its own cancer type's subtypes). ``where``
    says what the predictions are (``validation fold 2, seed 0``) in the warnings of a metric
    that is undefined, with the cancer type.
    """
    metrics: dict[str, float] = {}
    for cohort, group in predictions.groupby("cohort", sort=True):
        with scoring(", ".join(part for part in (str(cohort), where) if part)):
            for name, metric in METRICS.items():
                metrics[f"{cohort}/{name}"] = metric.score(group, classes_of[str(cohort)])
    for name in METRICS.names():
        values = [v for k, v in metrics.items() if k.endswith(f"/{name}") and not math.isnan(v)]
        metrics[name] = float(np.mean(values)) if values else math.nan
    return metrics
