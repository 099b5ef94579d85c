"""Early stopping that never compares different ablation cells.

Ray's schedulers rank every trial of an experiment against every other. In an ablation study
that would let ASHA stop a whole cell (say, WSI-only) because another cell (WSI+RNA) scores
higher, and the cell would end with no finished trial: the very comparison the study exists
for would be decided by the scheduler. ``PerCellScheduler`` keeps one scheduler per cell, so
trials race only against trials of their own cell, and each cell keeps its full budget.

The time axis is the number of finished repetitions (folds x seeds), not epochs: trials are
compared on the same folds, in the same order (racing over folds). Only repetition reports
reach the cell schedulers, so a trial is only ever stopped between repetitions, where its
worker group waits for the verdict (``sweeps.channel``) and ends cleanly on a stop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from modaltune.sweeps.cell_schedulers import CellRace
from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.spec import SchedulerSpec
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key


class PerCellScheduler(FIFOScheduler):
    """Routes every trial event to the scheduler of the trial's cell (made on first use)."""

    def __init__(self, make: Callable[[], TrialScheduler], metric: str, mode: str) -> None:
        super().__init__()
        self._make = make
        self._metric, self._mode = metric, mode  # TrialScheduler.metric: Tune checks results carry it
        self._cells: dict[str, TrialScheduler] = {}

    def _of(self, trial: Trial) -> TrialScheduler:
        cell = trial.config[CELL_KEY]
        if cell not in self._cells:
            self._cells[cell] = self._make()
        return self._cells[cell]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are fixed by the study spec

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if result.get(KIND_KEY) != "repetition":  # an epoch: nothing to decide between repetitions
            return TrialScheduler.CONTINUE
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{cell}: {scheduler.debug_string()}" for cell, scheduler in sorted(self._cells.items()))


def make_scheduler(plan: StudyPlan) -> TrialScheduler:
    """The spec's scheduler, one per cell; FIFO when there is nothing to stop between."""
    spec = plan.spec.scheduler
    primary = plan.spec.search.primary
    race = CellRace(cv_key(primary.name), primary.direction, DONE_KEY, len(plan.repetitions))
    if not spec.rule().stops_trials or race.total < 2 or plan.spec.search.trials_per_cell < 2:
        return FIFOScheduler()
    return PerCellScheduler(functools.partial(cell_scheduler, spec, race), race.metric, race.mode)


def cell_scheduler(spec: SchedulerSpec, race: CellRace) -> TrialScheduler:
    """A fresh scheduler for one cell (a module-level function, so the study state pickles)."""
    return spec.rule().build(race)
