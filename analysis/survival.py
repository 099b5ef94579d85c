"""Survival analysis of one model's out-of-fold predictions, with nothing fitted on test cases.

- Risk is "higher = shorter survival" by definition, everywhere; it is never flipped after
  the fact to whichever orientation scores higher.
- Risk groups: each fold's cutoff is the median risk of that fold's *training* cases (of the
  same cancer type), never the median of the cases being tested.
- Pooling folds: a fold model's risks are on its own scale, so before pooling each becomes its
  percentile among that fold's training-set risks, again training data only (bounded: a fold
  model whose training risks barely vary cannot push its cases to the ends, as z-scores could).
- Harrell's C is lifelines' (``modaltune.metrics.c_index``); Uno's IPCW C, the cumulative/dynamic
  time-dependent AUC and the integrated Brier score are scikit-survival's, with the censoring
  distribution estimated on the fold's training cases. The Brier score needs survival curves,
  so a Breslow baseline hazard is fitted on the training cases' risks (a Cox model whose linear
  predictor is the network's risk).
- A value that cannot be computed is NaN with a ``note`` saying why, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from lifelines.statistics import logrank_test
from sksurv.linear_model.coxph import BreslowEstimator
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from modaltune.analysis.predictions import RepetitionPredictions
from modaltune.metrics import c_index
from modaltune.predict import training_percentile

NO_TRAIN = "no training-set predictions for this run (written at the final epoch since this version)"
CASE_KEYS = ["case_id", "cohort", "time", "event"]


def pooled_out_of_fold(repetitions: Sequence[RepetitionPredictions]) -> pd.DataFrame:
    """One row per validation case: its risk as a percentile of its fold's training risks (fold
    models' risks are on different scales), averaged over seeds."""
    parts = []
    for rep in repetitions:
        val = rep.val[CASE_KEYS + ["risk"]].copy()
        if rep.train is not None:
            val["risk"] = training_percentile(val, rep.train)
        parts.append(val)
    pooled = pd.concat(parts, ignore_index=True)
    return pooled.groupby(CASE_KEYS, as_index=False, sort=True)["risk"].mean()


