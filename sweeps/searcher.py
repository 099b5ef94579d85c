"""Nested search: an outer grid of ablation cells, an inner Optuna study per cell.

Ray's ``OptunaSearch`` refuses ``tune.grid_search`` in its space, and one Optuna study over
"factor x hyperparameters" would spend its budget unevenly across cells. ``CellSearcher`` is
one Tune searcher that owns one Optuna study per cell (``CellStudy``, all in the study folder's
``optuna.journal``), all with the same sampler, seed and budget, and hands out trials
round-robin so every cell gets ``trials_per_cell`` trials and a partly finished study is still
balanced. Using the same sampler seed in every cell gives each
cell the same first proposals: paired comparisons across cells.

A trial runs every repetition (fold x seed) in turn and reports the running mean after each;
the scheduler may stop it between repetitions (racing over folds). Optuna is told such a
trial was PRUNED, with its per-repetition values as intermediate values, rather than the
stock behaviour of recording a partial mean as a COMPLETE value.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search import Searcher

from modaltune.sweeps.samplers import make_sampler
from modaltune.sweeps.spec import SearchSpec
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key

logger = logging.getLogger(__name__)

class CellStudy:
    """One cell's Optuna study, asked and told through Optuna's public API, kept in ``journal``.

    The journal (Optuna's ``JournalStorage`` over a file, safe on NFS-like file systems) holds
    the trials, so ``optuna-dashboard STUDY/optuna.journal`` and ``optuna.load_study`` open
    every cell's history; Tune's saved searcher state holds only what the journal does not: the
    sampler (with its random state) and which Tune trial is which Optuna trial.
    """

    def __init__(self, name: str, levels: dict[str, Any], search: SearchSpec, repetitions: int, journal: Path) -> None:
        self.name = name
        self.levels = levels
        self.journal = journal
        self.repetitions = repetitions
        self.metrics = [cv_key(m.name) for m in search.metrics]
        self.directions = ["maximize" if m.direction == "max" else "minimize" for m in search.metrics]
        self.distributions = {key: dist.to_optuna() for key, dist in search.params.items()}
        self.sampler = make_sampler(search)
        self.numbers: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._reported: dict[str, set[int]] = {}
        self._storage: optuna.storages.BaseStorage | None = None
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_storage": None, "_study": None}  # the trials live in the journal

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._open()
        assert self._study is not None
        return self._study

    def _open(self) -> None:
        """Open (or create) the cell's study; trials asked after Tune's last saved state are failed:
        Tune restored no trial for them, so nothing will ever tell them."""
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        cut_torn_tail(self.journal)
        self._storage = JournalStorage(JournalFileBackend(str(self.journal)))
        self._study = optuna.create_study(
            study_name=self.name, storage=self._storage, sampler=self.sampler, directions=self.directions, load_if_exists=True,
        )
        for key, value in self.levels.items():
            self._study.set_user_attr(key, value)
        known = set(self.numbers.values())
        for trial in self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                logger.info("%s: trial %d was asked before the driver stopped and never ran; recorded as failed", self.name, trial.number)
                self._study.tell(trial.number, state=TrialState.FAIL)

    def ask(self, trial_id: str) -> dict[str, Any]:
        trial = self.study.ask(self.distributions)
        trial.set_user_attr("tune_trial_id", trial_id)
        self.numbers[trial_id] = trial.number
        return trial.params

    def _storage_id(self, trial_id: str) -> int | None:
        """Optuna's storage id of the trial, or None when it is not this cell's or already told."""
        number = self.numbers.get(trial_id)
        if number is None:
            return None
        study = self.study
        assert self._storage is not None
        storage_id = self._storage.get_trial_id_from_study_id_trial_number(self._storage.get_study_id_from_name(study.study_name), number)
        return None if self._storage.get_trial(storage_id).state.is_finished() else storage_id

    def report(self, trial_id: str, result: dict) -> None:
        """Per-repetition running means become Optuna intermediate values (single objective)."""
        if result.get(KIND_KEY) != "repetition" or len(self.metrics) > 1:
            return
        step = int(result[DONE_KEY])
        reported = self._reported.setdefault(trial_id, set())
        storage_id = self._storage_id(trial_id)
        if storage_id is not None and step not in reported:
            assert self._storage is not None
            self._storage.set_trial_intermediate_value(storage_id, step, float(result[self.metrics[0]]))
            reported.add(step)

    def tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        if self._storage_id(trial_id) is None:  # not ours, or told before a restart
            return
        if result is not None:
            # When the scheduler stops a trial, Tune completes it without passing that last result
            # through on_trial_result: record it here, or a pruned trial would lose its evidence.
            self.report(trial_id, result)
        number = self.numbers[trial_id]
        if error:
            self.study.tell(number, state=TrialState.FAIL)
        elif result is None or result.get(DONE_KEY) != self.repetitions:
            self.study.tell(number, state=TrialState.PRUNED)
        else:
            values = [float(result[m]) for m in self.metrics]
            try:
                self.study.tell(number, values if len(values) > 1 else values[0])
            except ValueError as exc:  # NaN: Optuna records the trial as failed and says why
                logger.warning("trial %s: %s", trial_id, exc)


def cut_torn_tail(journal: Path) -> None:
    """An Optuna journal whose last append was cut short (a full disk) ends mid-line: Optuna skips
    that line, but its next append would continue it, and every read after that would fail. The
    torn tail, never a whole record, is moved into a file beside the journal and cut off."""
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    whole = data.rfind(b"\n") + 1
    journal.with_name(f"{journal.name}.torn-{len(data)}").write_bytes(data[whole:])
    with open(journal, "rb+") as handle:
        handle.truncate(whole)
    logger.warning("%s: its last record was cut short (%d bytes, kept beside it); cut off", journal, len(data) - whole)


def cell_study_name(cell: str, levels: dict[str, Any]) -> str:
    """The Optuna study's name: the cell and its levels, as optuna-dashboard lists them."""
    return f"{cell}: " + (", ".join(f"{k}={v}" for k, v in levels.items()) or "all")


class CellSearcher(Searcher):
    """One Tune searcher over all cells; suggestions carry the cell id and its factor levels."""

    def __init__(
        self, cells: dict[str, dict[str, str]], search: SearchSpec, repetitions: int, journal: Path,
        cell_searches: dict[str, SearchSpec] | None = None,
    ) -> None:
        """``cell_searches``: a cell's own search where its method level tunes params of its own
        (``StudyPlan.search``); the others use ``search``. Every cell gets ``search``'s budget."""
        super().__init__(metric=cv_key(search.primary.name), mode=search.primary.direction)
        self._levels = cells
        self._budget = search.trials_per_cell
        searches = {cell: (cell_searches or {}).get(cell, search) for cell in cells}
        # Without tuned params every trial of a cell is the same config; no Optuna study is needed.
        self._searches = (
            {cell: CellStudy(cell_study_name(cell, levels), levels, searches[cell], repetitions, journal) for cell, levels in cells.items()}
            if any(s.params for s in searches.values()) else {}
        )
        self._issued = dict.fromkeys(cells, 0)
        self._cell_of: dict[str, str] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        open_cells = [cell for cell in self._levels if self._issued[cell] < self._budget]
        if not open_cells:
            return Searcher.FINISHED
        cell = min(open_cells, key=lambda c: self._issued[c])  # round-robin, in cell order
        params = self._searches[cell].ask(trial_id) if self._searches else {}
        self._issued[cell] += 1
        self._cell_of[trial_id] = cell
        return {CELL_KEY: cell, **self._levels[cell], **params}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._cell_of and self._searches:
            self._searches[self._cell_of[trial_id]].report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._cell_of and self._searches:
            self._searches[self._cell_of[trial_id]].tell(trial_id, result, error)

    def studies(self) -> dict[str, optuna.Study]:
        """Each cell's Optuna study: trials, states, intermediate values (for analysis)."""
        return {cell: search.study for cell, search in self._searches.items()}

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
