"""Optuna samplers by the name a study spec gives (``search.sampler``).

Each entry says how to make the sampler for a cell's study and how many objectives it can
optimise, so the spec's validator refuses a combination Optuna would reject (or silently
degrade) before Ray starts. A new sampler is one registered ``SamplerChoice`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from modaltune.registry import Registry

if TYPE_CHECKING:
    from modaltune.sweeps.spec import SearchSpec


@dataclass(frozen=True)
class SamplerChoice:
    make: Callable[[SearchSpec], optuna.samplers.BaseSampler]
    min_objectives: int = 1
    max_objectives: int | None = None  # None: any number
    categorical_only: bool = False  # the sampler enumerates choices (a grid)

    def check(self, name: str, search: SearchSpec) -> None:
        """A ``ValueError`` when ``search``'s metrics or params are not what the sampler takes."""
        metrics = len(search.metrics)
        if metrics < self.min_objectives:
            raise ValueError(f"sampler {name!r} is multi-objective: give {self.min_objectives} or more metrics")
        if self.max_objectives is not None and metrics > self.max_objectives:
            raise ValueError(f"sampler {name!r} is single-objective: give one metric (or use 'nsga2' / 'tpe')")
        if self.categorical_only and any(d.type != "categorical" for d in search.params.values()):
            raise ValueError(f"sampler {name!r} needs every param to be categorical")


SAMPLERS: Registry[SamplerChoice] = Registry("sampler")


def make_sampler(search: SearchSpec) -> optuna.samplers.BaseSampler:
    return SAMPLERS[search.sampler].make(search)


class _BudgetedGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its stop: ``after_trial`` calls ``study.stop()`` once the
    grid is visited, which only works inside ``study.optimize`` and raises under ask-and-tell,
    as here. A cell's budget (``trials_per_cell``) says when it is done."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        return None


SAMPLERS.register("tpe")(SamplerChoice(lambda search: optuna.samplers.TPESampler(seed=search.seed)))
SAMPLERS.register("random")(SamplerChoice(lambda search: optuna.samplers.RandomSampler(seed=search.seed)))
SAMPLERS.register("grid")(SamplerChoice(
    lambda search: _BudgetedGridSampler({k: list(d.choices or []) for k, d in search.params.items()}, seed=search.seed),
    categorical_only=True,
))
SAMPLERS.register("cmaes")(SamplerChoice(
    lambda search: optuna.samplers.CmaEsSampler(seed=search.seed, warn_independent_sampling=False), max_objectives=1,
))
SAMPLERS.register("nsga2")(SamplerChoice(lambda search: optuna.samplers.NSGAIISampler(seed=search.seed), min_objectives=2))
