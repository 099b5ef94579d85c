"""Ablation tables in the paper's style and paired tests of each level against the reference.

The unit of evidence is a repetition (fold x seed) of a cell's best finished configuration.
For a factor F, the cells that speak for a level L are those that differ from the reference
only in F (``one_at_a_time`` designs) or all cells with F = L (other designs, averaged per
repetition over the other factors). Comparisons are paired on the same folds and seeds (and,
in crossed designs, the same levels of the other factors).

Two tests per comparison, Holm-corrected across all comparisons of the study:
- the corrected resampled t-test (Nadeau & Bengio, 2003), which widens the t-test's variance
  by n_test / n_train because cross-validation training sets overlap (the plain paired t-test
  is badly anti-conservative on CV scores); scipy has no such test, so it is written here;
- the Wilcoxon signed-rank test (scipy), which assumes nothing about the distribution.
A value that cannot be computed is NaN with a ``note`` saying why, never 0.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from analysis.summary import best_trials, final_epochs
from sweeps.cells import factor_level
from sweeps.spec import StudySpec

PAIR_KEYS = ["fold", "seed"]


def repetition_scores(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell x repetition: the final-epoch metrics of the cell's best finished trial."""
    best = best_trials(spec, trials)
    finals = final_epochs(results)
    scored = finals[finals["trial_id"].isin(best.values())]
    return scored.assign(cell=scored["trial_id"].map({trial: cell for cell, trial in best.items()}))


def reference_levels(spec: StudySpec) -> dict[str, str]:
    return {name: factor_level(name, levels[0]).label for name, levels in spec.factors.items()}


def _cells_for(spec: StudySpec, scores: pd.DataFrame, factor: str, level: str) -> pd.DataFrame:
    rows = scores[scores[factor].astype(str) == level]
    if spec.design.type == "one_at_a_time":
        for other, reference in reference_levels(spec).items():
            if other != factor:
                rows = rows[rows[other].astype(str) == reference]
    return rows


def _units(spec: StudySpec, rows: pd.DataFrame, factor: str, column: str) -> pd.Series:
    """The metric per pairing unit: repetition, plus the other factors' levels in crossed designs."""
    keys = PAIR_KEYS + ([f for f in spec.factors if f != factor] if spec.design.type != "one_at_a_time" else [])
    return rows.astype({f: str for f in spec.factors}).groupby(keys)[column].mean()


def level_table(spec: StudySpec, scores: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per factor x level: mean, std and 95% CI over repetitions, overall and per cancer type."""
    columns = [f"val_{metric}"] + sorted(c for c in scores.columns if c.startswith("val_") and c.endswith(f"/{metric}"))
    rows = []
    for factor, levels in spec.factors.items():
        for value in levels:
            level = factor_level(factor, value).label
            chosen = _cells_for(spec, scores, factor, level)
            row: dict[str, object] = {"factor": factor, "level": level, "cells": chosen["cell"].nunique()}
            for column in columns:
                per_repetition = chosen.astype({f: str for f in spec.factors}).groupby(PAIR_KEYS)[column].mean().dropna()
                name = column[len("val_"):].replace(f"/{metric}", "") if "/" in column else "overall"
                row |= _describe(per_repetition.to_numpy(), name)
            rows.append(row)
    return pd.DataFrame(rows)


def _describe(values: np.ndarray, name: str) -> dict[str, float]:
    """Mean, std and the t-based 95% CI of the mean (NaN where fewer than two values)."""
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan
    if n > 1:
        low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
    return {f"{name}_mean": mean, f"{name}_std": std, f"{name}_ci_low": float(low), f"{name}_ci_high": float(high), f"{name}_n": n}


def corrected_resampled_ttest(differences: np.ndarray, test_train_ratio: float) -> float:
    """Two-sided p of Nadeau & Bengio's corrected resampled t-test on paired CV differences."""
    n = len(differences)
    variance = float(np.var(differences, ddof=1)) if n >= 2 else 0.0
    if variance == 0:
        return math.nan
    t = float(np.mean(differences)) / math.sqrt((1 / n + test_train_ratio) * variance)
    return float(2 * stats.t.sf(abs(t), n - 1))


def compare_to_reference(spec: StudySpec, scores: pd.DataFrame, metric: str, n_folds: int) -> pd.DataFrame:
    """Each non-reference level against its factor's reference level, paired; Holm across all rows."""
    references = reference_levels(spec)
    column = f"val_{metric}"
    rows = []
    for factor, levels in spec.factors.items():
        reference = _units(spec, _cells_for(spec, scores, factor, references[factor]), factor, column)
        for value in levels[1:]:
            level = factor_level(factor, value).label
            other = _units(spec, _cells_for(spec, scores, factor, level), factor, column)
            paired = pd.concat([other.rename("level"), reference.rename("reference")], axis=1).dropna()
            differences = (paired["level"] - paired["reference"]).to_numpy()
            row = {"factor": factor, "level": level, "reference": references[factor], "pairs": len(differences)}
            row["difference"] = float(differences.mean()) if len(differences) else math.nan
            row["corrected_t_p"] = corrected_resampled_ttest(differences, 1 / (n_folds - 1))
            row["wilcoxon_p"] = float(stats.wilcoxon(differences).pvalue) if len(differences) >= 2 and np.any(differences) else math.nan
            row["note"] = "" if len(differences) >= 2 else "fewer than 2 paired repetitions: no test"
            rows.append(row)
    table = pd.DataFrame(rows, columns=["factor", "level", "reference", "pairs", "difference", "corrected_t_p", "wilcoxon_p", "note"])
    for p_column in ("corrected_t_p", "wilcoxon_p"):
        table[p_column.replace("_p", "_p_holm")] = _holm(table[p_column])
    return table


def _holm(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the testable rows; untestable rows stay NaN."""
    adjusted = pd.Series(math.nan, index=p_values.index)
    testable = p_values.notna()
    if testable.any():
        adjusted[testable] = multipletests(p_values[testable].to_numpy(), method="holm")[1]
    return adjusted


def format_comparisons(table: pd.DataFrame) -> str:
    """Plain text: each level vs its reference, the mean paired difference and Holm-adjusted p."""
    shown = table.assign(
        difference=table["difference"].map(lambda v: "n/a" if math.isnan(v) else f"{v:+.3f}"),
        corrected_t_p_holm=table["corrected_t_p_holm"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3g}"),
        wilcoxon_p_holm=table["wilcoxon_p_holm"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3g}"),
    )
    return shown[["factor", "level", "reference", "pairs", "difference", "corrected_t_p_holm", "wilcoxon_p_holm", "note"]].to_string(index=False)