def bootstrap_c_index(pooled: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Harrell's C per cancer type and their mean, with percentile 95% CIs from resampling
    cases (within each cancer type) with replacement."""
    rng = np.random.default_rng(seed)
    cohorts = sorted(pooled["cohort"].unique())
    groups = {name: pooled[pooled["cohort"] == name].reset_index(drop=True) for name in cohorts}
    point = {name: c_index(g["time"], g["risk"], g["event"]) for name, g in groups.items()}
    draws: dict[str, list[float]] = {name: [] for name in cohorts}
    for _ in range(n_boot):
        for name, group in groups.items():
            sample = group.iloc[rng.integers(0, len(group), len(group))]
            draws[name].append(_quiet_c(sample))
    rows = [_interval(name, point[name], np.asarray(draws[name]), len(groups[name])) for name in cohorts]
    overall_draws = np.nanmean(np.column_stack([draws[name] for name in cohorts]), axis=1)
    overall = float(np.nanmean([point[name] for name in cohorts])) if any(not math.isnan(v) for v in point.values()) else math.nan
    rows.append(_interval("overall", overall, overall_draws, len(pooled)))
    return pd.DataFrame(rows)


def _quiet_c(sample: pd.DataFrame) -> float:
    if sample["event"].sum() == 0:
        return math.nan
    return c_index(sample["time"], sample["risk"], sample["event"])


def _interval(name: str, point: float, draws: np.ndarray, n: int) -> dict[str, object]:
    finite = draws[~np.isnan(draws)]
    if math.isnan(point) or len(finite) < 10:
        return {
            "cohort": name, "cases": n, "c_index": point, "ci_low": math.nan, "ci_high": math.nan,
            "note": "C-index undefined (too few events)",
        }
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"cohort": name, "cases": n, "c_index": point, "ci_low": float(low), "ci_high": float(high), "note": ""}


def risk_groups(repetitions: Sequence[RepetitionPredictions]) -> pd.DataFrame:
    """Validation cases of the first seed's folds labelled ``high``/``low`` risk by their fold's
    training-set median risk (per cancer type); a case without a risk (or whose cancer type has
    no training risks) is ``unscored``, never silently low. Empty when no run saved training predictions."""
    first_seed = min(rep.seed for rep in repetitions)
    parts = []
    for rep in repetitions:
        if rep.seed != first_seed or rep.train is None:
            continue
        cutoffs = rep.train.groupby("cohort")["risk"].median()
        val = rep.val[CASE_KEYS + ["risk"]].assign(fold=rep.fold, cutoff=rep.val["cohort"].map(cutoffs))
        scored = val["risk"].notna() & val["cutoff"].notna()
        parts.append(val.assign(group=np.where(~scored, "unscored", np.where(val["risk"] > val["cutoff"], "high", "low"))))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[*CASE_KEYS, "risk", "fold", "cutoff", "group"])


def logrank_by_cohort(groups: pd.DataFrame) -> pd.DataFrame:
    """Per cancer type: cases and deaths per risk group and the log-rank p-value (lifelines)."""
    rows = []
    for cohort, frame in groups.groupby("cohort", sort=True):
        high, low = frame[frame["group"] == "high"], frame[frame["group"] == "low"]
        row: dict[str, object] = {
            "cohort": cohort, "high_cases": len(high), "high_deaths": int(high["event"].sum()),
            "low_cases": len(low), "low_deaths": int(low["event"].sum()), "logrank_p": math.nan, "note": "",
        }
        unscored = int((frame["group"] == "unscored").sum())
        left_out = f"; {unscored} case(s) without a risk left out" if unscored else ""
        if len(high) == 0 or len(low) == 0:
            row["note"] = "one risk group is empty: no test" + left_out
        elif high["event"].sum() + low["event"].sum() == 0:
            row["note"] = "no deaths: no test" + left_out
        else:
            row["logrank_p"] = float(logrank_test(high["time"], low["time"], high["event"], low["event"]).p_value)
            row["note"] = left_out[2:]
        rows.append(row)
    return pd.DataFrame(rows, columns=["cohort", "high_cases", "high_deaths", "low_cases", "low_deaths", "logrank_p", "note"])


def ipcw_metrics(repetitions: Sequence[RepetitionPredictions]) -> pd.DataFrame:
    """Per repetition x cancer type: Uno's C, mean time-dependent AUC and integrated Brier score."""
    rows = []
    for rep in repetitions:
        for cohort, val in rep.val.groupby("cohort", sort=True):
            row: dict[str, object] = {"fold": rep.fold, "seed": rep.seed, "cohort": cohort}
            if rep.train is None:
                rows.append(row | {"uno_c": math.nan, "td_auc": math.nan, "ibs": math.nan, "note": NO_TRAIN})
                continue
            train = rep.train[rep.train["cohort"] == cohort]
            rows.append(row | _ipcw_for(train, val))
    return pd.DataFrame(rows)


def _ipcw_for(train: pd.DataFrame, val: pd.DataFrame) -> dict[str, object]:
    times = evaluation_times(train, val)
    survival_train = Surv.from_arrays(train["event"].astype(bool), train["time"].astype(float))
    survival_test = _censored_at_follow_up_end(val, float(train["time"].max()))
    out: dict[str, object] = {"uno_c": math.nan, "td_auc": math.nan, "ibs": math.nan}
    notes = []
    if len(times) == 0:
        return out | {"note": "no death times inside both the training and the test follow-up"}
    risk = val["risk"].to_numpy(dtype=float)
    try:
        out["uno_c"] = float(concordance_index_ipcw(survival_train, survival_test, risk, tau=times[-1])[0])
    except ValueError as exc:
        notes.append(f"Uno's C: {exc}")
    try:
        out["td_auc"] = float(cumulative_dynamic_auc(survival_train, survival_test, risk, times)[1])
    except ValueError as exc:
        notes.append(f"td-AUC: {exc}")
    if len(times) < 2:
        notes.append("integrated Brier score: needs at least two evaluation times")
    else:
        try:
            breslow = BreslowEstimator().fit(
                train["risk"].to_numpy(dtype=float), train["event"].to_numpy(bool), train["time"].to_numpy(float)
            )
            curves = np.vstack([curve(times) for curve in breslow.get_survival_function(risk)])
            out["ibs"] = float(integrated_brier_score(survival_train, survival_test, curves, times))
        except ValueError as exc:
            notes.append(f"integrated Brier score: {exc}")
    return out | {"note": "; ".join(notes)}


def _censored_at_follow_up_end(val: pd.DataFrame, end: float) -> np.ndarray:
    """Test cases followed beyond the training follow-up, censored just inside it: the censoring
    weights are only defined there, and every evaluation time lies before it, so no case's status
    at an evaluation time changes."""
    beyond = val["time"].to_numpy(float) >= end
    time = np.where(beyond, np.nextafter(end, 0.0), val["time"].to_numpy(float))
    return Surv.from_arrays(val["event"].to_numpy(bool) & ~beyond, time)


def evaluation_times(train: pd.DataFrame, val: pd.DataFrame) -> np.ndarray:
    """Death times of the test cases between their 10th and 80th percentiles, inside the training
    follow-up (where the censoring distribution and the Breslow baseline, defined up to the last
    training death, are estimated) and the test follow-up."""
    deaths = np.sort(val.loc[val["event"].astype(bool), "time"].to_numpy(dtype=float))
    train_deaths = train.loc[train["event"].astype(bool), "time"]
    if len(deaths) == 0 or len(train_deaths) == 0:
        return deaths[:0]
    low, high = np.percentile(deaths, [10, 80])
    upper = min(float(train_deaths.max()), float(val["time"].max()))
    lower = max(float(train["time"].min()), float(val["time"].min()))
    return np.unique(deaths[(deaths >= low) & (deaths <= high) & (deaths > lower) & (deaths < upper)])


def summarise_ipcw(per_repetition: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over repetitions per cancer type, with every distinct note kept."""
    rows = []
    for cohort, frame in per_repetition.groupby("cohort", sort=True):
        row: dict[str, object] = {"cohort": cohort, "repetitions": len(frame)}
        for metric in ("uno_c", "td_auc", "ibs"):
            values = frame[metric].dropna()
            row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        row["note"] = "; ".join(sorted({n for n in frame["note"] if n}))
        rows.append(row)
    return pd.DataFrame(rows)
