"""The paper's evaluation of the ``distill`` objective: probes fitted on embeddings.

After (or during) training, the 256-d embeddings of the training cases fit a logistic
regression (subtype) and a lifelines Cox model with penalizer 0.1 (survival), one of each per
cancer type; validation cases are then scored by them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

logger = logging.getLogger(__name__)

COX_PENALIZER = 0.1


@dataclass(frozen=True)
class ProbeInputs:
    """Cases (one row each: ``cohort``, ``subtype``, ``time``, ``event``) and their embeddings:
    ``subtype_embeddings`` feed the subtype probe, ``risk_embeddings`` the Cox probe."""

    cases: pd.DataFrame
    subtype_embeddings: np.ndarray
    risk_embeddings: np.ndarray


def fit_probe_predictions(train: ProbeInputs, test: ProbeInputs, classes_of: dict[str, list[str]]) -> pd.DataFrame:
    """``test.cases`` plus ``risk``, ``predicted_subtype`` and ``class_probabilities``,
    from probes fitted per cancer type on ``train``."""
    out = test.cases.reset_index(drop=True).copy()
    out["risk"] = np.nan
    out["predicted_subtype"] = None
    out["class_probabilities"] = None
    for cohort in out["cohort"].unique():
        tr, te = (train.cases["cohort"] == cohort).to_numpy(), (out["cohort"] == cohort).to_numpy()
        classes = classes_of[cohort]
        x_train, x_test = _standardised(train.subtype_embeddings[tr], test.subtype_embeddings[te])
        probabilities = _subtype_probabilities(x_train, train.cases["subtype"].to_numpy()[tr], x_test, classes)
        out.loc[te, "predicted_subtype"] = [classes[i] for i in probabilities.argmax(axis=1)]
        out.loc[te, "class_probabilities"] = pd.Series(list(probabilities), index=out.index[te])
        x_train, x_test = _standardised(train.risk_embeddings[tr], test.risk_embeddings[te])
        out.loc[te, "risk"] = _cox_risk(x_train, train.cases.loc[tr, ["time", "event"]], x_test)
    return out


def _standardised(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(train)
    return scaler.transform(train), scaler.transform(test)


def _subtype_probabilities(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(n_test, n_classes) in ``classes`` order; classes unseen in training get probability 0."""
    present = sorted(set(y_train))
    probabilities = np.zeros((len(x_test), len(classes)))
    if len(present) == 1:
        probabilities[:, list(classes).index(present[0])] = 1.0
        return probabilities
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    for j, name in enumerate(model.classes_):
        probabilities[:, list(classes).index(name)] = model.predict_proba(x_test)[:, j]
    return probabilities


def _cox_risk(x_train: np.ndarray, survival: pd.DataFrame, x_test: np.ndarray) -> np.ndarray:
    """Log partial hazard of a penalised Cox model (higher = shorter survival)."""
    columns = [f"e{i}" for i in range(x_train.shape[1])]
    frame = pd.DataFrame(x_train, columns=columns).assign(time=survival["time"].to_numpy(), event=survival["event"].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = CoxPHFitter(penalizer=COX_PENALIZER).fit(frame, "time", "event")
    return fitted.predict_log_partial_hazard(pd.DataFrame(x_test, columns=columns)).to_numpy()
