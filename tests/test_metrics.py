"""Validation metrics: an undefined one is NaN and its warning says which fold and cancer type."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modaltune.analysis.predictions import RepetitionPredictions
from modaltune.analysis.selection import held_out_metrics
from modaltune.metrics import evaluate_predictions
from modaltune.sweeps.spec import StudySpec


def _predictions(censored: str) -> pd.DataFrame:
    """Four cases per cancer type, every case of ``censored`` alive."""
    rows = []
    for cohort, classes in (("BRCA", ["IDC", "ILC"]), ("RCC", ["KIRC", "KIRP", "KICH"])):
        for i in range(4):
            rows.append({
                "case_id": f"{cohort}-{i}", "cohort": cohort, "subtype": classes[i % 2], "time": 10.0 + i,
                "event": 0 if cohort == censored else i % 2, "risk": float(-i), "predicted_subtype": classes[i % 2],
                "class_probabilities": np.eye(len(classes))[i % 2],
            })
    return pd.DataFrame(rows)


def test_an_undefined_metric_names_the_fold_and_the_cancer_type(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="modaltune.metrics"):
        subtypes = {"BRCA": ["IDC", "ILC"], "RCC": ["KIRC", "KIRP", "KICH"]}
        scores = evaluate_predictions(_predictions("BRCA"), subtypes, "validation fold 2, seed 0")
    assert math.isnan(scores["BRCA/c_index"]) and not math.isnan(scores["RCC/c_index"])
    assert "C-index undefined for BRCA, validation fold 2, seed 0: no deaths" in caplog.messages
    assert "macro AUC undefined for RCC, validation fold 2, seed 0: classes ['KICH'] absent from this split" in caplog.messages


def test_the_held_out_test_fold_names_the_fold_model_in_its_warnings(small_cohort: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = StudySpec.model_validate({"name": "held", "cohort": str(small_cohort), "folds": 2, "test_fold": 3})
    test = _predictions("RCC")
    repetitions = [RepetitionPredictions(fold, 0, 4, test, None, test) for fold in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="modaltune.metrics"):
        table = held_out_metrics(spec, repetitions)
    assert table is not None and table["RCC/c_index"].isna().all()
    assert [m for m in caplog.messages if m.startswith("C-index")] == [
        f"C-index undefined for RCC, test fold 3, model of fold {fold}, seed 0: no deaths" for fold in (0, 1)
    ]
