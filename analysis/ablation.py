"""Ablation tables in the paper's style and paired tests of each level against the reference.

A cell is scored by its best finished configuration, per repetition (fold x seed). For a
factor F, the cells that speak for a level L are those that differ from the reference only in
F (``one_at_a_time``) or all cells with F = L (``crossed`` and ``sampled``: a marginal effect,
averaged over the other factors' cells). The unit of every interval and test is a validation
fold: a level's score in a fold is the mean over its cells and seeds in that fold. A
comparison pairs the level with its reference fold by fold, and in crossed and sampled designs
also by the other factors' levels within the fold (only combinations both have, averaged over
them), so a missing or unsampled cell cannot pass for an effect (see analysis/inference.py for the
corrected resampled t-test, why folds and not fold x seed pairs, and its power). p-values are
Holm-adjusted across all comparisons of a metric; each comparison carries its minimum
detectable difference at 80% power, at the Holm-step level alpha/m: what "not significant"
could have seen.

These are search-stage scores: each cell's best of ``trials_per_cell`` trials, chosen on the
same folds that score it, so every cell is optimistic and the optimism grows with the number of
trials and the cell's variance. A value that cannot be computed is NaN with a note saying why.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from modaltune.analysis.inference import FoldDesign, bounded_interval, corrected_t_test, minimum_detectable_difference
from modaltune.analysis.summary import final_epochs
from modaltune.sweeps.factors import factor_level
from modaltune.sweeps.spec import StudySpec
from modaltune.sweeps.trial_rows import best_trials

ALPHA = 0.05
TARGET_POWER = 0.8
# A paired difference of two scores in [0, 1] beyond this is not a plausible effect: a comparison
# whose detectable difference exceeds it cannot reach significance for any real one.
IMPLAUSIBLE_DIFFERENCE = 0.5
COMPARISON_COLUMNS = [
    "factor", "level", "reference", "folds", "difference", "ci_low", "ci_high", "agreeing", "sd", "p", "p_holm", "mdd", "note",
]


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


def fold_scores(rows: pd.DataFrame, column: str) -> pd.Series:
    """The metric per validation fold: the mean over the rows' cells and seeds in that fold."""
    return rows.groupby("fold")[column].mean().dropna()


def fold_differences(spec: StudySpec, level: pd.DataFrame, reference: pd.DataFrame, factor: str, column: str) -> pd.Series:
    """Per fold, the level's score minus the reference's: seeds averaged within a fold and, where
    other factors vary (crossed, sampled), differences taken within each combination of their
    levels that both sides have in that fold, then averaged over the combinations."""
    keys = ["fold"] + ([f for f in spec.factors if f != factor] if spec.design.type != "one_at_a_time" else [])
    means = [rows[keys + [column]].astype({k: str for k in keys[1:]}).groupby(keys)[column].mean() for rows in (level, reference)]
    paired = pd.concat([means[0].rename("level"), means[1].rename("reference")], axis=1).dropna()
    return (paired["level"] - paired["reference"]).groupby(level="fold").mean()


def level_table(spec: StudySpec, scores: pd.DataFrame, metric: str, design: FoldDesign) -> pd.DataFrame:
    """One row per factor x level: mean and std over folds and the corrected 95% interval of the
    mean (in [0, 1]), overall and per cancer type, with a note where there is none."""
    columns = [f"val_{metric}"] + sorted(c for c in scores.columns if c.startswith("val_") and c.endswith(f"/{metric}"))
    rows = []
    for factor, levels in spec.factors.items():
        for value in levels:
            level = factor_level(factor, value).label
            chosen = _cells_for(spec, scores, factor, level)
            row: dict[str, object] = {"factor": factor, "level": level, "cells": chosen["cell"].nunique()}
            for column in columns:
                name = column[len("val_"):].replace(f"/{metric}", "") if "/" in column else "overall"
                interval = bounded_interval(fold_scores(chosen, column).to_numpy(), design)
                row |= {
                    f"{name}_mean": interval.mean, f"{name}_std": interval.std, f"{name}_ci_low": interval.low,
                    f"{name}_ci_high": interval.high, f"{name}_n": interval.units, f"{name}_note": interval.note,
                }
            rows.append(row)
    return pd.DataFrame(rows)


