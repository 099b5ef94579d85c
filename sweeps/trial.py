"""One Tune trial: one configuration of one cell, trained on every repetition (fold x seed) in turn.

Why one trial per configuration and not per (configuration, fold): Optuna proposes a
configuration once and must be told one score for it, the mean over the same folds and seeds
every other configuration gets (Ray's ``Repeater`` does this but is documented as incompatible
with early-stopping schedulers). Running the repetitions in sequence and reporting the running
mean after each lets ASHA / median stopping race configurations over folds: a configuration
that is clearly worse after the first folds stops early, and Optuna records it as pruned.

Every repetition is a Ray Train V2 run built by ``modaltune.train.run.build_trainer`` (the same
code path as ``modaltune train``), in its own storage folder. Each epoch is forwarded to Tune as
it happens (``kind=epoch``), and each finished repetition is reported (``kind=repetition``)
and marked on disk, so a restarted trial skips what it finished and a restarted repetition
resumes from its last epoch checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from modaltune.atomic import write_json_atomic
from modaltune.train.run import build_trainer
from sweeps.plan import Repetition, StudyPlan
from sweeps.searcher import CELL_KEY, DONE_KEY, KIND_KEY, cv_key

MARKER = "repetition.json"
TRIAL_FILE = "trial.json"  # the trial's config, so its rows can be rebuilt from disk (sweeps/results.py)


class EpochForwarder(TuneReportCallback):
    """Ray Train callback: every epoch of a repetition goes to Tune with the trial's running estimate.

    ``cv_<metric>`` in an epoch report is the mean of the finished repetitions' final values and
    this repetition's latest value: what the configuration looks like right now.
    """

    def __init__(self, tags: dict[str, Any], finished: list[dict[str, float]], metrics: list[str]) -> None:
        super().__init__()
        self.tags = tags
        self.finished = finished
        self.metrics = metrics

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = dict(metrics[0])
        estimate = {
            cv_key(m): _mean([scores[m] for scores in self.finished] + [row.get(f"val_{m}", math.nan)]) for m in self.metrics
        }
        self._training_actor_item_queue.put({**row, **self.tags, KIND_KEY: "epoch", DONE_KEY: len(self.finished), **estimate})


def run_trial(config: dict[str, Any], plan: StudyPlan) -> None:
    """The Tune trainable (wrapped with ``tune.with_parameters(run_trial, plan=plan)``)."""
    trial_id = tune.get_context().get_trial_id()
    write_json_atomic(plan.trial_dir(trial_id) / TRIAL_FILE, {"trial_id": trial_id, "config": config})
    cell = plan.cell(config[CELL_KEY])
    params = {key: config[key] for key in plan.param_names}
    finished: list[dict[str, float]] = []
    reported = False
    for repetition in plan.repetitions:
        marker = plan.run_dir(trial_id, repetition) / MARKER
        if marker.exists():  # finished before this trial was restarted
            finished.append(json.loads(marker.read_text(encoding="utf-8"))["scores"])
            continue
        started = time.time()
        scores = _run_repetition(plan, trial_id, cell.id, params, repetition, finished)
        finished.append(scores)
        write_json_atomic(marker, {"trial_id": trial_id, "repetition": repetition.name, "scores": scores, "started": started, "seconds": time.time() - started})
        tune.report(_repetition_report(plan, repetition, finished))
        reported = True
    if not reported:  # every repetition was already done: say so once, for the scheduler and searcher
        tune.report(_repetition_report(plan, plan.repetitions[-1], finished))


def _run_repetition(
    plan: StudyPlan, trial_id: str, cell_id: str, params: dict[str, Any], repetition: Repetition, finished: list[dict[str, float]]
) -> dict[str, float]:
    train = plan.train_config(plan.cell(cell_id), params, repetition)
    run_dir = plan.run_dir(trial_id, repetition)
    paths = {
        "cohort": str(plan.spec.cohort),
        "label_bank": str(plan.label_bank_path(train)),
        "output": str(run_dir),
        "predictions": str(plan.predictions_dir(trial_id, repetition)),
        "tensorboard": str(run_dir / "tensorboard"),
        "tags": {"trial_id": trial_id, "cell": cell_id},
        "resume_from": None,
    }
    tags = {"fold": repetition.fold, "seed": repetition.seed, "repetition": repetition.index}
    forwarder = EpochForwarder(tags, list(finished), plan.metric_names)
    # Same storage and name on a restart: Ray Train resumes the run from its last checkpoint.
    trainer = build_trainer(train, paths, run_dir, "train", plan.spec.max_failures, callbacks=[forwarder])
    result = trainer.fit()
    last = result.metrics or {}
    return {m: float(last.get(f"val_{m}", math.nan)) for m in plan.metric_names}


def _repetition_report(plan: StudyPlan, repetition: Repetition, finished: list[dict[str, float]]) -> dict[str, Any]:
    return {
        KIND_KEY: "repetition",
        DONE_KEY: len(finished),
        "fold": repetition.fold,
        "seed": repetition.seed,
        "repetition": repetition.index,
        **{cv_key(m): _mean([scores[m] for scores in finished]) for m in plan.metric_names},
        **{f"last_{m}": finished[-1][m] for m in plan.metric_names},
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
