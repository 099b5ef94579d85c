"""``modaltune analyze``: a study's results turned into ``report/report.md``, a self-contained
``report/report.html`` (figures embedded) and the figures as PNG.

Each section is computed by its own module (ablation tables and paired tests, the methods table, model selection,
survival analysis, tuning, cost); this one only lays them out.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import markdown
import pandas as pd

from modaltune.analysis import plots
from modaltune.analysis.ablation import (
    ALPHA,
    TARGET_POWER,
    compare_to_reference,
    format_comparisons,
    level_table,
    one_sentence_verdict,
    reference_levels,
    repetition_scores,
    verdict,
)
from modaltune.analysis.cost import cost_table, prefix_cache_line
from modaltune.analysis.hparams import write_hparams
from modaltune.analysis.inference import FoldDesign
from modaltune.analysis.methods_table import COST_COLUMNS, OVERALL, has_method_factor, methods_table, parameters_text
from modaltune.analysis.predictions import RepetitionPredictions, trial_predictions
from modaltune.analysis.selection import OPTIMISM_NOTE, Selection, held_out_metrics, select_model
from modaltune.analysis.summary import cell_summary, final_epochs, format_summary, load_confirmation, load_study
from modaltune.analysis.survival import (
    bootstrap_c_index,
    ipcw_metrics,
    logrank_by_cohort,
    pooled_out_of_fold,
    risk_groups,
    summarise_ipcw,
)
from modaltune.analysis.tuning import param_importances, pareto_front
from modaltune.atomic import write_text_atomic
from modaltune.data.layout import CohortLayout, read_manifest
from modaltune.errors import InputError
from modaltune.metrics import METRICS
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Report:
    directory: Path
    markdown: Path
    html: Path
    headline: str
    comparisons: str
    verdict: str  # the primary metric's comparisons in one sentence ("" without factors)
    cache: str  # what the frozen-prefix cache saved and holds ("" when no run used it)
    spec: StudySpec
    selection: Selection | None
    test_metrics: pd.DataFrame | None  # the selected configuration's fold models on the held-out fold

    def console_text(self) -> str:
        """What the command line prints: the headline table, the paired comparisons, where the report is."""
        parts = [self.headline]
        if self.comparisons:
            parts.append(self.comparisons)
        if self.selection is not None:
            row = self.selection.row
            parts.append(
                f"selected (1-SE rule on {self.selection.metric}): trial {self.selection.trial_id}, "
                f"cell {row['cell']}, {self.selection.score_text}"
            )
        if self.verdict:
            parts.append(self.verdict)
        if self.cache:
            parts.append(self.cache)
        parts.append(f"report: {self.html}")
        return "\n\n".join(parts)


def analyze_study(study_dir: str | Path, metric: str | None = None, n_boot: int = 1000) -> Report:
    """Write the report of the study in ``study_dir``; see the module docstring."""
    study_dir = Path(study_dir)
    if not StudyLayout(study_dir).spec.exists():
        raise InputError(f"{study_dir}: not a study folder (no study.yaml)")
    spec, results, trials = load_study(study_dir)
    if results.empty or trials.empty:
        raise InputError(f"{study_dir}: the study has no results yet")
    metric = metric or spec.search.primary.name
    out = StudyLayout(study_dir).report
    out.mkdir(parents=True, exist_ok=True)
    builder = _ReportBuilder(out)
    headline = format_summary(cell_summary(spec, results, trials), spec)

    builder.text(f"# Study `{spec.name}`\n")
    states = trials["state"].value_counts().to_dict()
    builder.text(
        f"Cohort `{spec.cohort}`; design `{spec.design.type}`; {len(trials)} trials "
        f"({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); repetitions: folds {spec.fold_indices} x seeds {spec.seeds}"
        + ("; site-preserved folds (each tissue source site in one fold, checked before the study)" if spec.folds_by == "site" else "")
        + (f"; held-out test fold {spec.test_fold}." if spec.test_fold is not None else "; no held-out test fold.")
    )
    builder.text("\n## Headline: each cell's best configuration\n")
    builder.text("Mean ± std over repetitions of the final-epoch validation metrics of each cell's best finished trial.\n")
    builder.text("```\n" + headline + "\n```")
    comparisons = sentence = ""
    confirmation = load_confirmation(study_dir)
    if spec.factors and confirmation is not None:
        spec_c, results_c, trials_c = confirmation
        builder.text("\n## Confirmation: each cell's chosen configuration, retrained\n")
        builder.text(
            f"The confirm stage trained each cell's best search configuration again on seeds {spec_c.seeds}, folds "
            f"{spec_c.fold_indices}; these runs chose nothing, so the tables and tests below carry no optimism from the search's "
            "seed noise" + (", nor from its validation cases (other folds)." if not set(spec_c.fold_indices) & set(spec.fold_indices)
                            else "; on the search's own folds, what the configurations fitted to those folds' cases remains.")
            + " Mean ± std over repetitions:\n"
        )
        builder.text("```\n" + format_summary(cell_summary(spec_c, results_c, trials_c), spec_c) + "\n```")
        comparisons, sentence = _ablation_sections(
            builder, spec_c, results_c, trials_c, metric, fold_design(spec_c), SearchOrConfirm.CONFIRMATION
        )
        if has_method_factor(spec_c):
            _methods_section(builder, spec_c, results_c, trials_c, metric, fold_design(spec_c), SearchOrConfirm.CONFIRMATION)
        _ablation_sections(builder, spec, results, trials, metric, fold_design(spec), SearchOrConfirm.SEARCH_CONFIRMED)
    elif spec.factors:
        comparisons, sentence = _ablation_sections(builder, spec, results, trials, metric, fold_design(spec), SearchOrConfirm.SEARCH)
        if has_method_factor(spec):
            _methods_section(builder, spec, results, trials, metric, fold_design(spec), SearchOrConfirm.SEARCH)
    selection, test_metrics = _selection_section(builder, study_dir, spec, results, trials, metric, n_boot)
    _tuning_section(builder, spec, results, trials, metric)
    builder.text("\n## Cost\n")
    builder.text("Reserved resources x wall time per cell (what a cluster bills).\n")
    builder.table(cost_table(spec, results, trials))
    cache = prefix_cache_line(results)
    if cache:
        builder.text(cache + "\n")
    hparams = write_hparams(study_dir, spec, results, trials)
    builder.text(
        f"\n## TensorBoard\n\nHParams view of every trial: `tensorboard --logdir {hparams.parent}`; "
        f"per-epoch curves of every run: `tensorboard --logdir {StudyLayout(study_dir).runs}`."
    )
    report = builder.write(spec, headline, comparisons, sentence, cache, selection, test_metrics)
    logger.info("report written to %s", report.html)
    return report


def fold_design(spec: StudySpec) -> FoldDesign:
    """The study's validation folds and the folds that take turns (for the corrected t-test)."""
    cv_folds = read_manifest(CohortLayout(spec.cohort)).n_folds - (spec.test_fold is not None)
    return FoldDesign(folds=len(spec.fold_indices), cv_folds=cv_folds)


