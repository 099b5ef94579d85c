"""The safety net for worker groups whose trial died with them.

A trial stopped by Tune ends its Ray Train run itself (``sweeps.trial``), and a run that
finishes or fails removes its own placement group. What is left is a trial whose process died
(its node lost, killed by the kernel or by hand): its run's controller dies with it, and the
group, owned by the job, stays reserved. ``WorkerGroupReaper`` removes the groups recorded by a
trial's workers (``sweeps.worker_groups``) shortly after Tune reports the trial ended or
errored, and at once when Tune restarts it, so the restarted run finds room.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray.tune import Callback

from modaltune.sweeps.plan import StudyPlan
from modaltune.sweeps.worker_groups import recorded_groups, remove_live

logger = logging.getLogger(__name__)


class WorkerGroupReaper(Callback):
    """Tune callback: removes the placement groups an ended or failed trial left behind.

    It waits ``grace_s`` after the trial ends (driven by ``on_step_end``, which Tune calls on
    every turn of its loop): a process that is only shutting down still removes its own group.
    """

    def __init__(self, plan: StudyPlan, grace_s: float = 3.0) -> None:
        self.plan = plan
        self.grace_s = grace_s
        self._due: dict[str, float] = {}  # trial id -> when to reap it

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._due[trial.trial_id] = time.monotonic() + self.grace_s

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._due[trial.trial_id] = time.monotonic() + self.grace_s

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Now, before Tune starts the trial again: only the dead start's groups are on record.
        self._due.pop(trial.trial_id, None)
        self.reap(trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for trial_id in [t for t, due in self._due.items() if due <= now]:
            del self._due[trial_id]
            self.reap(trial_id)

    def reap(self, trial_id: str) -> list[str]:
        """Remove the trial's recorded placement groups that still exist; returns their ids."""
        removed = remove_live([record.group_id for record in recorded_groups(self.plan, trial_id)])
        if removed:
            logger.warning(
                "trial %s ended with its Ray Train run still holding resources: freed worker group %s", trial_id, ", ".join(removed)
            )
        return removed
