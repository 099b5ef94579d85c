"""One Tune trial: one configuration of one cell, trained on every repetition (fold x seed) in turn.

Why one trial per configuration and not per (configuration, fold): Optuna proposes a
configuration once and must be told one score for it, the mean over the same folds and seeds
every other configuration gets (Ray's ``Repeater`` does this but is documented as incompatible
with early-stopping schedulers). Running the repetitions in sequence and reporting the running
mean after each lets ASHA / median stopping race configurations over folds: a configuration
that is clearly worse after the first folds stops early, and Optuna records it as pruned.

All repetitions of a trial run in one Ray Train V2 run built by
``modaltune.train.run.build_trainer`` (the same code path as ``modaltune train``): one worker
group trains them one after another, so Ray Train's launch (actors, imports, process group,
about 8 s on 2 CPU cores) is paid once per trial, not once per repetition. Each repetition keeps
its own run folder (metrics, predictions, ``finished.json``); the trial's checkpoints are in
``trials/TRIAL/train``, each tagged with its repetition. Each epoch is forwarded to Tune as it
happens (``kind=epoch``) and each finished repetition is reported (``kind=repetition``), so a
restarted trial skips what it finished and resumes a repetition from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from modaltune.atomic import write_json_atomic
from modaltune.train.config import TrainConfig
from modaltune.train.run import build_trainer
from modaltune.train.worker import FINISHED_FILE
from sweeps.plan import Repetition, StudyPlan
from sweeps.searcher import CELL_KEY, DONE_KEY, KIND_KEY, cv_key

TRIAL_FILE = "trial.json"  # the trial's config, so its rows can be rebuilt from disk (sweeps/results.py)


class RepetitionForwarder(TuneReportCallback):
    """Ray Train callback: every epoch of every repetition goes to Tune with the trial's running
    estimate, and the last epoch of a repetition is followed by its ``kind=repetition`` report.

    ``cv_<metric>`` in an epoch report is the mean of the finished repetitions' final values and
    this repetition's latest value: what the configuration looks like right now.
    """

    def __init__(self, plan: StudyPlan, finished: list[dict[str, float]]) -> None:
        super().__init__()
        self.repetitions = plan.repetitions
        self.metrics = plan.metric_names
        self.finished = list(finished)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = dict(metrics[0])
        repetition = self.repetitions[int(row["run"])]
        latest = {m: float(row.get(f"val_{m}", math.nan)) for m in self.metrics}
        estimate = {cv_key(m): _mean([scores[m] for scores in self.finished] + [latest[m]]) for m in self.metrics}
        tags = {"fold": repetition.fold, "seed": repetition.seed, "repetition": repetition.index}
        self._training_actor_item_queue.put({**row, **tags, KIND_KEY: "epoch", DONE_KEY: len(self.finished), **estimate})
        if row.get("run_finished"):
            self.finished.append(latest)
            self._training_actor_item_queue.put(_repetition_report(self.metrics, repetition, self.finished))


def run_trial(config: dict[str, Any], plan: StudyPlan) -> None:
    """The Tune trainable (wrapped with ``tune.with_parameters(run_trial, plan=plan)``)."""
    trial_id = tune.get_context().get_trial_id()
    record = {"trial_id": trial_id, "config": config, "started": time.time()}
    write_json_atomic(plan.trial_dir(trial_id) / TRIAL_FILE, record)
    cell = plan.cell(config[CELL_KEY])
    params = {key: config[key] for key in plan.param_names}
    markers = [plan.run_dir(trial_id, repetition) / FINISHED_FILE for repetition in plan.repetitions]
    # Repetitions run in order, so those finished before a restart come first.
    finished = [_scores(json.loads(marker.read_text(encoding="utf-8")), plan.metric_names) for marker in markers if marker.exists()]
    if len(finished) == len(plan.repetitions):  # all done before a restart: say so once, for the scheduler and searcher
        tune.report(_repetition_report(plan.metric_names, plan.repetitions[-1], finished))
        return
    configs = [plan.train_config(cell, params, repetition) for repetition in plan.repetitions]
    runs = [(train, _run_paths(plan, trial_id, cell.id, repetition, train)) for repetition, train in zip(plan.repetitions, configs)]
    # Same storage and name on a restart: Ray Train resumes from the trial's last checkpoint.
    trainer = build_trainer(runs, plan.trial_dir(trial_id), "train", plan.spec.max_failures, callbacks=[RepetitionForwarder(plan, finished)])
    trainer.fit()
    write_json_atomic(plan.trial_dir(trial_id) / TRIAL_FILE, record | {"seconds": time.time() - record["started"]})


def _run_paths(plan: StudyPlan, trial_id: str, cell_id: str, repetition: Repetition, train: TrainConfig) -> dict[str, Any]:
    run_dir = plan.run_dir(trial_id, repetition)
    return {
        "cohort": str(plan.spec.cohort),
        "label_bank": str(plan.label_bank_path(train)),
        "output": str(run_dir),
        "predictions": str(plan.predictions_dir(trial_id, repetition)),
        "tensorboard": str(run_dir / "tensorboard"),
        "tags": {"trial_id": trial_id, "cell": cell_id},
        "resume_from": None,
    }


def _scores(finished: dict[str, Any], metrics: list[str]) -> dict[str, float]:
    """The study's metrics from a run's ``finished.json`` (NaN for any the run never scored)."""
    return {m: float(finished["scores"].get(m, math.nan)) for m in metrics}


def _repetition_report(metrics: list[str], repetition: Repetition, finished: list[dict[str, float]]) -> dict[str, Any]:
    return {
        KIND_KEY: "repetition",
        DONE_KEY: len(finished),
        "fold": repetition.fold,
        "seed": repetition.seed,
        "repetition": repetition.index,
        **{cv_key(m): _mean([scores[m] for scores in finished]) for m in metrics},
        **{f"last_{m}": finished[-1][m] for m in metrics},
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