class _ReportBuilder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.parts: list[str] = []

    def text(self, text: str) -> None:
        self.parts.append(text)

    def table(self, frame: pd.DataFrame, floatfmt: str = ".3g") -> None:
        self.parts.append(frame.to_markdown(index=False, floatfmt=floatfmt) + "\n")

    def figure(self, draw: Callable[[Path], Path], name: str, caption: str) -> None:
        path = draw(self.directory / name)
        self.parts.append(f"![{caption}]({path.name})\n")

    def write(
        self, spec: StudySpec, headline: str, comparisons: str, verdict: str, cache: str, selection: Selection | None,
        test_metrics: pd.DataFrame | None,
    ) -> Report:
        body = "\n".join(self.parts) + "\n"
        md_path = self.directory / "report.md"
        write_text_atomic(md_path, body)
        html_path = self.directory / "report.html"
        write_text_atomic(html_path, _html(spec.name, body, self.directory))
        return Report(self.directory, md_path, html_path, headline, comparisons, verdict, cache, spec, selection, test_metrics)


def _html(title: str, body: str, directory: Path) -> str:
    """Markdown to HTML with every PNG inlined as a data URI, so the file travels alone."""
    content = markdown.markdown(body, extensions=["tables", "fenced_code"])

    def inline(match: re.Match[str]) -> str:
        data = base64.b64encode((directory / match.group(1)).read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    content = re.sub(r'src="([^"/]+\.png)"', inline, content)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#f3f3f3}pre{background:#f7f7f7;padding:0.8em;overflow-x:auto}img{max-width:100%}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>\n'
        f"<body>\n{content}\n</body></html>\n"
    )


