"""The early-stopping rules a cell's trials race under, by the name a study spec gives
(``scheduler.type``); ``sweeps.schedulers.PerCellScheduler`` keeps one per cell.

Each entry makes a fresh Ray Tune scheduler for one cell from the spec and the race its trials
run (``CellRace``: the metric, its mode, the time axis and its length); ``none`` is registered as
``None``: nothing to stop, so the study runs FIFO. A new rule is one registered function here;
the spec's validator reads the names from this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from modaltune.registry import Registry

if TYPE_CHECKING:
    from modaltune.sweeps.spec import SchedulerSpec


@dataclass(frozen=True)
class CellRace:
    metric: str
    mode: str
    time_attr: str  # the reported count of finished repetitions (folds x seeds)
    total: int  # repetitions a trial runs in all


CellSchedulerFactory = Callable[["SchedulerSpec", CellRace], TrialScheduler]
CELL_SCHEDULERS: Registry[CellSchedulerFactory | None] = Registry("scheduler")


@CELL_SCHEDULERS.register("asha")
def _asha(spec: SchedulerSpec, race: CellRace) -> TrialScheduler:
    return ASHAScheduler(
        time_attr=race.time_attr, metric=race.metric, mode=race.mode,
        max_t=race.total, grace_period=min(spec.grace_period, race.total), reduction_factor=spec.reduction_factor,
    )


@CELL_SCHEDULERS.register("median")
def _median(spec: SchedulerSpec, race: CellRace) -> TrialScheduler:
    return MedianStoppingRule(
        time_attr=race.time_attr, metric=race.metric, mode=race.mode,
        grace_period=spec.grace_period, min_samples_required=spec.min_samples_required,
    )


CELL_SCHEDULERS.register("none")(None)
