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
``trials/TRIAL/train``, each tagged with its repetition.

How a trial ends, and why nothing it started outlives it: the trial is a class ``Trainable``
whose ``step`` hands Tune one report of its run at a time (``sweeps.channel``). The worker
group waits at each repetition boundary for Tune's answer to that repetition's report, so a
trial the scheduler stops is stopped there, in ``cleanup``, and its run ends through Ray
Train's own teardown (placement group removed) before Tune frees the trial's slot. The last
report, the one that completes the trial, is made only after the run has returned.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.train import UserCallback
from ray.tune.result import DONE

from modaltune.atomic import atomic_path, write_json_atomic
from modaltune.sweeps.channel import VerdictGate
from modaltune.sweeps.plan import Repetition, StudyPlan
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key
from modaltune.train.config import TrainConfig
from modaltune.train.layout import RunInputs, RunLayout
from modaltune.train.run import build_trainer

logger = logging.getLogger(__name__)

TRIAL_FILE = "trial.json"  # the trial's config, so its rows can be rebuilt from disk (sweeps/results.py)
REPORTS_FILE = "reports.jsonl"  # every epoch report the trial gave Tune, with Tune's own fields (sweeps/results.py)
COMPLETED_FILE = "completed.json"  # Tune completed the trial: finished, or stopped by the scheduler (sweeps/results.py)
TRAIN_DIR = "train"  # the trial's Ray Train run (checkpoints of every repetition)
RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints, in its run folder
STOP_WAIT_S = 60.0  # how long a stopped trial waits for its run to end at the repetition boundary
POLL_S = 1.0  # how long one wait for the next report lasts before the run's liveness is checked again


class ReportForwarder(UserCallback):
    """Ray Train callback (runs in the run's controller): every epoch of every repetition goes
    to the trial with the trial's running estimate, and every finished repetition but the last
    is followed by its ``kind=repetition`` report, the point where the scheduler decides.

    ``cv_<metric>`` in an epoch report is the mean of the finished repetitions' final values and
    this repetition's latest value: what the configuration looks like right now.
    """

    def __init__(self, plan: StudyPlan, finished: list[dict[str, float]], channel: Any, trial_id: str) -> None:
        self.repetitions = plan.repetitions
        self.metrics = plan.metric_names
        self.finished = list(finished)
        self.channel, self.trial_id = channel, trial_id
        self.run_dir = plan.trial_dir(trial_id) / TRAIN_DIR

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        row = dict(metrics[0])
        repetition = self.repetitions[int(row["run"])]
        latest = {m: float(row.get(f"val_{m}", math.nan)) for m in self.metrics}
        estimate = {cv_key(m): _mean([scores[m] for scores in self.finished] + [latest[m]]) for m in self.metrics}
        tags = {"fold": repetition.fold, "seed": repetition.seed, "repetition": repetition.index}
        reports = [{**row, **tags, KIND_KEY: "epoch", DONE_KEY: len(self.finished), **estimate}]
        if row.get("run_finished"):
            self.finished.append(latest)
            if len(self.finished) < len(self.repetitions):  # the last one is the trial's, after the run
                reports.append(repetition_report(self.metrics, repetition, self.finished))
        for report in reports:
            ray.get(self.channel.put.remote(self.trial_id, report))
        keep_run_snapshot(self.run_dir)


