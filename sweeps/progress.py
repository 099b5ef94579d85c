"""How far a study is: the driver's live display and ``STUDY/progress.json``, which ``modaltune status`` reads.

A study of hundreds of trials runs for days, on a cluster whose head node a user may only reach
through a shared file system. The driver therefore keeps one small JSON file in the study
folder, rewritten atomically every few seconds while anything changes and at least every
``HEARTBEAT_S`` seconds: the state (running, finished, interrupted, failed), who writes it
(host, pid) and when, and per stage (search, confirm) the counts of trials and repetitions,
per cell the best score so far, and the estimated time left. Everything a person asks while a
study runs is answered from that file alone, by the same ``render`` the driver uses.

A driver killed outright cannot say so: a ``running`` file whose writer is gone (a dead pid on
this host, or no heartbeat for ``STALE_AFTER_S`` seconds from another host) reads as
interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from modaltune.atomic import write_json_atomic
from modaltune.errors import InputError
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.results import completed_trials
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key
from modaltune.units import duration_text

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_AFTER_S = 5 * HEARTBEAT_S
WRITE_EVERY_S = 5.0
MIN_BAR_WIDTH = 60  # narrower (or a pty of zero columns) gets the log lines: a bar would wrap
# `modaltune status` exits with the study's state, so scripts can wait on it; 2 is bad input.
EXIT_CODES = {"finished": 0, "failed": 1, "running": 3, "interrupted": 4}
STATES = tuple(EXIT_CODES)
NO_MODEL = "no model selected"  # how a failed study that trained everything but selected nothing says so


@dataclass
class CellProgress:
    levels: dict[str, Any]
    trials_total: int
    finished: int = 0
    stopped_early: int = 0
    failed: int = 0
    running: int = 0
    repetitions_done: int = 0
    repetitions_total: int = 0
    best: float | None = None  # best cross-validated primary metric of a finished trial
    best_trial: str | None = None

    @property
    def trials_done(self) -> int:
        return self.finished + self.stopped_early + self.failed


@dataclass
class StageProgress:
    """One Tune run (the search, or the confirm stage) at one moment."""

    metric: str
    mode: str
    cells: dict[str, CellProgress]
    max_concurrent: int
    started_at: float  # this driver's start of the stage (epoch seconds)
    repetitions_this_run: int = 0  # finished since this driver started: the measured pace
    ended: bool = False

    def total(self, key: str) -> int:
        return sum(getattr(cell, key) for cell in self.cells.values())

    @property
    def pending(self) -> int:
        return self.total("trials_total") - self.total("trials_done") - self.total("running")

    def leader(self) -> str | None:
        """The cell whose best finished trial scores best so far (None before any finishes)."""
        scored = [c for c, cell in self.cells.items() if cell.best is not None]
        if not scored:
            return None
        best = max if self.mode == "max" else min
        return best(scored, key=lambda c: self.cells[c].best)

    def seconds_left(self, now: float) -> float | None:
        """Remaining repetitions at the pace this driver has measured (None before the first one ends)."""
        remaining = self.total("repetitions_total") - self.total("repetitions_done")
        if remaining <= 0:
            return 0.0
        if self.repetitions_this_run == 0 or now <= self.started_at:
            return None
        return remaining * (now - self.started_at) / self.repetitions_this_run


@dataclass
class StudyProgress:
    """What ``progress.json`` holds."""

    study: str
    state: str
    host: str
    pid: int
    started_at: float
    updated_at: float
    stages: dict[str, StageProgress] = field(default_factory=dict)
    message: str | None = None

    @classmethod
    def read(cls, path: Path) -> StudyProgress:
        raw = json.loads(path.read_text(encoding="utf-8"))
        stages = {
            name: StageProgress(**(stage | {"cells": {c: CellProgress(**v) for c, v in stage["cells"].items()}}))
            for name, stage in raw.pop("stages").items()
        }
        return cls(**raw, stages=stages)

    def write(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))

    def observed_state(self, now: float | None = None) -> str:
        """The state as a reader should take it: a ``running`` study whose driver is gone is interrupted."""
        if self.state != "running":
            return self.state
        now = time.time() if now is None else now
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return "interrupted"
        return "interrupted" if now - self.updated_at > STALE_AFTER_S else "running"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that pid: alive
        return True
    return True


def stage_progress(
    plan: StudyPlan, trials: list[Trial], completed: set[str], started_at: float, repetitions_this_run: int,
) -> StageProgress:
    """Counts of ``plan``'s stage from Tune's trials; trials Tune has not created yet are pending.

    Tune marks the trials it stops because the driver is interrupted TERMINATED too; only those
    in ``completed`` (through ``on_trial_complete``) finished or were stopped by the scheduler."""
    search = plan.spec.search
    total_reps = len(plan.repetitions)
    cells = {cell.id: CellProgress(levels=dict(cell.levels), trials_total=search.trials_per_cell) for cell in plan.cells}
    metric = cv_key(search.primary.name)
    created = dict.fromkeys(cells, 0)
    for trial in trials:
        cell = cells.get(trial.config.get(CELL_KEY))
        if cell is None:
            continue
        created[trial.config[CELL_KEY]] += 1
        last = trial.last_result or {}
        done = int(last.get(DONE_KEY) or 0)
        cell.repetitions_done += done
        if trial.status == Trial.ERROR:
            cell.failed += 1
            cell.repetitions_total += done
        elif trial.status == Trial.TERMINATED and trial.trial_id in completed and done < total_reps:
            cell.stopped_early += 1  # the scheduler stopped it: no more repetitions will run
            cell.repetitions_total += done
        elif trial.status == Trial.TERMINATED and trial.trial_id in completed:
            cell.finished += 1
            cell.repetitions_total += total_reps
            score = last.get(metric) if last.get(KIND_KEY) == "repetition" else None
            if score is not None and math.isfinite(score) and _better(score, cell.best, search.primary.direction):
                cell.best, cell.best_trial = float(score), trial.trial_id
        else:
            cell.running += trial.status == Trial.RUNNING
            cell.repetitions_total += total_reps
    for cell_id, cell in cells.items():
        cell.repetitions_total += max(0, cell.trials_total - created[cell_id]) * total_reps
    return StageProgress(
        metric=metric, mode=search.primary.direction, cells=cells, max_concurrent=plan.spec.max_concurrent,
        started_at=started_at, repetitions_this_run=repetitions_this_run,
    )


def _better(score: float, best: float | None, mode: str) -> bool:
    return best is None or (score > best if mode == "max" else score < best)


def summary_line(stage: StageProgress, now: float) -> str:
    """One line: what a person needs at a glance, used for the bar's text and periodic log lines."""
    reps_done, reps_total = stage.total("repetitions_done"), stage.total("repetitions_total")
    percent = f" ({100.0 * reps_done / reps_total:.0f}%)" if reps_total else ""
    left = "" if stage.ended else f", left ~{duration_text(stage.seconds_left(now))}"
    leader = stage.leader()
    leading = f"; leading {leader} {stage.cells[leader].best:.3f} {stage.metric}" if leader else ""
    return (
        f"repetitions {reps_done}/{reps_total}{percent}; trials {stage.total('trials_done')}/{stage.total('trials_total')} "
        f"done ({stage.total('stopped_early')} stopped early, {stage.total('failed')} failed), {stage.total('running')} running, "
        f"{stage.pending} pending; elapsed {duration_text(now - stage.started_at)}{left}{leading}"
    )