def compare_to_reference(spec: StudySpec, scores: pd.DataFrame, metric: str, design: FoldDesign) -> pd.DataFrame:
    """Each non-reference level against its factor's reference level, paired by fold; Holm across
    all rows; ``sd`` is the spread of the per-fold differences, ``mdd`` the minimum detectable
    difference at 80% power and alpha / (testable rows)."""
    references = reference_levels(spec)
    column = f"val_{metric}"
    rows = []
    for factor, levels in spec.factors.items():
        reference = _cells_for(spec, scores, factor, references[factor])
        for value in levels[1:]:
            level = factor_level(factor, value).label
            differences = fold_differences(spec, _cells_for(spec, scores, factor, level), reference, factor, column).to_numpy()
            test = corrected_t_test(differences, design)
            rows.append({
                "factor": factor, "level": level, "reference": references[factor], "folds": test.units,
                "difference": test.difference, "ci_low": test.ci_low, "ci_high": test.ci_high,
                "agreeing": f"{test.agreeing}/{test.units}", "p": test.p, "note": test.note,
                "sd": float(np.std(differences, ddof=1)) if len(differences) > 1 else math.nan,
            })
    table = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "mdd")])
    table["p_holm"] = _holm(table["p"])
    testable = max(int(table["p"].notna().sum()), 1)
    table["mdd"] = [
        minimum_detectable_difference(sd, units, design, ALPHA / testable, TARGET_POWER)
        for sd, units in zip(table["sd"], table["folds"], strict=True)
    ]
    return table[COMPARISON_COLUMNS]


def _holm(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values over the testable rows; untestable rows stay NaN."""
    adjusted = pd.Series(math.nan, index=p_values.index)
    testable = p_values.notna()
    if testable.any():
        adjusted[testable] = multipletests(p_values[testable].to_numpy(), method="holm")[1]
    return adjusted


def _number(value: float, pattern: str) -> str:
    return "n/a" if math.isnan(value) else format(value, pattern)


def format_comparisons(table: pd.DataFrame) -> str:
    """Plain text: each level vs its reference, the mean paired difference with its 95% CI,
    folds agreeing in sign, Holm-adjusted p and the minimum detectable difference."""
    shown = pd.DataFrame({
        "factor": table["factor"], "level": table["level"], "reference": table["reference"], "folds": table["folds"],
        "difference": table["difference"].map(lambda v: _number(v, "+.3f")),
        "95% CI": [
            f"[{low:+.3f}, {high:+.3f}]" if not math.isnan(low) else "n/a"
            for low, high in zip(table["ci_low"], table["ci_high"], strict=True)
        ],
        "agreeing": table["agreeing"],
        "p_holm": table["p_holm"].map(lambda v: _number(v, ".3g")),
        "mdd_80%": table["mdd"].map(lambda v: _number(v, ".3f")),
        "note": table["note"],
    })
    return shown.to_string(index=False)


def verdict(table: pd.DataFrame, metric: str) -> str:
    """One sentence per comparison: significant after Holm, or not and what the design could detect, or untestable."""
    sentences = []
    for row in table.itertuples():
        name = f"{row.level} vs {row.reference} ({row.factor})"
        if math.isnan(row.p_holm):
            sentences.append(f"{name}: not testable ({row.note}).")
        elif row.p_holm >= ALPHA and row.mdd > IMPLAUSIBLE_DIFFERENCE:
            sentences.append(
                f"{name}: {metric} {row.difference:+.3f}, not significant (Holm p = {row.p_holm:.3g}), and with {row.folds} folds this "
                f"design could not detect any plausible difference (80% power needs {row.mdd:.2f})."
            )
        elif row.p_holm < ALPHA:
            sentences.append(
                f"{name}: {metric} {row.difference:+.3f}, significant after Holm (p = {row.p_holm:.3g}, {row.agreeing} folds agree)."
            )
        else:
            sentences.append(
                f"{name}: {metric} {row.difference:+.3f}, not significant (Holm p = {row.p_holm:.3g}); "
                f"this design detects a true difference of {row.mdd:.3f} with 80% power."
            )
    return "\n".join(sentences)


def one_sentence_verdict(table: pd.DataFrame, metric: str, folds: int) -> str:
    """The study's answer in one sentence: which differences are significant after Holm, which
    are not (with what the design could detect) and which could not be tested ("" when there is
    nothing to compare)."""
    if table.empty:
        return ""
    testable = table[table["p_holm"].notna()]
    groups = {
        "significant after Holm": [
            f"{r.level} vs {r.reference} {r.difference:+.3f} (Holm p = {r.p_holm:.2g})"
            for r in testable.itertuples() if r.p_holm < ALPHA
        ],
        "not significant": [
            f"{r.level} vs {r.reference} {r.difference:+.3f}" + ("" if math.isnan(r.mdd) else f" (detectable: {r.mdd:.2f})")
            for r in testable.itertuples() if r.p_holm >= ALPHA
        ],
        "not testable": [f"{r.level} vs {r.reference} ({r.note})" for r in table[table["p_holm"].isna()].itertuples()],
    }
    verdicts = "; ".join(f"{name}: {', '.join(items)}" for name, items in groups.items() if items)
    return f"Verdict on {metric} over {folds} folds: {verdicts}."
