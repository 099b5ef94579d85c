"""The methods table of a study with a ``method`` factor, laid out as the ModalTune paper's Table 1:
one row per method, columns per cancer type x metric on the same validation cases, the best per
column marked, and beside each method its paired difference to the reference method, what it
cost and how many weights it trains.

Why a table of its own: the ablation tables put the methods among every other factor's levels;
a reader comparing methods wants them side by side with their price. Every number comes from the
code that computes it elsewhere in the report, so the two never disagree: scores from
``level_table`` (mean ± sd over folds, seeds averaged within a fold), tests from
``compare_to_reference`` (paired by fold, Holm-adjusted over all comparisons of the metric, not
only the methods'; minimum detectable difference), hours from ``cost_table``. Trainable
parameters are the ``trainable_parameters`` each run reports (NaN for runs that predate it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from modaltune.analysis.ablation import compare_to_reference, level_table, reference_levels, repetition_scores
from modaltune.analysis.cost import cost_table
from modaltune.analysis.inference import FoldDesign
from modaltune.metrics import METRICS
from modaltune.sweeps.factors import factor_level
from modaltune.sweeps.spec import StudySpec

METHOD_FACTOR = "method"
TRAINABLE_COLUMN = "trainable_parameters"  # reported by every run (modaltune/train/worker.py)
OVERALL = "overall"
COST_COLUMNS = ("trials", "wall_hours", "cpu_hours", "gpu_hours")


@dataclass(frozen=True)
class ScoreColumn:
    """One column of the table: a cancer type (or ``overall``, the pan-cancer metric) and a metric."""

    group: str
    metric: str

    @property
    def key(self) -> str:
        return f"{self.group}/{self.metric}"


@dataclass(frozen=True)
class MethodsTable:
    """``rows``, indexed by method label in the spec's order: ``reference`` (bool); per score
    column ``<key>_mean``, ``<key>_std``, ``<key>_folds``, ``<key>_best`` (bool); per metric
    ``<metric>_difference``, ``_ci_low``, ``_ci_high``, ``_p_holm``, ``_mdd``, ``_note`` (NaN and
    "" on the reference row); the cost columns summed over the method's cells; and
    ``trainable_min`` / ``trainable_max`` over its scored cells (NaN where not recorded)."""

    reference: str
    metrics: list[str]
    columns: list[ScoreColumn]
    per_cancer: bool  # False: the results carry no per-cancer metrics, the columns are the overall ones
    rows: pd.DataFrame


def has_method_factor(spec: StudySpec) -> bool:
    return METHOD_FACTOR in spec.factors


def methods_table(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metrics: list[str], design: FoldDesign) -> MethodsTable:
    """The table for ``metrics`` (those the results carry and the metric registry knows; the
    others are left out); see the module docstring."""
    if not has_method_factor(spec):
        raise ValueError(f"study {spec.name!r} has no {METHOD_FACTOR!r} factor")
    scores = repetition_scores(spec, results, trials)
    metrics = [m for m in metrics if m in METRICS and f"val_{m}" in scores.columns]
    labels = [factor_level(METHOD_FACTOR, value).label for value in spec.factors[METHOD_FACTOR]]
    rows = pd.DataFrame(index=pd.Index(labels, name=METHOD_FACTOR))
    reference = reference_levels(spec)[METHOD_FACTOR]
    rows["reference"] = rows.index == reference
    columns: list[ScoreColumn] = []
    for metric in metrics:
        levels = level_table(spec, scores, metric, design)
        levels = levels[levels["factor"] == METHOD_FACTOR].set_index("level")
        groups = [c[: -len("_mean")] for c in levels.columns if c.endswith("_mean")]
        for group in groups:
            column = ScoreColumn(group, metric)
            columns.append(column)
            rows[f"{column.key}_mean"] = levels[f"{group}_mean"]
            rows[f"{column.key}_std"] = levels[f"{group}_std"]
            rows[f"{column.key}_folds"] = levels[f"{group}_n"]
            rows[f"{column.key}_best"] = _best(rows[f"{column.key}_mean"], METRICS[metric].direction)
        rows = rows.join(_differences(spec, scores, metric, design))
    columns.sort(key=lambda c: (c.group == OVERALL, c.group, metrics.index(c.metric)))
    rows = rows.join(_cost(spec, results, trials)).join(_trainable(scores))
    per_cancer = any(c.group != OVERALL for c in columns)
    return MethodsTable(reference, metrics, columns, per_cancer, rows)


def _best(means: pd.Series, direction: str) -> pd.Series:
    """Which methods hold the column's best mean (all of them on a tie); none when no mean exists."""
    if means.isna().all():
        return pd.Series(False, index=means.index)
    best = means.max() if direction == "max" else means.min()
    return means == best


def _differences(spec: StudySpec, scores: pd.DataFrame, metric: str, design: FoldDesign) -> pd.DataFrame:
    """Each method against the reference method, as ``compare_to_reference`` tests it."""
    table = compare_to_reference(spec, scores, metric, design)
    table = table[table["factor"] == METHOD_FACTOR].set_index("level")
    kept = ["difference", "ci_low", "ci_high", "folds", "p_holm", "mdd", "note"]
    return table[kept].rename(columns={c: f"{metric}_{c}" for c in kept})


def _cost(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Trials and hours summed over every cell of the method: what running it cost in this study."""
    cells = cost_table(spec, results, trials)
    cells = cells[cells["cell"] != "total"]
    return cells.groupby(cells[METHOD_FACTOR].astype(str))[list(COST_COLUMNS)].sum()


def _trainable(scores: pd.DataFrame) -> pd.DataFrame:
    """The smallest and largest trainable-parameter count over the method's scored runs (several
    cells of one method differ when another factor changes the network's size)."""
    if TRAINABLE_COLUMN not in scores.columns:
        return pd.DataFrame(columns=["trainable_min", "trainable_max"], dtype=float)
    counts = scores[TRAINABLE_COLUMN].astype(float).groupby(scores[METHOD_FACTOR].astype(str))
    return pd.DataFrame({"trainable_min": counts.min(), "trainable_max": counts.max()})


def parameters_text(low: float, high: float) -> str:
    """``12,345``, a range ``1,024–4,096`` when the method's cells differ, ``n/a`` when not recorded."""
    if math.isnan(low):
        return "n/a"
    return f"{low:,.0f}" if low == high else f"{low:,.0f}–{high:,.0f}"
