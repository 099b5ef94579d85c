"""Free the resources of a trial's Ray Train run when Tune ends the trial while the run is live.

A trial trains its repetitions in one Ray Train run, so the scheduler (ASHA, median stopping)
stops trials while their run is still going, and a failing trial dies mid-run. Ray Train V2
reserves a run's workers in a placement group that belongs to the job, not to the run's
controller: when Tune kills the trial and with it the controller, the group's CPUs and GPUs stay
reserved. Ray Train's own ``PlacementGroupCleaner`` frees them only when Ray's State API answers
(a dashboard, and one Ray instance per machine); an embedded Ray has neither, so a few stopped
trials used to leave no room for the next and the study hung. Every worker records its group
(``workers/rank<r>.json``); when Tune ends or restarts a trial, this callback removes the groups
that are still there. A run that ended by itself has already removed its group.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import ray
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from sweeps.plan import StudyPlan

logger = logging.getLogger(__name__)


class WorkerGroupReaper(Callback):
    """Tune callback: removes the placement groups a finished, stopped or failed trial left behind.

    It waits ``grace_s`` after the trial ends: a controller that is still shutting its run down
    removes the group itself, and pulling the group from under it only adds a traceback to the
    log. Groups still there after the grace period are removed.
    """

    def __init__(self, plan: StudyPlan, grace_s: float = 10.0) -> None:
        self.plan = plan
        self.grace_s = grace_s
        self._due: dict[str, float] = {}  # trial id -> when to reap it

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._due[trial.trial_id] = time.monotonic() + self.grace_s

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._due[trial.trial_id] = time.monotonic() + self.grace_s

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Now, before Tune starts the trial again: only the dead run's groups are on record.
        self._due.pop(trial.trial_id, None)
        self.reap(trial.trial_id)

    def on_step(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for trial_id in [t for t, due in self._due.items() if due <= now]:
            del self._due[trial_id]
            self.reap(trial_id)

    def reap(self, trial_id: str) -> list[str]:
        """Remove the trial's recorded placement groups that still exist; returns their ids."""
        removed = []
        for group_id in sorted(self._recorded_groups(trial_id)):
            group = PlacementGroup(ray.PlacementGroupID.from_hex(group_id))
            if placement_group_table(group).get("state") in (None, "REMOVED"):
                continue
            remove_placement_group(group)
            removed.append(group_id)
        if removed:
            logger.info("trial %s ended while its Ray Train run was live: freed %d worker group(s)", trial_id, len(removed))
        return removed

    def _recorded_groups(self, trial_id: str) -> set[str]:
        records = self.plan.trial_dir(trial_id).glob("*/workers/rank*.json")  # written atomically: never torn
        return {group for record in records if (group := json.loads(record.read_text(encoding="utf-8")).get("placement_group"))}