def _fmt(mean: float, std: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
    return text + ("" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]")


class SearchOrConfirm(Enum):
    """Which runs an ablation section is computed on, and how the report labels it."""

    SEARCH = ("search stage", "", "")
    SEARCH_CONFIRMED = ("search stage, for reference", "search_", " The confirmation above is the one to read.")
    CONFIRMATION = ("confirmation stage", "confirm_", "")

    def __init__(self, title: str, prefix: str, note: str) -> None:
        self.title, self.prefix, self.note = title, prefix, note

    def describe(self, spec: StudySpec) -> str:
        if self is SearchOrConfirm.CONFIRMATION:
            return f"Confirmation-stage scores: each cell's chosen configuration, retrained on seeds {spec.seeds}."
        return (
            f"Search-stage scores: each cell's best of {spec.search.trials_per_cell} trial(s), chosen on the same folds that "
            f"score it, so optimistic by selection.{self.note}"
        )


def _ablation_sections(
    builder: _ReportBuilder,
    spec: StudySpec,
    results: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    design: FoldDesign,
    stage: SearchOrConfirm,
) -> tuple[str, str]:
    """The ablation tables, paired tests and forest plots; returns the primary metric's
    comparisons with their verdicts as plain text, and its one-sentence verdict."""
    scores = repetition_scores(spec, results, trials)
    references = reference_levels(spec)
    builder.text(f"\n## Ablation tables ({stage.title})\n")
    builder.text(
        f"{stage.describe(spec)} One row per level of each factor; per cancer type and overall: mean ± std over the "
        f"{design.folds} validation folds (seeds averaged within a fold) of the final-epoch validation metric, "
        "[95% corrected t-interval of the mean on the logit scale, so inside [0, 1]; n/a from fewer than 3 folds]. "
        "Reference levels are marked *.\n"
    )
    for name in METRICS.names():
        if f"val_{name}" not in scores.columns:
            continue
        levels = level_table(spec, scores, name, design)
        groups = [c[: -len("_mean")] for c in levels.columns if c.endswith("_mean")]
        shown = pd.DataFrame({"factor": levels["factor"], "level": [
            f"{lv}*" if references[f] == lv else lv for f, lv in zip(levels["factor"], levels["level"], strict=True)
        ]})
        for group in groups:
            shown[group] = [
                _fmt(*values)
                for values in zip(
                    levels[f"{group}_mean"], levels[f"{group}_std"], levels[f"{group}_ci_low"], levels[f"{group}_ci_high"], strict=True
                )
            ]
        builder.text(f"\n### {name}\n")
        builder.table(shown)
        notes = sorted({n for n in levels["overall_note"] if n})
        if notes:
            builder.text("Intervals not shown: " + "; ".join(notes) + ".\n")
        if name in (metric, "balanced_accuracy") and levels["factor"].duplicated().any():
            builder.figure(
                lambda p, lv=levels, n=name: plots.ablation_plot(lv, n, p), f"{stage.prefix}ablation_{name}.png", f"ablation: {name}"
            )
    builder.text(f"\n## Statistics: each level against its reference ({stage.title})\n")
    builder.text(
        f"Unit: a validation fold ({design.folds} here). Seeds re-train on the same split, so they are averaged within their "
        "fold, never counted as independent; in crossed and sampled designs a level's fold score is the mean over its cells. "
        "Test: the corrected resampled t-test (Nadeau & Bengio, 2003) on the per-fold paired differences, k - 1 degrees of "
        f"freedom, variance widened by 1/k + n_test/n_train = 1/{design.folds} + 1/{design.cv_folds - 1} because training sets "
        "overlap; it is calibrated under that overlap model (tests/analysis/test_calibration.py), where rank tests are not. "
        f"p-values Holm-adjusted across the comparisons of a metric. `mdd` is the minimum detectable difference: the true "
        f"difference the test finds with {TARGET_POWER:.0%} power at alpha/m (Holm's strictest step), given the observed spread "
        "of the per-fold differences: what a non-significant comparison could have seen. "
        f"{stage.describe(spec)}\n"
    )
    console = sentence = ""
    for name in dict.fromkeys((metric, "balanced_accuracy")):
        if f"val_{name}" in scores.columns:
            comparisons = compare_to_reference(spec, scores, name, design)
            builder.text(f"\n### {name}\n")
            if comparisons.empty:  # every factor has one level: a study of one cell
                builder.text("No factor has a second level: nothing to compare.\n")
                continue
            builder.table(comparisons)
            if comparisons["difference"].notna().any():
                builder.figure(
                    lambda p, c=comparisons, n=name: plots.forest_plot(c, n, p),
                    f"{stage.prefix}forest_{name}.png",
                    f"paired differences: {name}",
                )
            said = verdict(comparisons, name)
            builder.text("**Verdict.** " + said.replace("\n", " ") + "\n")
            if name == metric:
                console = (
                    f"{name}: each level vs the reference, paired over {design.folds} folds (corrected t, Holm-adjusted p, "
                    f"minimum detectable difference at {TARGET_POWER:.0%} power, alpha {ALPHA})\n"
                    f"{format_comparisons(comparisons)}\n\n{said}"
                )
                sentence = one_sentence_verdict(comparisons, name, design.folds)
                builder.text(f"\n> {sentence}\n")
    return console, sentence


def _methods_section(
    builder: _ReportBuilder,
    spec: StudySpec,
    results: pd.DataFrame,
    trials: pd.DataFrame,
    metric: str,
    design: FoldDesign,
    stage: SearchOrConfirm,
) -> None:
    """The methods table (analysis/methods_table.py): scores with the best per column in bold, then
    each method's paired difference to the reference, its hours and its trainable parameters."""
    table = methods_table(spec, results, trials, list(dict.fromkeys((metric, "c_index", "balanced_accuracy"))), design)
    rows = table.rows
    builder.text(f"\n## Methods table ({stage.title})\n")
    where = (
        "per cancer type (each on its own validation cases, the same for every method) and overall" if table.per_cancer
        else "overall only: the results carry no per-cancer metrics"
    )
    builder.text(
        f"{stage.describe(spec)} One row per level of the `method` factor (reference *), its cells as in the ablation tables; "
        f"{where}: mean ± sd over the {design.folds} validation folds (seeds averaged within a fold) of the final-epoch "
        "validation metric; the best per column in bold.\n"
    )
    shown = pd.DataFrame({"method": [f"{label}*" if ref else label for label, ref in zip(rows.index, rows["reference"], strict=True)]})
    for column in table.columns:
        name = column.metric if column.group == OVERALL and not table.per_cancer else f"{column.group} {column.metric}"
        shown[name] = [
            _bold(_fmt(mean, std, math.nan, math.nan), best)
            for mean, std, best in zip(rows[f"{column.key}_mean"], rows[f"{column.key}_std"], rows[f"{column.key}_best"], strict=True)
        ]
    builder.table(shown)
    versus = pd.DataFrame({"method": shown["method"]})
    for name in table.metrics:
        versus[f"{name} vs {table.reference}"] = [
            "reference" if ref else _difference_text(*values)
            for ref, *values in zip(
                rows["reference"], rows[f"{name}_difference"], rows[f"{name}_ci_low"], rows[f"{name}_ci_high"], strict=True
            )
        ]
        for column, pattern in (("p_holm", ".3g"), ("mdd", ".3f")):
            versus[f"{name} {column}"] = [
                "" if ref else _number(value, pattern) for ref, value in zip(rows["reference"], rows[f"{name}_{column}"], strict=True)
            ]
    versus["trainable parameters"] = [parameters_text(lo, hi) for lo, hi in zip(rows["trainable_min"], rows["trainable_max"], strict=True)]
    for column in COST_COLUMNS:
        versus[column.replace("_", " ")] = [_number(v, ".3g") for v in rows[column]]
    builder.text(
        f"Each method against {table.reference}, paired by fold as in the statistics section (mean difference [95% CI], "
        f"Holm-adjusted p over all comparisons of the metric, minimum detectable difference at {TARGET_POWER:.0%} power); "
        "trainable parameters as each run reported them (a range where the method's cells differ; n/a for runs that did "
        "not report them); trials and reserved hours summed over all the method's cells.\n"
    )
    builder.table(versus)


def _bold(text: str, best: bool) -> str:
    return f"**{text}**" if best and text != "n/a" else text


def _number(value: float, pattern: str) -> str:
    return "n/a" if math.isnan(value) else format(value, pattern)


def _difference_text(difference: float, low: float, high: float) -> str:
    if math.isnan(difference):
        return "n/a"
    return f"{difference:+.3f}" + ("" if math.isnan(low) else f" [{low:+.3f}, {high:+.3f}]")


def _selection_section(
    builder: _ReportBuilder, study_dir: Path, spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metric: str, n_boot: int
) -> tuple[Selection | None, pd.DataFrame | None]:
    """The selection, and its fold models' held-out metrics (None without a test fold)."""
    builder.text("\n## Model selection\n")
    try:
        selection = select_model(study_dir, spec, results, trials, metric)
    except InputError as exc:
        builder.text(f"No model selected: {exc}.")
        return None, None
    row = selection.row
    builder.text(
        f"Rule: best mean validation {metric} over repetitions, then the one-standard-error rule: of the trials "
        f"within one SE of the best ({selection.best_trial_id}, bar {selection.bar:.4f}), the one with the fewest "
        f"trainable parameters. **Selected: trial `{selection.trial_id}`** (cell {row['cell']}: "
        + ", ".join(f"{f} = {row[f]}" for f in spec.factors)
        + f"), {metric} {selection.score_text}, {int(row['trainable_params']):,} trainable parameters.\n"
    )
    for warning in selection.warnings:
        builder.text(f"> **Warning:** {warning}.\n")
    builder.text(f"> {OPTIMISM_NOTE} It was chosen among {len(selection.candidates)} candidates.\n")
    params = [p for p in spec.search.params if p in selection.candidates.columns]
    columns = ["trial_id", "cell", *spec.factors, *params, "mean", "se", "n", "trainable_params", "within_1se", "selected"]
    builder.table(selection.candidates[columns].head(15), floatfmt=".4g")
    finals = final_epochs(results)
    try:
        repetitions = trial_predictions(study_dir, selection.trial_id, finals[finals["trial_id"] == selection.trial_id])
    except FileNotFoundError as exc:
        builder.text(f"No held-out or survival analysis of the selected model: {exc}.")
        return selection, None
    test_metrics = held_out_metrics(spec, repetitions)
    _test_section(builder, spec, test_metrics)
    _survival_section(builder, repetitions, n_boot)
    return selection, test_metrics


def _test_section(builder: _ReportBuilder, spec: StudySpec, test: pd.DataFrame | None) -> None:
    builder.text("\n### Held-out test fold\n")
    if test is None:
        builder.text(
            "No held-out test fold is configured, so there is no unbiased estimate of the selected model; "
            "set `test_fold` in the study spec."
        )
        return
    metrics = [c for c in test.columns if c not in ("fold", "seed")]
    summary = {m: f"{test[m].mean():.3f} ± {test[m].std(ddof=1):.3f}" if len(test) > 1 else f"{test[m].mean():.3f}" for m in metrics}
    builder.text(
        f"Fold {spec.test_fold} was never trained on, validated on or selected with. Each of the selected configuration's "
        f"{len(test)} fold models scored on it (mean ± std over models):\n"
    )
    builder.table(pd.DataFrame([summary]))


def _survival_section(builder: _ReportBuilder, repetitions: list[RepetitionPredictions], n_boot: int) -> None:
    builder.text("\n### Survival analysis of the selected model (out-of-fold)\n")
    pooled = pooled_out_of_fold(repetitions)
    builder.text(
        f"Harrell's C-index (lifelines) on the pooled out-of-fold predictions, each fold's risks as percentiles of its "
        f"training-set risks; 95% percentile bootstrap intervals over {n_boot} resamples of cases within each cancer type.\n"
    )
    builder.table(bootstrap_c_index(pooled, n_boot=n_boot))
    groups = risk_groups(repetitions)
    if groups.empty:
        builder.text("Kaplan–Meier risk groups: not available, the runs saved no training-set predictions to fix the cutoffs on.")
    else:
        logrank = logrank_by_cohort(groups)
        builder.text(
            "\nKaplan–Meier curves of high- and low-risk validation cases (first seed); each fold's cutoff is the median "
            "risk of that fold's *training* cases, never of the cases shown. Log-rank test (lifelines).\n"
        )
        builder.table(logrank)
        builder.figure(lambda p: plots.kaplan_meier_plot(groups, logrank, p), "kaplan_meier.png", "Kaplan-Meier curves by risk group")
    per_repetition = ipcw_metrics(repetitions)
    builder.text(
        "\nUno's IPCW C-index, mean cumulative/dynamic time-dependent AUC and integrated Brier score (scikit-survival), "
        "censoring estimated on each fold's training cases, at the validation death times between their 10th and 80th "
        "percentiles; the Brier score's survival curves come from a Breslow baseline fitted on the training risks. "
        "Mean ± std over repetitions; n/a with the reason where a value cannot be computed.\n"
    )
    summary = summarise_ipcw(per_repetition)
    shown = pd.DataFrame({"cohort": summary["cohort"], "repetitions": summary["repetitions"]})
    for name in ("uno_c", "td_auc", "ibs"):
        shown[name] = [_fmt(m, s, math.nan, math.nan) for m, s in zip(summary[f"{name}_mean"], summary[f"{name}_std"], strict=True)]
    shown["note"] = summary["note"]
    builder.table(shown)


def _tuning_section(builder: _ReportBuilder, spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame, metric: str) -> None:
    builder.text("\n## What the search learned\n")
    importances, note = param_importances(spec, results, trials, metric)
    builder.text(f"\n### Hyperparameter importance ({metric})\n\n{note}.\n")
    if not importances.empty:
        builder.table(importances)
        builder.figure(lambda p: plots.importance_plot(importances, p), "importance.png", "hyperparameter importance")
    metrics = ("c_index", "balanced_accuracy")
    front = pareto_front(spec, results, trials, metrics)
    builder.text("\n### Pareto front: C-index vs balanced accuracy\n")
    if front.empty:
        builder.text("No finished trial has both metrics.")
        return
    builder.text("Finished trials' means over repetitions; the front holds the trials no other trial beats on both.\n")
    builder.table(front[front["pareto"]].drop(columns=["pareto"]).sort_values(metrics[0], ascending=False), floatfmt=".4g")
    builder.figure(lambda p: plots.pareto_plot(front, metrics, p), "pareto.png", "Pareto front")



