"""A study never waits silently forever: the driver notices when it is stuck and says why.

Stuck means: no trial has reported anything for ``stall_after_s``, something is waiting for
resources (a worker group's placement group is pending, or a trial cannot be placed), and no
run of this study holds any (so nothing is merely training a long epoch). Then the watchdog
logs who holds the cluster's reservations: each placement group with its trial, and whether
that trial is live, has ended, or is not of this study. Groups of ended trials (a trial whose
process died, a trial start that was replaced) are freed and the study gets a new
``stall_after_s`` to move. If nothing of this study can be freed, on two checks in a row, the
study is interrupted with its state saved (``sweeps.interrupt``) and the driver exits with its
own code and a message that says what to do.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import ray
from ray.tune import Callback

from modaltune.sweeps.interrupt import interrupt_study
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.trial import TRIAL_FILE
from modaltune.sweeps.worker_groups import describe_bundles, group_table, recorded_groups, remove_live

logger = logging.getLogger(__name__)

HOLDING = ("CREATED", "RESCHEDULING")
Kind = Literal["trial", "run", "starting", "ended", "foreign"]
_OWNER = {
    "trial": "trial {trial} (its own process)",
    "run": "trial {trial} (live run)",
    "starting": "not recorded yet (a run may be starting)",
    "ended": "trial {trial} (ended run)",
    "foreign": "not of this study",
}


@dataclass(frozen=True)
class Holding:
    """One placement group holding resources, and whose it is."""

    group_id: str
    state: str
    bundles: str
    kind: Kind
    trial_id: str | None = None

    def line(self) -> str:
        return f"  placement group {self.group_id} {self.state} {self.bundles}: " + _OWNER[self.kind].format(trial=self.trial_id)


@dataclass(frozen=True)
class Survey:
    """What the cluster's placement groups are doing, seen from this study."""

    holdings: list[Holding]
    pending_groups: list[str]
    pending_trials: int

    @property
    def waiting(self) -> bool:
        return bool(self.pending_groups or self.pending_trials)

    @property
    def running(self) -> bool:
        """A run of this study holds resources (or may be starting on them): slow, not stuck."""
        return any(h.kind in ("run", "starting") for h in self.holdings)

    @property
    def ended(self) -> list[Holding]:
        return [h for h in self.holdings if h.kind == "ended"]

    def describe(self, silent_s: float) -> str:
        free, total = ray.available_resources(), ray.cluster_resources()
        waiting = [f"{len(self.pending_groups)} worker group(s)"] * bool(self.pending_groups)
        waiting += [f"{self.pending_trials} trial(s)"] * bool(self.pending_trials)
        head = (
            f"no trial has reported for {silent_s:.0f} s while {' and '.join(waiting)} wait for resources "
            f"({free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPU, {free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPU free); "
            f"{len(self.holdings)} placement group(s) hold resources:"
        )
        return "\n".join([head, *(h.line() for h in self.holdings)])


class StallWatchdog(Callback):
    """Tune callback: detects a stuck study, frees what ended trials hold, else interrupts it."""

    def __init__(self, plan: StudyPlan, stall_after_s: float, check_every_s: float) -> None:
        self.plan = plan
        self.stall_after_s = stall_after_s
        self.check_every_s = check_every_s
        self._progress = self._checked = time.monotonic()
        self._first_seen: dict[str, float] = {}  # placement group -> when a check first saw it
        self._strikes = 0  # consecutive checks that found the study stuck with nothing to free
        self.tripped = False

    def setup(self, **info: Any) -> None:
        """Every driver start, including a resumed study's (Tune restores callbacks pickled
        with the experiment, possibly as they were when this watchdog interrupted it)."""
        self._progress = self._checked = time.monotonic()
        self._first_seen.clear()
        self._strikes, self.tripped = 0, False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._progress = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._progress = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._progress = time.monotonic()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self.tripped or now - self._checked < self.check_every_s:
            return
        self._checked = now
        table = group_table()
        self._note_new_groups(table, now)
        silent = now - self._progress
        if silent < self.stall_after_s:
            self._strikes = 0
            return
        survey = self.survey(trials, table, now)
        if not survey.waiting or survey.running:
            self._strikes = 0
            return
        if self._strikes == 0:
            logger.warning(survey.describe(silent))
        freed = remove_live([h.group_id for h in survey.ended])
        if freed:
            logger.warning("freed %d worker group(s) of ended trials: %s", len(freed), ", ".join(freed))
            self._progress, self._strikes = now, 0
            return
        self._strikes += 1
        if self._strikes < 2:
            return
        self.tripped = True
        interrupt_study(
            StudyLayout(self.plan.study_dir), "watchdog",
            f"the study made no progress for {silent:.0f} s: its trials wait for resources that nothing of this "
            "study holds (see the placement groups above). State saved: free those resources or add nodes "
            "(or lower max_concurrent / resources in the spec, the study's or a method level's), then run the same command with --resume",
        )

    def survey(self, trials: list, table: dict[str, dict[str, Any]], now: float) -> Survey:
        running = [t for t in trials if t.status == "RUNNING"]
        starts = {t.trial_id: self._trial_record(t.trial_id) for t in running}
        own = {start.get("placement_group"): trial_id for trial_id, start in starts.items()}
        records = {record.group_id: record for record in recorded_groups(self.plan)}
        holdings = []
        for group_id, entry in table.items():
            if entry.get("state") not in HOLDING:
                continue
            state, bundles = entry["state"], describe_bundles(entry)
            record = records.get(group_id)
            if group_id in own:
                holdings.append(Holding(group_id, state, bundles, "trial", own[group_id]))
            elif record is not None:
                live = record.owner == starts.get(record.trial_id, {}).get("incarnation", "not running")
                holdings.append(Holding(group_id, state, bundles, "run" if live else "ended", record.trial_id))
            else:  # a run records its group once its workers start: a young group may be one
                young = now - self._first_seen.get(group_id, now) < self.stall_after_s
                holdings.append(Holding(group_id, state, bundles, "starting" if young else "foreign"))
        pending_groups = [group_id for group_id, entry in table.items() if entry.get("state") == "PENDING"]
        pending_trials = sum(t.status == "PENDING" for t in trials) if len(running) < self.plan.spec.max_concurrent else 0
        return Survey(holdings, pending_groups, pending_trials)

    def _note_new_groups(self, table: dict[str, dict[str, Any]], now: float) -> None:
        """Remember when each group was first seen, and say once when one starts waiting."""
        for group_id, entry in table.items():
            if entry.get("state") == "REMOVED":
                self._first_seen.pop(group_id, None)
                continue
            if group_id in self._first_seen:
                continue
            self._first_seen[group_id] = now
            if entry.get("state") == "PENDING":
                free = ray.available_resources()
                logger.info(
                    "a worker group (%s) is waiting for resources: %g CPU, %g GPU free",
                    describe_bundles(entry), free.get("CPU", 0), free.get("GPU", 0),
                )

    def _trial_record(self, trial_id: str) -> dict[str, Any]:
        try:
            return json.loads((self.plan.trial_dir(trial_id) / TRIAL_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
