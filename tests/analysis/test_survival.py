"""Survival analysis on a real survival dataset (lifelines' Rossi recidivism data, 432 cases)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.metrics import concordance_index_censored

from modaltune.analysis.predictions import RepetitionPredictions
from modaltune.analysis.survival import (
    bootstrap_c_index,
    ipcw_metrics,
    logrank_by_cohort,
    pooled_out_of_fold,
    risk_groups,
)

COVARIATES = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


def _cases(frame: pd.DataFrame, risk: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({
        "case_id": [f"case{i}" for i in frame.index], "cohort": "ROSSI", "time": frame["week"].to_numpy(float),
        "event": frame["arrest"].to_numpy(int), "risk": risk,
    })


@pytest.fixture(scope="module")
def rossi_split() -> RepetitionPredictions:
    """A Cox model fitted on half the cases; its log partial hazard is the risk of both halves."""
    data = load_rossi()
    train = data.sample(frac=0.5, random_state=0)
    val = data.drop(train.index)
    cox = CoxPHFitter().fit(train, "week", "arrest")

    def risk(part: pd.DataFrame) -> np.ndarray:
        return cox.predict_log_partial_hazard(part[COVARIATES]).to_numpy()

    return RepetitionPredictions(fold=0, seed=0, epoch=0, val=_cases(val, risk(val)), train=_cases(train, risk(train)), test=None)


def test_harrells_c_agrees_with_an_independent_implementation(rossi_split: RepetitionPredictions) -> None:
    val = rossi_split.val
    ours = bootstrap_c_index(val, n_boot=200).set_index("cohort")
    reference = concordance_index_censored(val["event"].astype(bool), val["time"], val["risk"])[0]
    assert ours.loc["ROSSI", "c_index"] == pytest.approx(reference, abs=1e-3)
    assert 0.55 < reference < 0.75
    assert ours.loc["ROSSI", "ci_low"] < reference < ours.loc["ROSSI", "ci_high"]
    assert ours.loc["overall", "c_index"] == ours.loc["ROSSI", "c_index"]


def test_risk_orientation_is_fixed_never_flipped() -> None:
    """Higher risk = shorter survival by definition: a risk that orders cases backwards scores
    near 0, not near 1."""
    data = load_rossi()
    right = bootstrap_c_index(_cases(data, -data["week"].to_numpy(float)), n_boot=20).set_index("cohort")
    wrong = bootstrap_c_index(_cases(data, data["week"].to_numpy(float)), n_boot=20).set_index("cohort")
    assert right.loc["ROSSI", "c_index"] > 0.95 and wrong.loc["ROSSI", "c_index"] < 0.05


def test_logrank_of_training_cutoff_groups_matches_the_published_rossi_result() -> None:
    """Risk = no financial aid; the training median splits the groups as ``fin`` does, and the
    log-rank test gives the well-known chi2 = 3.84, p = 0.050 for financial aid."""
    data = load_rossi()
    cases = _cases(data, 1.0 - data["fin"].to_numpy(float))
    groups = risk_groups([RepetitionPredictions(0, 0, 0, val=cases, train=cases, test=None)])
    assert (groups["group"] == "high").sum() == (data["fin"] == 0).sum()
    table = logrank_by_cohort(groups).set_index("cohort")
    assert table.loc["ROSSI", "logrank_p"] == pytest.approx(0.0501, abs=5e-4)
    assert table.loc["ROSSI", "high_deaths"] == data.loc[data["fin"] == 0, "arrest"].sum()


def test_cutoffs_come_from_training_risks_not_from_the_cases_tested(rossi_split: RepetitionPredictions) -> None:
    """Training risks all above the validation risks put every validation case in the low group:
    the test median would have split them in half. The empty group is reported, not tested."""
    shifted = rossi_split.train.assign(risk=rossi_split.train["risk"] + 100.0)
    groups = risk_groups([RepetitionPredictions(0, 0, 0, val=rossi_split.val, train=shifted, test=None)])
    assert set(groups["group"]) == {"low"}
    row = logrank_by_cohort(groups).iloc[0]
    assert math.isnan(row["logrank_p"]) and "empty" in row["note"]


def test_a_case_without_a_risk_is_left_out_of_the_groups_and_said_so() -> None:
    """A NaN risk compares False with any cutoff; it must not land in the low-risk group."""
    data = load_rossi()
    cases = _cases(data, 1.0 - data["fin"].to_numpy(float))
    missing = cases.index[data["fin"].to_numpy() == 1][:7]
    cases.loc[missing, "risk"] = np.nan
    groups = risk_groups([RepetitionPredictions(0, 0, 0, val=cases, train=_cases(data, 1.0 - data["fin"].to_numpy(float)), test=None)])
    assert (groups["group"] == "unscored").sum() == 7
    assert (groups["group"] == "low").sum() == (data["fin"] == 1).sum() - 7
    row = logrank_by_cohort(groups).iloc[0]
    assert row["low_cases"] == (data["fin"] == 1).sum() - 7 and not math.isnan(row["logrank_p"])
    assert "7 case(s) without a risk left out" in row["note"]


def test_ipcw_metrics_use_training_censoring_and_report_what_cannot_be_computed(rossi_split: RepetitionPredictions) -> None:
    row = ipcw_metrics([rossi_split]).iloc[0]
    assert 0.55 < row["uno_c"] < 0.8 and 0.5 < row["td_auc"] < 0.9 and 0.0 < row["ibs"] < 0.25, row.to_dict()
    assert row["note"] == ""
    no_deaths = rossi_split.val.assign(event=0)
    missing = ipcw_metrics([RepetitionPredictions(0, 0, 0, val=no_deaths, train=rossi_split.train, test=None)]).iloc[0]
    assert math.isnan(missing["uno_c"]) and math.isnan(missing["ibs"]) and missing["note"]
    untrained = ipcw_metrics([RepetitionPredictions(0, 0, 0, val=rossi_split.val, train=None, test=None)]).iloc[0]
    assert math.isnan(untrained["td_auc"]) and "training-set predictions" in untrained["note"]


def test_pooling_puts_each_fold_on_its_training_percentiles(rossi_split: RepetitionPredictions) -> None:
    """A second fold on a 10x scale with an offset pools to the same values: percentiles of training risks."""
    scaled = RepetitionPredictions(
        1, 0, 0, val=rossi_split.val.assign(risk=rossi_split.val["risk"] * 10 + 3),
        train=rossi_split.train.assign(risk=rossi_split.train["risk"] * 10 + 3), test=None,
    )
    one = pooled_out_of_fold([rossi_split]).set_index("case_id")["risk"]
    other = pooled_out_of_fold([scaled]).set_index("case_id")["risk"]
    assert np.allclose(one, other)
