"""Nested search: an outer grid of ablation cells, an inner Optuna study per cell.

Ray's ``OptunaSearch`` refuses ``tune.grid_search`` in its space, and one Optuna study over
"factor x hyperparameters" would spend its budget unevenly across cells. ``CellSearcher`` is
one Tune searcher that owns one ``OptunaSearch`` per cell, all with the same sampler, seed and
budget, and hands out trials round-robin so every cell gets ``trials_per_cell`` trials and a
partly finished study is still balanced. Using the same sampler seed in every cell gives each
cell the same first proposals: paired comparisons across cells.

A trial runs every repetition (fold x seed) in turn and reports the running mean after each;
the scheduler may stop it between repetitions (racing over folds). Optuna is told such a
trial was PRUNED, with its per-repetition values as intermediate values, rather than the
stock behaviour of recording a partial mean as a COMPLETE value.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps.spec import Distribution, SearchSpec

logger = logging.getLogger(__name__)

CELL_KEY = "cell"
KIND_KEY = "kind"  # "epoch" (one epoch of one repetition) or "repetition" (a repetition finished)
DONE_KEY = "repetitions_done"


def cv_key(metric: str) -> str:
    """The reported running mean over finished repetitions of ``val_<metric>``."""
    return f"cv_{metric}"


def optuna_distribution(dist: Distribution) -> optuna.distributions.BaseDistribution:
    if dist.type == "categorical":
        return optuna.distributions.CategoricalDistribution(dist.choices or [])
    if dist.type == "int":
        return optuna.distributions.IntDistribution(int(dist.low or 0), int(dist.high or 0), step=dist.step or 1, log=dist.log)
    return optuna.distributions.FloatDistribution(dist.low or 0.0, dist.high or 0.0, log=dist.type == "loguniform" or dist.log)


def make_sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "grid":
        return _BudgetedGridSampler({k: list(d.choices or []) for k, d in search.params.items()}, seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=search.seed)


class _BudgetedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop: ``after_trial`` calls ``study.stop()`` once the
    grid is visited, which only works inside ``study.optimize`` and raises under ask-and-tell,
    as here. A cell's budget (``trials_per_cell``) says when it is done."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        return None


class CellOptunaSearch(OptunaSearch):
    """``OptunaSearch`` for one cell, aware that a trial is finished only after every repetition."""

    def __init__(self, search: SearchSpec, repetitions: int) -> None:
        metrics = [cv_key(m.name) for m in search.metrics]
        modes = [m.direction for m in search.metrics]
        single = len(metrics) == 1
        super().__init__(
            space={key: optuna_distribution(dist) for key, dist in search.params.items()},
            metric=metrics[0] if single else metrics,
            mode=modes[0] if single else modes,
            sampler=make_sampler(search),
        )
        self.repetitions = repetitions
        self._reported_steps: dict[str, set[int]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Per-repetition running means become Optuna intermediate values (single objective)."""
        if result.get(KIND_KEY) != "repetition" or isinstance(self.metric, list) or trial_id in self._completed_trials:
            return
        step = int(result[DONE_KEY])
        reported = self._reported_steps.setdefault(trial_id, set())
        if step not in reported:
            self._ot_trials[trial_id].report(float(result[self.metric]), step=step)
            reported.add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result is not None:
            # When the scheduler stops a trial, Tune completes it without passing that last result
            # through on_trial_result: record it here, or a pruned trial would lose its evidence.
            self.on_trial_result(trial_id, result)
        ot_trial = self._ot_trials[trial_id]
        finished = result is not None and result.get(DONE_KEY) == self.repetitions
        if error:
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
        elif not finished:
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            metrics = self.metric if isinstance(self.metric, list) else [self.metric]
            values = [float(result[m]) for m in metrics]  # type: ignore[index]
            try:
                self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0])
            except ValueError as exc:  # NaN: Optuna records the trial as failed and says why
                logger.warning("trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


class CellSearcher(Searcher):
    """One Tune searcher over all cells; suggestions carry the cell id and its factor levels."""

    def __init__(self, cells: dict[str, dict[str, str]], search: SearchSpec, repetitions: int) -> None:
        super().__init__(metric=cv_key(search.primary.name), mode=search.primary.direction)
        self._levels = cells
        self._budget = search.trials_per_cell
        # Without tuned params every trial of a cell is the same config; no Optuna study is needed.
        self._searches = {cell: CellOptunaSearch(search, repetitions) for cell in cells} if search.params else {}
        self._issued = dict.fromkeys(cells, 0)
        self._cell_of: dict[str, str] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        open_cells = [cell for cell in self._levels if self._issued[cell] < self._budget]
        if not open_cells:
            return Searcher.FINISHED
        cell = min(open_cells, key=lambda c: self._issued[c])  # round-robin, in cell order
        params = self._searches[cell].suggest(trial_id) if self._searches else {}
        if params is None:
            return None
        self._issued[cell] += 1
        self._cell_of[trial_id] = cell
        return {CELL_KEY: cell, **self._levels[cell], **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._cell_of and self._searches:
            self._searches[self._cell_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._cell_of and self._searches:
            self._searches[self._cell_of[trial_id]].on_trial_complete(trial_id, result, error)

    def studies(self) -> dict[str, optuna.Study]:
        """Each cell's Optuna study: trials, states, intermediate values (for analysis)."""
        return {cell: search.study for cell, search in self._searches.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