def stage_table(stage: StageProgress) -> list[str]:
    """Per cell: levels, trials done / budget, running, failed, repetitions, best finished trial."""
    lines = [f"  {'cell':<6} {'levels':<34} {'trials':>7} {'running':>7} {'failed':>6} {'reps':>9}  best {stage.metric} ({stage.mode})"]
    for cell_id, cell in stage.cells.items():
        levels = ", ".join(f"{k}={v}" for k, v in cell.levels.items()) or "-"
        best = f"{cell.best:.3f} ({cell.best_trial})" if cell.best is not None else "-"
        lines.append(
            f"  {cell_id:<6} {levels[:34]:<34} {cell.trials_done:>3}/{cell.trials_total:<3} {cell.running:>7} {cell.failed:>6} "
            f"{cell.repetitions_done:>4}/{cell.repetitions_total:<4}  {best}"
        )
    return lines


def render(progress: StudyProgress, now: float | None = None) -> list[str]:
    """The status block: state, what to do about it, then per stage a summary line and a per-cell table."""
    now = time.time() if now is None else now
    state = progress.observed_state(now)
    said = f" ({progress.message})" if progress.message else ""
    if state != progress.state:
        said = f" (the driver, pid {progress.pid} on {progress.host}, stopped without saying so)"
    lines = [
        f"study {progress.study}: {state}{said}",
        (
            f"  written by pid {progress.pid} on {progress.host}, {duration_text(now - progress.updated_at)} ago; "
            f"started {time.strftime('%Y-%m-%d %H:%M', time.localtime(progress.started_at))}"
        ),
    ]
    advice = _advice(state, progress.message if state == progress.state else None)
    if advice:
        lines.append(f"  {advice}")
    for name, stage in progress.stages.items():
        lines += ["", f"{name}: {summary_line(stage, progress.updated_at)}", *stage_table(stage)]
    return lines


