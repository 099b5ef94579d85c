"""The confirm stage: each cell's chosen configuration trained again on fresh seeds (and folds).

A cell's search-stage score is the best of its trials on the folds that chose it, so it is
optimistic, by more for cells with more trials or more variance, and comparisons inherit the
bias. The confirm stage (``confirm: {seeds: [...], folds: ...}`` in the spec) retrains each
cell's best finished configuration on the confirmation's repetitions; the analysis computes
the ablation tables and tests on these runs only and labels the search-stage ones as such.

It is a study of its own in ``STUDY/confirm`` (its ``study.yaml``, results, trials, label
banks), run by the same trial class, callbacks and Tune loop as the search, with the
configurations fixed (``FixedConfigurations``, a Tune ``Searcher`` that hands out exactly the
given ones) and no scheduler to stop them. A resumed study resumes it like the search.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.result_parts import trial_states_table
from modaltune.sweeps.trial_rows import CELL_KEY, best_trials

logger = logging.getLogger(__name__)

CONFIRMS_KEY = "confirms"  # in a confirmation trial's config: the search trial whose configuration it retrains


def confirmation_configs(search: StudyPlan, confirm: StudyPlan) -> list[dict[str, Any]]:
    """One Tune config per cell with a finished search trial: its levels and tuned values."""
    trials = trial_states_table(StudyLayout(search.study_dir).trials).read()
    chosen = best_trials(search.spec, trials)
    rows = trials.set_index("trial_id")
    configs = []
    for cell in confirm.cells:
        trial_id = chosen.get(cell.id)
        if trial_id is None:
            logger.warning("cell %s has no finished search trial: it is not confirmed", cell.id)
            continue
        row = rows.loc[trial_id]
        params = {name: _plain(row[name]) for name in search.search_params(search.cell(cell.id))}
        configs.append({CELL_KEY: cell.id, **cell.levels, **params, CONFIRMS_KEY: trial_id})
    return configs


class FixedConfigurations(Searcher):
    """Hands Tune the given configurations, one trial each, in order, then says it is finished.
    (``BasicVariantGenerator(points_to_evaluate=...)`` needs a search space holding every key.)"""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = list(configs)
        self.handed: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if trial_id in self.handed:
            return dict(self.configs[self.handed[trial_id]])
        if len(self.handed) >= len(self.configs):
            return Searcher.FINISHED
        self.handed[trial_id] = len(self.handed)
        return dict(self.configs[self.handed[trial_id]])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: the configurations are fixed."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump((self.configs, self.handed), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.configs, self.handed = pickle.load(handle)


def _plain(value: Any) -> Any:
    """A parquet value (a numpy scalar, or an array for a list-valued choice) as the Python value
    Tune and the run config expect."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if hasattr(value, "item") else value
