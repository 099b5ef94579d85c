"""The report's figures, as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from lifelines import KaplanMeierFitter

DPI = 110


def _save(figure: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def ablation_plot(levels: pd.DataFrame, metric: str, path: Path) -> Path:
    """One panel per factor with two or more levels: the mean over repetitions per level with its 95% CI."""
    counts = levels["factor"].value_counts()
    factors = [f for f in dict.fromkeys(levels["factor"]) if counts[f] > 1]
    figure, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors) + 0.8, 3.2), squeeze=False)
    for axis, factor in zip(axes[0], factors, strict=True):
        rows = levels[levels["factor"] == factor]
        means = rows["overall_mean"].to_numpy(dtype=float)
        low = means - rows["overall_ci_low"].to_numpy(dtype=float)
        high = rows["overall_ci_high"].to_numpy(dtype=float) - means
        axis.bar(range(len(rows)), means, yerr=[low, high], capsize=4, color="#4c72b0")
        axis.set_xticks(range(len(rows)), rows["level"], rotation=30, ha="right")
        axis.set_title(factor)
        axis.set_ylabel(metric if axis is axes[0][0] else "")
        finite = [v for v in rows["overall_ci_low"] if not math.isnan(v)]
        if finite:
            axis.set_ylim(max(0.0, min(finite) - 0.05), None)
    return _save(figure, path)


def kaplan_meier_plot(groups: pd.DataFrame, logrank: pd.DataFrame, path: Path) -> Path:
    """Per cancer type: Kaplan-Meier curves of the high- and low-risk groups, log-rank p in the title."""
    cohorts = sorted(groups["cohort"].unique())
    figure, axes = plt.subplots(1, len(cohorts), figsize=(4.2 * len(cohorts), 3.4), squeeze=False)
    p_values = logrank.set_index("cohort")["logrank_p"]
    for axis, cohort in zip(axes[0], cohorts, strict=True):
        frame = groups[groups["cohort"] == cohort]
        for group, colour in (("low", "#4c72b0"), ("high", "#c44e52")):
            part = frame[frame["group"] == group]
            if len(part):
                fitted = KaplanMeierFitter(label=f"{group} risk (n={len(part)})").fit(part["time"], part["event"])
                fitted.plot_survival_function(ax=axis, color=colour)
        p = p_values.get(cohort, math.nan)
        axis.set_title(f"{cohort}: log-rank p = {'n/a' if math.isnan(p) else f'{p:.3g}'}")
        axis.set_xlabel("time")
        axis.set_ylabel("survival probability")
    return _save(figure, path)


def pareto_plot(table: pd.DataFrame, metrics: tuple[str, str], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(4.6, 3.6))
    rest, front = table[~table["pareto"]], table[table["pareto"]].sort_values(metrics[0])
    axis.scatter(rest[metrics[0]], rest[metrics[1]], color="#999999", label="trials")
    axis.plot(front[metrics[0]], front[metrics[1]], "o-", color="#c44e52", label="Pareto front")
    axis.set_xlabel(metrics[0])
    axis.set_ylabel(metrics[1])
    axis.legend()
    return _save(figure, path)


def importance_plot(table: pd.DataFrame, path: Path) -> Path:
    ordered = table.sort_values("importance")
    figure, axis = plt.subplots(figsize=(4.6, 0.5 * len(ordered) + 1.2))
    axis.barh(ordered["parameter"], ordered["importance"], color="#55a868")
    axis.set_xlabel("importance")
    return _save(figure, path)


def forest_plot(comparisons: pd.DataFrame, metric: str, path: Path) -> Path:
    """Each level's paired difference from its reference with its 95% CI and Holm-adjusted p."""
    rows = comparisons.iloc[::-1].reset_index(drop=True)
    figure, axis = plt.subplots(figsize=(7.0, 0.45 * len(rows) + 1.3))
    for y, row in rows.iterrows():
        if math.isnan(row["difference"]):
            continue
        significant = not math.isnan(row["p_holm"]) and row["p_holm"] < 0.05
        colour = "#c44e52" if significant else "#4c72b0"
        if not math.isnan(row["ci_low"]):
            axis.plot([row["ci_low"], row["ci_high"]], [y, y], color=colour, linewidth=2)
        axis.plot(row["difference"], y, "o", color=colour)
        p = "n/a" if math.isnan(row["p_holm"]) else f"{row['p_holm']:.3g}"
        axis.annotate(f"Holm p={p}", (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    axis.axvline(0.0, color="#555555", linestyle="--", linewidth=1)
    axis.set_yticks(range(len(rows)), [f"{r.factor}: {r.level} vs {r.reference}" for r in rows.itertuples()])
    axis.set_xlabel(f"{metric}: level - reference, 95% CI")
    return _save(figure, path)