class StudyTrial(tune.Trainable):
    """The Tune trainable (``tune.with_parameters(StudyTrial, plan=plan, channel=channel)``)."""

    def setup(self, config: dict[str, Any], plan: StudyPlan, channel: Any) -> None:
        self.plan, self.channel = plan, channel
        self.incarnation = uuid.uuid4().hex  # tells this start's worker groups from an earlier start's
        own_group = ray.util.get_current_placement_group()  # Tune's reservation for this process
        self.record = {
            "trial_id": self.trial_id, "config": config, "started": time.time(), "incarnation": self.incarnation,
            "host": socket.gethostname(), "pid": os.getpid(), "placement_group": own_group.id.hex() if own_group else None,
        }
        write_json_atomic(plan.trial_dir(self.trial_id) / TRIAL_FILE, self.record)
        _end_last_line(plan.trial_dir(self.trial_id) / REPORTS_FILE)
        restore_run_snapshot(plan.trial_dir(self.trial_id) / TRAIN_DIR)
        finished = self._finished_scores()
        self.boundary: int | None = None  # the repetition whose report Tune is deciding on
        self.fit: _Background | None = None
        if len(finished) == len(plan.repetitions):  # all done before a restart: say so once
            return
        cell = plan.cell(config[CELL_KEY])
        params = {key: config[key] for key in plan.search_params(cell)}
        configs = [plan.train_config(cell, params, repetition) for repetition in plan.repetitions]
        runs = [(train, self._run_paths(cell.id, repetition, train)) for repetition, train in zip(plan.repetitions, configs, strict=True)]
        # Repetitions run in order, so those finished before a restart come first and the next may start at once.
        ray.get(channel.open.remote(self.trial_id, len(finished) - 1))
        # Same storage and name on a restart: Ray Train resumes from the trial's last checkpoint.
        # Workers log warnings only: a study's progress is the driver's display, and every epoch's
        # metrics are in results.parquet and TensorBoard.
        trainer = build_trainer(
            runs, plan.trial_dir(self.trial_id), TRAIN_DIR, plan.spec.max_failures,
            callbacks=[ReportForwarder(plan, finished, channel, self.trial_id)], gate=VerdictGate(channel, self.trial_id),
            log_level="WARNING",
        )
        self.fit = _Background(trainer.fit)

    def train(self) -> dict[str, Any]:
        """Tune's ``train``: ``step`` and Tune's own fields (times, host, pid, iteration). Each
        epoch's report, as the driver receives it, is also appended to the trial's own record
        (``reports.jsonl``), from which the study rebuilds, with every column, a row it lost: one
        a killed driver never wrote, or one of a damaged results file."""
        result = super().train()
        if result.get(KIND_KEY) == "epoch":
            record = {key: value for key, value in result.items() if isinstance(value, (int, float, str)) and not isinstance(value, bool)}
            try:
                with open(self.plan.trial_dir(self.trial_id) / REPORTS_FILE, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as exc:  # the row still reaches the driver; only its spare copy is missing
                logger.warning("trial %s: could not record epoch %s in %s: %s", self.trial_id, result.get("epoch"), REPORTS_FILE, exc)
        return result

    def step(self) -> dict[str, Any]:
        """The run's next report; after the run has returned, the trial's last (``done``) report."""
        if self.fit is None:
            return self._last_report()
        if self.boundary is not None:  # Tune asked for more after a repetition report: go on
            ray.get(self.channel.release.remote(self.trial_id, self.boundary))
            self.boundary = None
        while True:
            running = self.fit.is_alive()  # before the take: a run that has returned has put everything
            report = ray.get(self.channel.take.remote(self.trial_id, POLL_S if running else 0.0))
            if report is not None:
                self.boundary = report["repetition"] if report[KIND_KEY] == "repetition" else None
                return report
            if not running:
                self.fit.raise_error()
                return self._last_report()

    def cleanup(self) -> None:
        """Tune ends the trial: a run stopped at a repetition boundary ends there, now."""
        if self.fit is not None and self.fit.is_alive():
            ray.get(self.channel.stop.remote(self.trial_id))
            if self.boundary is not None:  # stopped by the scheduler: the group is at the gate
                self.fit.join(STOP_WAIT_S)
            if self.fit.is_alive():  # the study was interrupted mid-repetition: its group ends with the driver
                logger.info("trial %s stopped during a repetition; its Ray Train run ends with it", self.trial_id)
        if self.fit is not None:
            ray.get(self.channel.close.remote(self.trial_id))

    def _last_report(self) -> dict[str, Any]:
        finished = self._finished_scores()
        if len(finished) < len(self.plan.repetitions):
            raise RuntimeError(
                f"trial {self.trial_id}: its Ray Train run returned after {len(finished)} of "
                f"{len(self.plan.repetitions)} repetitions without an error"
            )
        set_aside_unregistered_checkpoints(self.plan.trial_dir(self.trial_id) / TRAIN_DIR)
        write_json_atomic(self.plan.trial_dir(self.trial_id) / TRIAL_FILE, self.record | {"seconds": time.time() - self.record["started"]})
        return repetition_report(self.plan.metric_names, self.plan.repetitions[-1], finished) | {DONE: True}

    def _finished_scores(self) -> list[dict[str, float]]:
        markers = [RunLayout(self.plan.run_dir(self.trial_id, repetition)).finished for repetition in self.plan.repetitions]
        return [_scores(json.loads(marker.read_text(encoding="utf-8")), self.plan.metric_names) for marker in markers if marker.exists()]

    def _run_paths(self, cell_id: str, repetition: Repetition, train: TrainConfig) -> RunInputs:
        return RunInputs(
            cohort=self.plan.spec.cohort,
            label_bank=self.plan.label_bank_path(train),
            output=self.plan.run_dir(self.trial_id, repetition),
            predictions=self.plan.predictions_dir(self.trial_id, repetition),
            tags={"trial_id": self.trial_id, "cell": cell_id},
            owner=self.incarnation,
        )


class _Background(threading.Thread):
    """Runs ``function`` in a daemon thread and keeps what it raised."""

    def __init__(self, function: Callable[[], Any]) -> None:
        super().__init__(daemon=True, name="ray-train-fit")
        self.function = function
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.function()
        except BaseException as exc:  # noqa: BLE001 - handed to Tune from step(), where it errors the trial
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def keep_run_snapshot(run_dir: Path) -> None:
    """Ray Train rewrites its run snapshot (which checkpoints the run has) in place, so a full disk
    can tear it, and the run then cannot resume at all. After each report its last whole version
    is copied beside it (a few kB), for ``restore_run_snapshot``."""
    try:
        data = (run_dir / RUN_SNAPSHOT).read_bytes()
        json.loads(data)
        with atomic_path(run_dir / f"{RUN_SNAPSHOT}.last-good") as tmp:
            tmp.write_bytes(data)
    except (OSError, ValueError):  # none yet, torn now, or no room: the previous copy stays
        pass


def restore_run_snapshot(run_dir: Path) -> None:
    """Before Ray Train resumes a run: a torn snapshot is moved aside and its last whole copy put
    in its place (without one, the run starts its repetition from the beginning); then the
    checkpoints it does not list are set aside (``set_aside_unregistered_checkpoints``)."""
    snapshot = run_dir / RUN_SNAPSHOT
    try:
        json.loads(snapshot.read_bytes())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        damaged = snapshot.with_name(f"{RUN_SNAPSHOT}.damaged-{int(time.time())}")
        os.replace(snapshot, damaged)
        copy = snapshot.with_name(f"{RUN_SNAPSHOT}.last-good")
        if copy.exists():
            with atomic_path(snapshot) as tmp:
                tmp.write_bytes(copy.read_bytes())
        logger.warning(
            "%s was torn (%s; kept as %s): %s", snapshot, exc, damaged.name,
            "restored its last whole copy" if copy.exists() else "no whole copy: the run starts its repetition again",
        )
    set_aside_unregistered_checkpoints(run_dir)


def set_aside_unregistered_checkpoints(run_dir: Path) -> None:
    """Checkpoint folders the run snapshot does not list are uploads a full disk or a killed
    worker cut short (or newer than a restored snapshot): they are moved to ``set-aside/`` in
    the run folder, so that nothing (the analysis choosing a repetition's final checkpoint, the
    model export) reads one as the run's."""
    try:
        listed = set(_values_of(json.loads((run_dir / RUN_SNAPSHOT).read_bytes()), "checkpoint_dir_name"))
    except FileNotFoundError:
        listed = set()  # Ray Train writes it when it registers its first checkpoint
    except ValueError:
        return  # torn: restore_run_snapshot decides
    unlisted = [path for path in run_dir.glob("checkpoint_*") if path.is_dir() and path.name not in listed]
    for path in unlisted:
        (run_dir / "set-aside").mkdir(exist_ok=True)
        os.replace(path, run_dir / "set-aside" / path.name)
    if unlisted:
        logger.warning("%s: %d checkpoint folder(s) Ray Train never registered set aside in set-aside/", run_dir, len(unlisted))


def _values_of(tree: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a JSON tree."""
    if isinstance(tree, dict):
        return [value for k, value in tree.items() if k == key] + [v for value in tree.values() for v in _values_of(value, key)]
    if isinstance(tree, list):
        return [v for value in tree for v in _values_of(value, key)]
    return []


def _end_last_line(path: Path) -> None:
    """A record whose last append was cut short (a full disk, a killed trial) gets its newline,
    so that the next record starts a line of its own; the torn line is skipped when read."""
    try:
        with open(path, "rb+") as handle:
            if handle.seek(0, os.SEEK_END) and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n":
                handle.write(b"\n")
    except FileNotFoundError:
        pass


def read_reports(path: Path) -> list[dict[str, Any]]:
    """The epoch reports a trial recorded (``REPORTS_FILE``), in order; torn lines skipped."""
    reports = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            reports.append(json.loads(line))
        except ValueError:
            continue
    return reports


def _scores(finished: dict[str, Any], metrics: list[str]) -> dict[str, float]:
    """The study's metrics from a run's ``finished.json`` (NaN for any the run never scored)."""
    return {m: float(finished["scores"].get(m, math.nan)) for m in metrics}


def repetition_report(metrics: list[str], repetition: Repetition, finished: list[dict[str, float]]) -> dict[str, Any]:
    """The report after a repetition: the running cross-validated means and its own last scores."""
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