def _advice(state: str, message: str | None) -> str | None:
    """What will work from here (each a path the driver takes: sweeps/study.py)."""
    if state == "interrupted":
        return "continue it with --resume (the same spec, or the study's own study.yaml)"
    if state == "failed" and message is not None and message.startswith(NO_MODEL):
        return "a resume would select the same way; its report (report/report.md) says why"
    if state == "failed":
        return (
            "--resume retries the failed trials: worth it where what failed them lay outside the spec (a lost node, a full disk); "
            "a changed spec runs as a new study"
        )
    return None


class ProgressTracker(Callback):
    """The driver's side: keeps ``progress.json`` current and shows progress to the person watching.

    With a terminal on stderr, a progress bar over repetitions with the summary as its text;
    otherwise (a log file, ``ray submit``) one summary log line every ``log_every_s`` seconds.
    """

    def __init__(self, plan: StudyPlan, layout: StudyLayout, stage: str, log_every_s: float = 60.0, bar: bool | None = None) -> None:
        self.plan = plan
        self.layout = layout
        self.stage = stage
        self.log_every_s = log_every_s
        self.bar = bar
        self.use_bar = False
        self._bar: Any = None
        self._progress: StudyProgress | None = None
        self._started = time.time()
        self._seen_done: dict[str, int] = {}
        self._completed: set[str] = set()
        self._repetitions_this_run = 0
        self._last_write = self._last_log = 0.0
        self._changed = True

    def setup(self, **info: Any) -> None:
        # Decided here, not at construction: a resumed study restores this callback from its first run.
        self.use_bar = _terminal_width() >= MIN_BAR_WIDTH if self.bar is None else self.bar
        self._started = time.time()
        self._seen_done, self._repetitions_this_run = {}, 0
        self._completed = completed_trials(self.plan)
        self._progress = study_running(self.layout, self.plan.spec.name)

    def on_trial_result(self, iteration: int, trials: list, trial: Trial, result: dict, **info: Any) -> None:
        done = int(result.get(DONE_KEY) or 0)
        previous = self._seen_done.setdefault(trial.trial_id, done)  # a restored trial's earlier repetitions are not this run's pace
        if done > previous:
            self._repetitions_this_run += done - previous
            self._seen_done[trial.trial_id] = done
        self._changed = True

    def on_trial_start(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._changed = True

    def on_trial_complete(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._completed.add(trial.trial_id)
        self._changed = True

    def on_trial_error(self, iteration: int, trials: list, trial: Trial, **info: Any) -> None:
        self._changed = True

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        if (self._changed and now - self._last_write >= WRITE_EVERY_S) or now - self._last_write >= HEARTBEAT_S:
            self._update(trials, now)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        stage = self._update(trials, time.time(), ended=True)
        if self._bar is not None:
            self._bar.close()
        logger.info("%s by cell:\n%s", self.stage, "\n".join(stage_table(stage)))

    def _update(self, trials: list, now: float, ended: bool = False) -> StageProgress:
        stage = stage_progress(self.plan, trials, self._completed, self._started, self._repetitions_this_run)
        stage.ended = ended
        progress = self._progress = self._progress or study_running(self.layout, self.plan.spec.name)
        progress.stages[self.stage] = stage
        progress.updated_at = now
        try:
            progress.write(self.layout.progress)
        except OSError as exc:  # a full disk must not stop the study from being stopped cleanly
            logger.warning("could not write %s: %s", self.layout.progress, exc)
        self._last_write, self._changed = now, False
        self._show(stage, now, ended)
        return stage

    def _show(self, stage: StageProgress, now: float, ended: bool) -> None:
        if self.use_bar:
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(
                    total=stage.total("repetitions_total"), desc=f"{self.plan.spec.name} {self.stage}", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} repetitions [{elapsed}{postfix}]",
                )
            self._bar.total = stage.total("repetitions_total")
            self._bar.n = stage.total("repetitions_done")
            left = "" if ended else f", left ~{duration_text(stage.seconds_left(now))}"
            self._bar.set_postfix_str(
                f"trials {stage.total('trials_done')}/{stage.total('trials_total')} ({stage.total('stopped_early')} stopped, "
                f"{stage.total('failed')} failed), {stage.total('running')} running{left}", refresh=True,
            )
        elif ended or now - self._last_log >= self.log_every_s:
            logger.info("%s: %s", self.stage, summary_line(stage, now))
            self._last_log = now


def read_progress(study_dir: Path) -> StudyProgress:
    """The study's progress record, or an InputError saying what the folder is instead."""
    layout = StudyLayout(study_dir)
    if not layout.progress.exists():
        what = "has not started, or was started by an older modaltune" if layout.spec.exists() else "is not a study folder (STORAGE/STUDY)"
        raise InputError(f"{study_dir}: no {layout.progress.name}; the folder {what}")
    try:
        return StudyProgress.read(layout.progress)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{layout.progress}: unreadable progress record ({exc})") from exc


def _terminal_width() -> int:
    """Columns of the terminal on stderr; 0 when there is none (a log file, ``ray submit``)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns if sys.stderr.isatty() else 0
    except (OSError, ValueError):
        return 0


def study_running(layout: StudyLayout, name: str) -> StudyProgress:
    """The progress record of a driver that is (re)starting the study: earlier stages kept."""
    now = time.time()
    stages: dict[str, StageProgress] = {}
    started = now
    if layout.progress.exists():
        try:
            previous = StudyProgress.read(layout.progress)
            stages, started = previous.stages, previous.started_at
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("ignoring unreadable %s: %s", layout.progress, exc)
    return StudyProgress(
        study=name, state="running", host=socket.gethostname(), pid=os.getpid(), started_at=started, updated_at=now, stages=stages
    )


def mark_study(layout: StudyLayout, name: str, state: str, message: str | None = None) -> None:
    """Record how the driver ended (or that it starts): ``state`` is one of ``STATES``."""
    progress = study_running(layout, name)
    progress.state, progress.message = state, message
    try:
        progress.write(layout.progress)
    except OSError as exc:
        logger.warning("could not record the study as %s in %s: %s", state, layout.progress, exc)
