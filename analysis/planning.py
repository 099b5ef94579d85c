"""``modaltune plan``: what a study will run, what it will cost and what it can detect, before it runs.

Counts come from the spec alone (cells of the design, trials per cell, folds x seeds). Cost is
an upper bound (no trial stopped early) from a pilot study's measured times: its median epoch
(``time_this_iter_s`` after each trial's first report) and its median start-up (the first
report's extra time), for the same train config on the same hardware. The minimum detectable
difference of every comparison is the corrected t-test's at 80% power and Holm's strictest
level alpha/m (analysis/inference.py), from a stated spread of per-fold paired differences or
from the pilot's own comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from modaltune.analysis.ablation import (
    ALPHA,
    IMPLAUSIBLE_DIFFERENCE,
    TARGET_POWER,
    compare_to_reference,
    reference_levels,
    repetition_scores,
)
from modaltune.analysis.inference import MIN_INTERVAL_UNITS, FoldDesign, minimum_detectable_difference
from modaltune.analysis.methods_table import METHOD_FACTOR
from modaltune.analysis.summary import load_study
from modaltune.data import Cohort
from modaltune.data.layout import CohortLayout, read_manifest
from modaltune.errors import InputError
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.factors import factor_level
from modaltune.sweeps.plan import check_study_folds
from modaltune.sweeps.resources import ResourcesSpec
from modaltune.sweeps.spec import StudySpec
from modaltune.train.config import validate_train_config


@dataclass(frozen=True)
class PilotTimes:
    source: Path
    epoch_s: float  # median seconds per epoch report
    start_s: float  # median extra seconds of a trial's first report (worker group start, data load)


@dataclass
class StudyForecast:
    spec: StudySpec
    cells: int
    trials: int
    repetitions: int
    epochs: int
    design: FoldDesign
    design_note: str
    spread: float | None
    spread_source: str
    comparisons: pd.DataFrame  # factor, level, reference, mdd
    pilot: PilotTimes | None
    sizes: list[tuple[str, ResourcesSpec]] = field(default_factory=list)  # per cell: its method (or "every cell") and its trials' size
    warnings: list[str] = field(default_factory=list)

    @property
    def confirm_runs(self) -> int:
        """The confirm stage's runs: every cell's chosen configuration on its repetitions."""
        confirm = self.spec.confirm
        if confirm is None:
            return 0
        return self.cells * len(self.spec.confirmation().fold_indices) * len(confirm.seeds)

    @property
    def runs(self) -> int:
        return self.trials * self.repetitions

    @property
    def trial_seconds(self) -> float:
        """Upper bound on the summed wall time of all trials (none stopped early)."""
        if self.pilot is None:
            return math.nan
        search = self.trials * (self.pilot.start_s + self.repetitions * self.epochs * self.pilot.epoch_s)
        confirm = (self.cells * self.pilot.start_s + self.confirm_runs * self.epochs * self.pilot.epoch_s) if self.confirm_runs else 0.0
        return search + confirm

    def costs(self) -> pd.DataFrame:
        """One row per method (per cell group when the study has no method factor): its cells,
        trials, each trial's worker group and, with a pilot, the trial-, CPU- and GPU-hours its
        cells reserve at that pilot's pace, each cell at its own size."""
        per_cell = self.trial_seconds / 3600 / self.cells if self.cells else math.nan
        rows = [
            {
                "method": group, "cells": 1, "trials": self.spec.search.trials_per_cell, "per trial": size.text(),
                "trial_hours": per_cell, "cpu_hours": per_cell * size.num_workers * size.cpus_per_worker,
                "gpu_hours": per_cell * size.num_workers * size.gpus_per_worker,
            }
            for group, size in self.sizes
        ]
        columns = ["method", "cells", "trials", "per trial", "trial_hours", "cpu_hours", "gpu_hours"]
        table = pd.DataFrame(rows, columns=columns)
        summed = table.groupby(["method", "per trial"], sort=False)[["cells", "trials", "trial_hours", "cpu_hours", "gpu_hours"]]
        return summed.sum(min_count=1).reset_index()[columns]

    def text(self) -> str:
        spec = self.spec
        lines = [
            (
                f"study {spec.name}: design {spec.design.type}, "
                f"{self.cells} cells x {spec.search.trials_per_cell} trials = {self.trials} trials"
            ),
            (
                f"repetitions per trial: {len(spec.fold_indices)} folds x {len(spec.seeds)} seeds = {self.repetitions}; "
                f"runs: {self.runs}; epochs: at most {self.runs * self.epochs} ({self.epochs} per run)"
            ),
        ]
        if self.confirm_runs:
            confirmation = spec.confirmation()
            lines.append(
                f"confirm stage: {self.cells} cells' chosen configurations x {len(confirmation.fold_indices)} folds x "
                f"{len(confirmation.seeds)} fresh seeds = {self.confirm_runs} runs; the tests below are computed on these"
            )
        if self.pilot is None:
            lines.append("compute: no pilot given (--pilot STUDY_DIR, a finished study with the same train config and hardware)")
        else:
            hours = self.trial_seconds / 3600
            costs = self.costs()
            gpu_hours, cpu_hours = float(costs["gpu_hours"].sum()), float(costs["cpu_hours"].sum())
            reserved = f"{gpu_hours:.2f} GPU-hours and {cpu_hours:.2f} CPU-hours" if gpu_hours else f"{cpu_hours:.2f} CPU-hours"
            lines.append(
                f"compute (pilot {self.pilot.source}: {self.pilot.epoch_s:.1f} s per epoch, {self.pilot.start_s:.0f} s start per trial): "
                f"at most {hours:.2f} trial-hours, {reserved} reserved, "
                f"about {hours / spec.max_concurrent * 60:.0f} min of wall time at {spec.max_concurrent} trials at once"
            )
        lines.append(self._costs_text())
        lines.append(
            f"statistics: unit = validation fold ({self.design.folds}; {self.design_note}); corrected resampled t-test, "
            f"{max(self.design.folds - 1, 0)} degrees of freedom, variance x (1/{self.design.folds} + 1/{self.design.cv_folds - 1}); "
            f"{len(self.comparisons)} comparisons, Holm (strictest level {ALPHA / max(len(self.comparisons), 1):.4g})"
        )
        if self.spread is None:
            lines.append("minimum detectable differences: no spread given (--spread SD of per-fold paired differences, or --pilot)")
        else:
            lines.append(
                f"minimum detectable difference at {TARGET_POWER:.0%} power "
                f"(per-fold difference SD {self.spread:.4f}, {self.spread_source}):"
            )
            shown = self.comparisons.assign(mdd=self.comparisons["mdd"].map(lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"))
            lines.append(shown.to_string(index=False))
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def _costs_text(self) -> str:
        """Each method's cells priced at their own trials' size (workers x per-worker CPU, GPU)."""
        costs = self.costs()
        head = "resources and cost per method (each trial's worker group: workers x per worker"
        if self.pilot is None:
            costs = costs.drop(columns=["trial_hours", "cpu_hours", "gpu_hours"])
            head += "; hours need --pilot):"
        else:
            costs = costs.assign(**{c: costs[c].map(lambda v: f"{v:.2f}") for c in ("trial_hours", "cpu_hours", "gpu_hours")})
            head += "; hours at most, at the pilot's pace):"
        return head + "\n" + costs.to_string(index=False)


def forecast(spec: StudySpec, spread: float | None = None, pilot_dir: Path | None = None, cohort_folds: int | None = None) -> StudyForecast:
    """The counts, cost and detectable differences of ``spec``; see the module docstring."""
    cells = design_cells(spec.factors, spec.design)
    tested = spec.confirmation() if spec.confirm is not None else spec  # the stage the tests are computed on
    design, note = _fold_design(tested, cohort_folds)
    epochs = validate_train_config(dict(spec.train), source=f"study {spec.name}: train").optim.epochs
    pilot = pilot_times(pilot_dir) if pilot_dir is not None else None
    source = "stated"
    if spread is None and pilot_dir is not None:
        spread, source = pilot_spread(pilot_dir), f"pooled over the comparisons of pilot {pilot_dir}"
    if spread is not None and not spread > 0:
        raise InputError(f"--spread: must be a positive standard deviation, got {spread}")
    references = reference_levels(spec)
    rows = [
        {"factor": name, "level": factor_level(name, value).label, "reference": references[name]}
        for name, levels in spec.factors.items() for value in levels[1:]
    ]
    comparisons = pd.DataFrame(rows, columns=["factor", "level", "reference"])
    alpha = ALPHA / max(len(comparisons), 1)
    mdd = minimum_detectable_difference(spread, design.folds, design, alpha, TARGET_POWER) if spread is not None else math.nan
    comparisons["mdd"] = mdd
    sizes = [(cell.levels.get(METHOD_FACTOR, "every cell"), cell.resources_in(spec.resources)) for cell in cells]
    result = StudyForecast(spec, len(cells), len(cells) * spec.search.trials_per_cell, len(spec.fold_indices) * len(spec.seeds),
                           epochs, design, note, spread, source, comparisons, pilot, sizes)
    result.warnings = _warnings(result, mdd) + _fold_warnings(spec)
    return result


def _fold_warnings(spec: StudySpec) -> list[str]:
    """The study's folds checked against its cohort as the study will (refused when a fold cannot
    be scored); what no split can give is a warning. Not checked before the cohort exists."""
    layout = CohortLayout(spec.cohort)
    if not layout.manifest.exists():
        return [f"folds not checked: {spec.cohort} does not exist yet (the study checks them before it starts)"]
    return check_study_folds(spec, Cohort(spec.cohort))


def _fold_design(spec: StudySpec, cohort_folds: int | None) -> tuple[FoldDesign, str]:
    """The folds that take turns: from --cohort-folds, the cohort's manifest, its synthetic
    section, or (said so) the study's own folds plus its test fold."""
    taking_turns: int
    if cohort_folds is not None:
        total, how = cohort_folds, "--cohort-folds"
    elif CohortLayout(spec.cohort).manifest.exists():
        total, how = read_manifest(CohortLayout(spec.cohort)).n_folds, f"cohort {spec.cohort}"
    elif spec.synthetic is not None and "n_folds" in spec.synthetic:
        total, how = int(spec.synthetic["n_folds"]), "the synthetic cohort's n_folds"
    else:
        total = max(max(spec.fold_indices), -1 if spec.test_fold is None else spec.test_fold) + 1
        how = "assumed: the cohort is not readable here, pass --cohort-folds"
    taking_turns = total - (spec.test_fold is not None)
    if taking_turns < 2:
        raise InputError(f"study {spec.name}: {total} cohort folds leave {taking_turns} to take turns in cross-validation; it needs 2")
    return FoldDesign(folds=len(spec.fold_indices), cv_folds=taking_turns), f"{total} cohort folds, {how}"


def _warnings(result: StudyForecast, mdd: float) -> list[str]:
    folds, warnings = result.design.folds, []
    if folds < 2:
        warnings.append("1 validation fold: no paired test is possible; seeds do not add independent units")
    elif folds < MIN_INTERVAL_UNITS:
        warnings.append(
            f"{folds} folds: intervals are n/a (they need {MIN_INTERVAL_UNITS}) and the t-test has {folds - 1} degree(s) of freedom"
        )
    if len(result.spec.seeds) > 1:
        warnings.append(
            f"{len(result.spec.seeds)} seeds per fold are averaged within it: they lower the per-fold noise, "
            "not the number of units; more folds buy more power"
        )
    if not math.isnan(mdd) and mdd > IMPLAUSIBLE_DIFFERENCE:
        warnings.append(
            f"the minimum detectable difference {mdd:.2f} exceeds {IMPLAUSIBLE_DIFFERENCE}: "
            "this design cannot reach significance for any plausible effect"
        )
    trials = result.spec.search.trials_per_cell
    if trials > 1 and result.spec.confirm is None:
        warnings.append(
            f"each cell is scored by its best of {trials} trials on the folds that chose it: its score is optimistic by selection "
            "(add a confirm stage: confirm: {seeds: [...]})"
        )
    elif trials > 1 and set(result.spec.confirmation().fold_indices) & set(result.spec.fold_indices):
        warnings.append(
            "the confirm stage re-scores on folds the search chose on: fresh seeds remove the optimism from seed noise, "
            "not from those folds' cases (confirm.folds disjoint from the search's removes both)"
        )
    return warnings


def pilot_times(study_dir: Path) -> PilotTimes:
    """Median epoch and start-up seconds measured by a finished study."""
    _, results, _ = _load(study_dir)
    if "time_this_iter_s" not in results.columns:
        raise InputError(f"--pilot {study_dir}: results.parquet has no time_this_iter_s column")
    first = results.sort_values(["trial_id", "time_total_s"]).groupby("trial_id").cumcount() == 0
    first = first.reindex(results.index)
    epoch = float(results.loc[~first, "time_this_iter_s"].median())
    start = float(results.loc[first, "time_this_iter_s"].median()) - epoch
    return PilotTimes(study_dir, epoch, max(start, 0.0))


def pilot_spread(study_dir: Path) -> float:
    """The pooled SD of per-fold paired differences over the pilot's comparisons (primary metric)."""
    spec, results, trials = _load(study_dir)
    folds = len(spec.fold_indices)
    table = compare_to_reference(spec, repetition_scores(spec, results, trials), spec.search.primary.name, FoldDesign(folds, max(folds, 2)))
    spreads = table["sd"].dropna().to_numpy()
    if not len(spreads):
        raise InputError(f"--pilot {study_dir}: no comparison with 2 or more folds to measure a spread from; pass --spread")
    return float(np.sqrt(np.mean(np.square(spreads))))


def _load(study_dir: Path) -> tuple[StudySpec, pd.DataFrame, pd.DataFrame]:
    spec, results, trials = load_study(study_dir)
    if results.empty:
        raise InputError(f"--pilot {study_dir}: the study has no results")
    return spec, results, trials
