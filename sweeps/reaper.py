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
from typing import Any

import ray
from ray.tune import Callback
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from sweeps.plan import StudyPlan

logger = logging.getLogger(__name__)


class WorkerGroupReaper(Callback):
    """Tune callback: removes the placement groups a finished, stopped or failed trial left behind."""

    def __init__(self, plan: StudyPlan) -> None:
        self.plan = plan

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reap(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reap(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.reap(trial.trial_id)  # before Tune starts it again, so only the dead run's groups are on record

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
