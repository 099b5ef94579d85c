"""The early-stopping rules a cell's trials race under, by the name a study spec gives
(``scheduler.type``); ``modaltune.sweeps.schedulers.PerCellScheduler`` keeps one per cell.

Each rule is a ``CellScheduler`` class that owns its settings (``Settings``: the keys a spec's
``scheduler:`` section may give besides ``type``, with their defaults and bounds) and makes a
fresh Ray Tune scheduler for one cell from the race its trials run (``CellRace``: the metric, its
mode, the time axis and its length). Ray is imported only when a rule is built, so a spec loads,
plans and is analysed without it. A new rule is one registered class here; the spec's validator
reads the names and each rule's settings from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from modaltune.registry import Registry

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler


@dataclass(frozen=True)
class CellRace:
    metric: str
    mode: str
    time_attr: str  # the reported count of finished repetitions (folds x seeds)
    total: int  # repetitions a trial runs in all


class RuleSettings(BaseModel):
    """A rule's settings; unknown keys are refused naming the rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CellScheduler:
    """An early-stopping rule for the trials of one cell."""

    Settings: ClassVar[type[RuleSettings]] = RuleSettings
    stops_trials: ClassVar[bool] = True  # False: nothing to stop, the study runs FIFO

    def __init__(self, settings: RuleSettings) -> None:
        self.settings = settings

    def build(self, race: CellRace) -> TrialScheduler:
        """A fresh Ray Tune scheduler for one cell."""
        raise NotImplementedError(f"{type(self).__name__} stops no trial")


CELL_SCHEDULERS: Registry[type[CellScheduler]] = Registry("scheduler")


class AshaSettings(RuleSettings):
    grace_period: int = Field(default=1, ge=1, description="repetitions every trial runs before it can be stopped")
    reduction_factor: float = Field(default=2.0, gt=1, description="1/reduction_factor of the trials go on at each rung")


@CELL_SCHEDULERS.register("asha")
class AshaRule(CellScheduler):
    """Asynchronous successive halving (Li et al., MLSys 2020), Ray Tune's ``ASHAScheduler``."""

    Settings = AshaSettings

    def build(self, race: CellRace) -> TrialScheduler:
        from ray.tune.schedulers import ASHAScheduler

        settings = self.settings
        assert isinstance(settings, AshaSettings)
        return ASHAScheduler(
            time_attr=race.time_attr, metric=race.metric, mode=race.mode,
            max_t=race.total, grace_period=min(settings.grace_period, race.total), reduction_factor=settings.reduction_factor,
        )


class MedianSettings(RuleSettings):
    grace_period: int = Field(default=1, ge=1, description="repetitions every trial runs before it can be stopped")
    min_samples_required: int = Field(default=3, ge=1, description="trials of the cell that must have reported before any is stopped")


@CELL_SCHEDULERS.register("median")
class MedianRule(CellScheduler):
    """The median stopping rule (Golovin et al., KDD 2017, Google Vizier), Ray Tune's ``MedianStoppingRule``."""

    Settings = MedianSettings

    def build(self, race: CellRace) -> TrialScheduler:
        from ray.tune.schedulers import MedianStoppingRule

        settings = self.settings
        assert isinstance(settings, MedianSettings)
        return MedianStoppingRule(
            time_attr=race.time_attr, metric=race.metric, mode=race.mode,
            grace_period=settings.grace_period, min_samples_required=settings.min_samples_required,
        )


@CELL_SCHEDULERS.register("none")
class NoRule(CellScheduler):
    """Every trial runs every repetition."""

    stops_trials = False
