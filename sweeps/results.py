"""The study's tables, written by the Tune driver as results arrive.

``results.parquet``: one row per trial x repetition (fold, seed) x epoch, with the cell's
factor levels, the tuned hyperparameters, every metric, timing and resources. Rows travel to the
driver through Tune's own result channel, so this works unchanged on a multi-node cluster.
While a stage runs, each flush (at most every ``flush_every_s`` seconds, and at every trial
end) appends only the rows that arrived since the last one, as a part file under ``results/``
(sweeps/result_parts.py: the cost of a flush does not grow with the study); when the stage's
Tune run ends the parts are compacted into ``results.parquet``. Rows are keyed, so a resumed
study that re-reports an epoch replaces the row instead of duplicating it;
``results_table(path).read()`` reads both at any moment.

``trials.parquet``: one row per trial: cell, levels, hyperparameters, status (finished,
stopped early, error with its message) and its final cross-validated scores. The same way: each
flush appends the rows of the trials that reported, started or ended since the last one, as a
part under ``trial-states/``; the stage's end writes every trial's row and compacts;
``trial_states_table(path).read()`` reads both.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from modaltune.atomic import write_json_atomic
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.result_parts import RESULT_KEY, results_table, trial_states_table
from modaltune.sweeps.trial import COMPLETED_FILE, REPORTS_FILE, TRIAL_FILE, read_reports
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key
from modaltune.train.layout import RunLayout

logger = logging.getLogger(__name__)

COMPLETED_STATES = ("finished", "stopped_early")
UNFINISHED_STATES = ("interrupted", "running", "pending", "paused")
# Tune's and the worker group's bookkeeping that says nothing about the model ("run" is the
# repetition's index in its trial's worker group, already a column as "repetition").
_DROPPED = {
    "config", "done", "trial_id", "date", "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "checkpoint_path", KIND_KEY,
    "run", "run_finished",
}


class ResultsWriter(Callback):
    def __init__(self, plan: StudyPlan, flush_every_s: float = 5.0) -> None:
        self.plan = plan
        self.flush_every_s = flush_every_s
        self._pending: dict[tuple, dict[str, Any]] = {}  # arrived since the last flush
        self._known: set[tuple] = set()  # keys of every row written or pending
        self._completed: set[str] = set()  # trials Tune completed (finished or stopped by the scheduler)
        self._changed: set[str] = set()  # trials whose row changed since the last flush
        self._last_flush = 0.0

    @property
    def results_path(self) -> Path:
        return StudyLayout(self.plan.study_dir).results

    def setup(self, **info: Any) -> None:
        """On a resumed study, start from the rows already on disk (a damaged file of them set
        aside), and add any missing: the rows the driver had not written when it died, and those
        of a damaged file; every trial keeps its own record of them."""
        for table in (results_table(self.results_path), trial_states_table(StudyLayout(self.plan.study_dir).trials)):
            table.set_aside_damaged()
        written = results_table(self.results_path).read()
        if len(written):
            self._known = set(written[list(RESULT_KEY)].itertuples(index=False, name=None))
        self._backfill(None)
        self._completed |= completed_trials(self.plan)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._changed.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(KIND_KEY) != "epoch":
            return
        row = self.epoch_row(trial.trial_id, trial.config, result)
        key = tuple(row[k] for k in RESULT_KEY)
        self._pending[key] = row
        self._known.add(key)
        self._changed.add(trial.trial_id)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._completed.add(trial.trial_id)
        try:
            write_json_atomic(self.plan.trial_dir(trial.trial_id) / COMPLETED_FILE, {"at": time.time()})
        except OSError as exc:  # a full disk: trials.parquet says it too, if it can be written
            logger.warning("trial %s: could not record that it completed: %s", trial.trial_id, exc)
        self._changed.add(trial.trial_id)
        self._backfill([trial.trial_id])
        self.flush(trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._changed.add(trial.trial_id)
        self._backfill([trial.trial_id])
        self.flush(trials)

    def _backfill(self, trial_ids: list[str] | None) -> None:
        """Rows on disk that never reached the driver: every row after a driver's death, and a
        report lost in flight when a trial died (its node lost after the epoch's checkpoint was
        saved, so the restarted run resumes after that epoch and never reports it again)."""
        for row in self.recover_rows(trial_ids):
            key = tuple(row[k] for k in RESULT_KEY)
            if key not in self._known:
                self._pending[key] = row
                self._known.add(key)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Every trial's final row, pending and interrupted ones too: O(trials) once per stage run.
        self._changed |= {trial.trial_id for trial in trials}
        self.flush(trials)
        for table in (results_table(self.results_path), trial_states_table(StudyLayout(self.plan.study_dir).trials)):
            try:
                table.compact()  # once per stage run: one file for readers
            except OSError as exc:  # a full disk: the parts stay, and read the same
                logger.warning("%s not compacted (%s); its parts under %s hold every row", table.compacted, exc, table.folder)

    def recover_rows(self, trial_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """Epoch rows rebuilt from each trial's own records, of every trial or of ``trial_ids``:
        ``trials/TRIAL/reports.jsonl`` (every report as Tune passed it on: every column), and for an
        epoch it lacks (a report lost in flight with its trial's node, a trial from before these
        records) the run's ``metrics.parquet`` (metrics and levels, without Tune's columns)."""
        rows = []
        if trial_ids is None:
            files = sorted(StudyLayout(self.plan.study_dir).runs.glob(f"*/{TRIAL_FILE}"))
        else:
            files = [path for path in (self.plan.trial_dir(t) / TRIAL_FILE for t in trial_ids) if path.exists()]
        for trial_file in files:
            trial = json.loads(trial_file.read_text(encoding="utf-8"))
            reported = {(r.get("fold"), r.get("seed"), r.get("epoch")): r for r in read_reports(trial_file.parent / REPORTS_FILE)}
            rows += [self.epoch_row(trial["trial_id"], trial["config"], report) for report in reported.values()]
            for repetition in self.plan.repetitions:
                metrics = RunLayout(trial_file.parent / repetition.name).metrics
                if metrics.exists():
                    tags = {"fold": repetition.fold, "seed": repetition.seed, "repetition": repetition.index}
                    rows += [
                        self.epoch_row(trial["trial_id"], trial["config"], record | tags)
                        for record in pd.read_parquet(metrics).to_dict("records")
                        if (repetition.fold, repetition.seed, record.get("epoch")) not in reported
                    ]
        return rows

    def epoch_row(self, trial_id: str, config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        resources = self.plan.resources(self.plan.cell(config[CELL_KEY]))  # the cell's own, when its method level has them
        row: dict[str, Any] = {"study": self.plan.spec.name, "trial_id": trial_id, CELL_KEY: config[CELL_KEY]}
        row |= {name: config.get(name) for name in self.plan.factor_names}
        row |= {name: config.get(name) for name in self.plan.param_names}
        row |= {
            key: value for key, value in result.items()
            if key not in _DROPPED and key not in row and isinstance(value, (int, float, str, bool)) and value is not None
        }
        row |= {
            "num_workers": resources.num_workers,
            "cpus_per_worker": resources.cpus_per_worker,
            "gpus_per_worker": resources.gpus_per_worker,
        }
        return row

    def flush(self, trials: list | None = None) -> None:
        """New epoch rows, and (given Tune's ``trials``) the rows of the trials that changed."""
        results_table(self.results_path).append(list(self._pending.values()))
        self._pending.clear()
        if trials is not None and self._changed:
            changed = [trial for trial in trials if trial.trial_id in self._changed]
            rows = trial_table(self.plan, changed, self._completed).to_dict("records")
            trial_states_table(StudyLayout(self.plan.study_dir).trials).append(rows)
            self._changed.clear()
        self._last_flush = time.monotonic()


def completed_trials(plan: StudyPlan) -> set[str]:
    """The trials Tune completed (finished, or stopped by the scheduler) in any earlier run: a
    restored Tune run holds them TERMINATED, as it holds the trials it stops when the driver is
    interrupted. Each says so in its folder (``completed.json``); a study from before those
    markers, in its trial table."""
    layout = StudyLayout(plan.study_dir)
    marked = {path.parent.name for path in layout.runs.glob(f"*/{COMPLETED_FILE}")}
    previous = trial_states_table(layout.trials).read()
    return marked | (set(previous.loc[previous["state"].isin(COMPLETED_STATES), "trial_id"]) if len(previous) else set())


def trial_table(plan: StudyPlan, trials: list, completed: set[str]) -> pd.DataFrame:
    """One row per trial; ``state`` is finished, stopped_early, error, interrupted, running or pending.

    Tune marks trials it stopped because the driver was interrupted TERMINATED too, but only
    trials it completed (``completed``) went through ``on_trial_complete``."""
    rows = []
    for trial in trials:
        last = trial.last_result or {}
        done = int(last.get(DONE_KEY) or 0)
        row: dict[str, Any] = {"trial_id": trial.trial_id, CELL_KEY: trial.config.get(CELL_KEY)}
        row |= {name: trial.config.get(name) for name in plan.factor_names}
        row |= {name: trial.config.get(name) for name in plan.param_names}
        state = _state(trial.status, trial.trial_id in completed, done, len(plan.repetitions))
        row |= {"state": state, DONE_KEY: done, "error": _error(trial)}
        row |= {cv_key(m): (float(last[cv_key(m)]) if last.get(KIND_KEY) == "repetition" else math.nan) for m in plan.metric_names}
        row["time_total_s"] = float(last.get("time_total_s", math.nan))
        rows.append(row)
    return pd.DataFrame(rows)


def _state(status: str, completed: bool, done: int, total: int) -> str:
    if status == "ERROR":
        return "error"
    if completed:
        return "finished" if done >= total else "stopped_early"
    return "interrupted" if status == "TERMINATED" else status.lower()


def _error(trial: Any) -> str | None:
    if trial.status != "ERROR":
        return None
    error = trial.get_error()
    return str(error).strip().splitlines()[-1][:500] if error else "unknown error"
