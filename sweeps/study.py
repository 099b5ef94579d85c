"""Running a study: validate, prepare shared artefacts, then one Ray Tune ``Tuner`` over all cells,
and, with a confirm stage, a second one over each cell's chosen configuration (sweeps/confirm.py).

Order matters: the spec, the cohort and every run config are checked first and nothing is
written on bad input; then the driver takes the study (sweeps/lock.py: one driver at a time);
label banks are computed once; only then does Ray start. A study folder is ``STORAGE/NAME``;
``resume=True`` continues it with the spec it started with (sweeps/identity.py), through
``Tuner.restore`` once Tune's saved state is one whole save again (sweeps/tune_state.py):
finished trials are kept, unfinished ones restart and skip the repetitions they finished, and
the per-cell Optuna studies continue from their saved state. The study ends with its report and
selected model (``conclude``), still held: it reads ``finished`` only once they are written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from ray import tune
from ray.tune import CheckpointConfig, CLIReporter, FailureConfig, RunConfig, TuneConfig, Tuner
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from modaltune.atomic import write_text_atomic
from modaltune.errors import InputError
from modaltune.sweeps.channel import open_channel
from modaltune.sweeps.confirm import FixedConfigurations, confirmation_configs
from modaltune.sweeps.identity import record_changes, record_new_study, resumed_changes
from modaltune.sweeps.interrupt import INTERRUPTS, clear_interruption, interrupt_study, read_interruption
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.lock import StudyLock, StudyLockedError, refuse_if_driven
from modaltune.sweeps.plan import StudyPlan, build_plan, prepare_label_banks
from modaltune.sweeps.progress import NO_MODEL, ProgressTracker, mark_study
from modaltune.sweeps.reaper import WorkerGroupReaper
from modaltune.sweeps.result_parts import trial_states_table
from modaltune.sweeps.results import UNFINISHED_STATES, ResultsWriter
from modaltune.sweeps.schedulers import make_scheduler
from modaltune.sweeps.searcher import CellSearcher
from modaltune.sweeps.spec import StudySpec
from modaltune.sweeps.storage import StorageError, StorageGuard, check_storage
from modaltune.sweeps.trackers import study_trackers
from modaltune.sweeps.trial import StudyTrial
from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, cv_key
from modaltune.sweeps.tune_state import SavedSearch, prepare_restore
from modaltune.sweeps.watchdog import StallWatchdog
from modaltune.train import ray_session

logger = logging.getLogger(__name__)

# A trial's own process only waits on its Ray Train run, whose workers hold the real resources.
TRIAL_DRIVER_RESOURCES = {"cpu": 0.05}


class StudyStalledError(RuntimeError):
    """The watchdog found the study stuck with nothing of its own to free; its state is saved."""


@dataclass
class StudyOutcome:
    study_dir: Path
    trials: int
    errors: int
    unfinished: int  # > 0 when the driver was interrupted: continue with resume
    problem: str | None = None  # why the conclusion selected no model (None: report and model written, or none asked for)


# Writes the report and exports the selected model of a study folder; returns None when both are
# written, else why no model was selected. The command passes it (analysis is above sweeps).
Conclude = Callable[[Path, StudySpec], "str | None"]


def run_study(
    spec: StudySpec, storage: Path, *, resume: bool = False, address: str | None = None, tune_table: bool = False,
    trainable: type[tune.Trainable] = StudyTrial, reuse_actors: bool = False, conclude: Conclude | None = None,
    source: str = "the spec",
) -> StudyOutcome:
    """Run (or with ``resume`` continue) the study into ``storage / spec.name``: the search,
    then, if the spec asks for one, the confirm stage (sweeps/confirm.py), then ``conclude``
    (the report and the selected model), all under the study's lock (sweeps/lock.py): the
    study reads ``finished`` only once they are written. ``source`` names the spec in messages.
    ``tune_table`` shows Ray Tune's own status table instead of the study's progress display
    (sweeps/progress.py). ``trainable`` trains one trial (``setup(config, plan, channel)``):
    benchmarks/bench_driver.py passes one that reports made-up epochs at once, to measure the
    driver alone, and ``reuse_actors`` so that its trials share processes (``StudyTrial``
    cannot: its Ray Train run lives in the trial's process until the trial ends)."""
    storage = storage.resolve()
    layout = StudyLayout(storage / spec.name)
    # Tune's own per-trial loggers (result.json, progress.csv, TensorBoard events of every
    # result) repeat what the study writes (results/, each run's TensorBoard) and cost the
    # driver ~6 ms a result: two thirds of its time per result (benchmarks/bench_driver.py).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Without them, the ResultGrid that Tuner.fit builds (the study never reads it) finds no
    # result.json and warns once per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    if layout.root.exists():
        refuse_if_driven(layout)  # before any expensive check: name the driver at once
    _check_resumable(layout, spec, resume, source)
    plan = build_plan(spec, layout.root)
    confirmation = build_plan(spec.confirmation(), layout.confirmation) if spec.confirm is not None else None
    check_storage(storage, spec.min_free_mb)
    for tracker in study_trackers(spec, layout.root):
        tracker.check()
    lock = StudyLock(layout, on_lost=lambda message: interrupt_study(layout, "lock", message))
    lock.acquire()  # before anything is written to the study folder
    try:
        changes = _check_resumable(layout, spec, resume, source)  # again: no other driver can change it now
        if resume:
            record_changes(layout, spec, changes)
        else:
            # The progress record first: a driver killed right after study.yaml marks the study
            # leaves a study that `modaltune status` calls interrupted (resume it), not unstarted.
            mark_study(layout, spec.name, "running")
            try:
                record_new_study(layout, spec)
            except BaseException:
                layout.progress.unlink(missing_ok=True)  # no study.yaml: nothing may look like a study
                raise
        return _drive(plan, confirmation, resume, address, tune_table, trainable, reuse_actors, conclude)
    finally:
        lock.release()


def _check_resumable(layout: StudyLayout, spec: StudySpec, resume: bool, source: str) -> dict[str, Any]:
    """A study is a folder with its ``study.yaml``: ``resume`` needs one (with a spec that computes
    the same, see sweeps/identity.py), a new study needs none. Returns the harmless changes."""
    started = layout.spec.exists()
    if resume and not started:
        raise InputError(f"--resume: there is no study to continue at {layout.root}")
    if not resume and started:
        raise InputError(f"{layout.root} already holds study '{spec.name}': pass --resume to continue it, or choose another --storage")
    return resumed_changes(layout, spec, source) if resume else {}


def _drive(
    plan: StudyPlan, confirmation: StudyPlan | None, resume: bool, address: str | None, tune_table: bool,
    trainable: type[tune.Trainable], reuse_actors: bool, conclude: Conclude | None,
) -> StudyOutcome:
    """Everything after the lock: the stages on Ray, the conclusion, and the state it leaves."""
    spec, layout = plan.spec, StudyLayout(plan.study_dir)
    if confirmation is not None and not StudyLayout(confirmation.study_dir).spec.exists():
        confirmed_spec = yaml.safe_dump(confirmation.spec.model_dump(mode="json"), sort_keys=False)
        write_text_atomic(StudyLayout(confirmation.study_dir).spec, confirmed_spec)
    for stage in filter(None, (plan, confirmation)):
        clear_interruption(StudyLayout(stage.study_dir))
    mark_study(layout, spec.name, "running")
    try:
        ray_session.connect(address, use_gpu=plan.uses_gpu, processes=_processes(plan))
        for stage in filter(None, (plan, confirmation)):
            prepare_label_banks(stage)
        outcome = _run_stages(plan, confirmation, resume, tune_table, trainable, reuse_actors)
        if outcome.unfinished:
            INTERRUPTS.stopping = True  # Tune took the Ctrl-C (or the guard's signal): later ones only say so
        elif conclude is not None:
            mark_study(layout, spec.name, "running", "writing the report and exporting the selected model")
            outcome.problem = conclude(layout.root, spec)
    except (StorageError, OSError) as exc:  # a full or unwritable disk: the state is saved, --resume once fixed
        mark_study(layout, spec.name, "interrupted", str(exc) or type(exc).__name__)
        raise
    except (StudyStalledError, StudyLockedError, KeyboardInterrupt) as exc:
        mark_study(layout, spec.name, "interrupted", str(exc) or "interrupted (Ctrl-C)")
        raise
    except BaseException as exc:
        mark_study(layout, spec.name, "failed", f"{type(exc).__name__}: {exc}")
        raise
    if outcome.unfinished:
        mark_study(layout, spec.name, "interrupted", f"{outcome.unfinished} trials unfinished")
    elif outcome.errors:
        mark_study(layout, spec.name, "failed", f"{outcome.errors} of {outcome.trials} trials failed; see trials.parquet")
    elif outcome.problem is not None:
        mark_study(layout, spec.name, "failed", f"{NO_MODEL}: {outcome.problem}")
    else:
        mark_study(layout, spec.name, "finished")
    return outcome


def _run_stages(
    plan: StudyPlan, confirmation: StudyPlan | None, resume: bool, tune_table: bool, trainable: type[tune.Trainable],
    reuse_actors: bool,
) -> StudyOutcome:
    layout = StudyLayout(plan.study_dir)
    channel = open_channel()  # the trials' reports and verdicts; dies with this driver
    outcome = _run_stage(
        plan, "search", channel, layout.root.parent, _tune_config(plan, reuse_actors), resume, tune_table, layout, trainable
    )
    if confirmation is None or outcome.unfinished:  # an interrupted search is resumed before anything is confirmed
        return outcome
    configs = confirmation_configs(plan, confirmation)
    logger.info(
        "confirm stage: %d cells' chosen configurations on seeds %s, folds %s",
        len(configs), confirmation.spec.seeds, confirmation.spec.fold_indices,
    )
    tune_config = TuneConfig(
        search_alg=_saved_search(FixedConfigurations(configs), confirmation),
        num_samples=len(configs),
        trial_dirname_creator=trial_dirname,
    )
    confirmed = _run_stage(confirmation, "confirm", channel, layout.root, tune_config, resume, tune_table, layout, trainable)
    return StudyOutcome(
        study_dir=layout.root,
        trials=outcome.trials + confirmed.trials,
        errors=outcome.errors + confirmed.errors,
        unfinished=confirmed.unfinished,
    )


def _run_stage(
    plan: StudyPlan, stage: str, channel: Any, storage: Path, tune_config: TuneConfig, resume: bool, tune_table: bool,
    study: StudyLayout, trainable: type[tune.Trainable],
) -> StudyOutcome:
    """One Tune run of a stage into ``storage / <its folder name>``; raises if it was interrupted.
    Its progress goes to ``study``'s progress file under the name ``stage``."""
    layout = StudyLayout(plan.study_dir)
    trainable = tune.with_resources(tune.with_parameters(trainable, plan=plan, channel=channel), TRIAL_DRIVER_RESOURCES)
    if resume and prepare_restore(layout.root):  # Tune's saved state whole again, its unknown trials set aside
        logger.info("resuming %s", layout.root)
        # Errored trials resume too: what errors a trial mid-study (a full disk, a node lost more
        # often than max_failures) is what resume is for; a config that always fails fails fast again.
        tuner = Tuner.restore(str(layout.root), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if resume:
            logger.info("%s: Ray Tune has no saved state to restore; the %s starts from the beginning", layout.root, stage)
        tuner = Tuner(trainable, tune_config=tune_config, run_config=_run_config(plan, storage, layout.root.name, study, stage, tune_table))
    with INTERRUPTS.tune_run():
        tuner.fit()
    trials = trial_states_table(layout.trials).read()
    states = trials["state"] if len(trials) else pd.Series(dtype=str)
    outcome = StudyOutcome(
        study_dir=layout.root, trials=len(states), errors=int((states == "error").sum()),
        unfinished=int(states.isin(UNFINISHED_STATES).sum()),
    )
    interruption = read_interruption(layout) if outcome.unfinished else None
    if interruption is not None:
        message = f"{interruption.message} ({outcome.unfinished} trials unfinished)"
        raise {"storage": StorageError, "lock": StudyLockedError}.get(interruption.by, StudyStalledError)(message)
    return outcome


def _processes(plan: StudyPlan) -> int:
    """Ray worker processes the study keeps alive at once: per running trial its own process,
    Ray Train's controller, placement-group cleaner, synchronisation actor, dataset manager and
    preemption watcher (on a cluster), and the workers (as many as its largest cell's trials
    have); the study's channel, Ray's autoscaling coordinator."""
    workers = max(plan.resources(cell).num_workers for cell in plan.cells)
    return plan.spec.max_concurrent * (6 + workers) + 2


def _tune_config(plan: StudyPlan, reuse_actors: bool) -> TuneConfig:
    search = plan.spec.search
    levels = {cell.id: cell.levels for cell in plan.cells}
    searcher = CellSearcher(
        levels, search, len(plan.repetitions), StudyLayout(plan.study_dir).optuna,
        cell_searches={cell.id: plan.search(cell) for cell in plan.cells},
    )
    return TuneConfig(
        search_alg=_saved_search(searcher, plan),
        scheduler=make_scheduler(plan),
        num_samples=len(plan.cells) * search.trials_per_cell,
        trial_dirname_creator=trial_dirname, reuse_actors=reuse_actors,
    )


def _saved_search(searcher: Searcher, plan: StudyPlan) -> SavedSearch:
    """The stage's searcher, at most ``max_concurrent`` trials at once, keeping a copy of every
    state Tune saves (sweeps/tune_state.py)."""
    return SavedSearch(searcher, plan.spec.max_concurrent, plan.study_dir, plan.spec.min_free_mb)


def _run_config(plan: StudyPlan, storage: Path, name: str, study: StudyLayout, stage: str, tune_table: bool) -> RunConfig:
    watchdog = plan.spec.watchdog
    callbacks = [
        ResultsWriter(plan), WorkerGroupReaper(plan), StallWatchdog(plan, watchdog.stall_after_s, watchdog.check_every_s),
        ProgressTracker(plan, study, stage), *(tracker.callback(stage) for tracker in study_trackers(plan.spec, study.root)),
    ]
    return RunConfig(
        storage_path=str(storage),
        name=name,
        callbacks=callbacks,
        failure_config=FailureConfig(max_failures=plan.spec.max_failures),
        # A trial's state is its run folders (Ray Train checkpoints, finished.json); a restarted
        # trial resumes from them, so Tune keeps no checkpoints of its own (sweeps/trial.py).
        checkpoint_config=CheckpointConfig(checkpoint_at_end=False),
        stop=StorageGuard(storage, StudyLayout(plan.study_dir), plan.spec.min_free_mb),
        progress_reporter=_tune_table(plan) if tune_table else None,
        verbose=1 if tune_table else 0,
    )


def _tune_table(plan: StudyPlan) -> CLIReporter:
    """Ray Tune's status table with the study's factor and metric columns (``--tune-table``)."""
    return CLIReporter(
        parameter_columns=[CELL_KEY, *plan.factor_names, *plan.param_names],
        metric_columns={DONE_KEY: "reps", "epoch": "epoch", **{cv_key(m): m for m in plan.metric_names}},
        max_report_frequency=30,
    )


def trial_dirname(trial: Trial) -> str:
    """Tune's folder of a trial, named after its cell so a listing reads like the design."""
    return f"{trial.config[CELL_KEY]}_{trial.trial_id}"
