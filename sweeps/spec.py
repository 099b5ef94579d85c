"""The study spec: one YAML file that says what a study compares, how it tunes and on what.

Everything is validated here, before Ray starts: unknown keys, factor levels, search
distributions, samplers and schedulers are errors that name their key, so a typo never costs a
cluster-hour. Paths in the spec are relative to the spec file, so the same file works from the
repository on a laptop and from the mounted repository on a cluster head node.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from modaltune.errors import InputError, describe_validation_error, read_yaml_mapping
from modaltune.metrics import METRICS
from modaltune.sweeps.cell_schedulers import CELL_SCHEDULERS, CellScheduler
from modaltune.sweeps.factors import FACTORS, factor_level
from modaltune.sweeps.resources import ResourcesSpec, level_resources
from modaltune.sweeps.samplers import SAMPLERS
from modaltune.sweeps.trackers import TRACKERS

if TYPE_CHECKING:
    import optuna

LOSS_METRIC = "loss"  # the objective's validation loss: a study may also tune on it (lower is better)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One tuned hyperparameter: ``loguniform``/``uniform`` (low, high), ``int`` (low, high,
    step, log) or ``categorical`` (choices)."""

    type: Literal["loguniform", "uniform", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: int | None = Field(default=None, ge=1)
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> Distribution:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"needs finite low < high, got low={self.low}, high={self.high}")
        if (self.type == "loguniform" or self.log) and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("int needs integer low and high")
        return self

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        import optuna  # only where a search or its analysis runs: a spec loads without it

        if self.type == "categorical":
            return optuna.distributions.CategoricalDistribution(self.choices or [])
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low or 0), int(self.high or 0), step=self.step or 1, log=self.log)
        return optuna.distributions.FloatDistribution(self.low or 0.0, self.high or 0.0, log=self.type == "loguniform" or self.log)

    def corners(self) -> list[Any]:
        """Values that must all make a valid run config: both ends, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]


class MetricGoal(_Strict):
    name: str
    mode: Literal["max", "min"] | None = None

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name != LOSS_METRIC and name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {[*METRICS.names(), LOSS_METRIC]}")
        return name

    @property
    def direction(self) -> str:
        return self.mode or ("min" if self.name == LOSS_METRIC else METRICS[self.name].direction)


class SearchSpec(_Strict):
    """The nuisance hyperparameters tuned inside every cell, each cell with the same budget."""

    trials_per_cell: int = Field(default=1, ge=1)
    sampler: str = "tpe"
    seed: int = 0
    metrics: list[MetricGoal] = Field(default_factory=lambda: [MetricGoal(name="c_index")], min_length=1, max_length=3)
    params: dict[str, Distribution] = Field(default_factory=dict)

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, name: str) -> str:
        return SAMPLERS.check(name)

    @model_validator(mode="after")
    def _sampler_fits(self) -> SearchSpec:
        SAMPLERS[self.sampler].check(self.sampler, self)
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metrics repeat a name: {names}")
        return self

    @property
    def primary(self) -> MetricGoal:
        return self.metrics[0]


class SchedulerSpec(_Strict):
    """Early stopping between repetitions (folds x seeds) of a trial; see sweeps/searcher.py.

    ``type`` names a rule of ``CELL_SCHEDULERS``; the other keys are that rule's own settings
    (``asha``: grace_period, reduction_factor; ``median``: grace_period, min_samples_required).
    """

    type: str = "asha"
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _gather_settings(cls, value: Any) -> Any:
        """A spec writes a rule's settings beside its type (``{type: asha, grace_period: 2}``)."""
        if isinstance(value, dict) and "settings" not in value:
            return {"type": value.get("type", "asha"), "settings": {k: v for k, v in value.items() if k != "type"}}
        return value

    @field_validator("type")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind == "pbt":  # a Tune scheduler users ask for, refused with the reason
            raise ValueError(
                "pbt mutates hyperparameters inside running trials and Ray Tune refuses it together with a "
                f"search algorithm; studies tune with Optuna per cell, so use one of {CELL_SCHEDULERS.names()}"
            )
        return CELL_SCHEDULERS.check(kind)

    @model_validator(mode="after")
    def _rule_settings(self) -> SchedulerSpec:
        self.settings = self.rule().settings.model_dump()  # the rule's defaults filled in
        return self

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        """Written back as a spec gives it: the settings beside the type."""
        dumped = handler(self)
        return {"type": dumped["type"], **dumped["settings"]}

    def rule(self) -> CellScheduler:
        """The rule with its validated settings; a setting it does not have is an error naming it."""
        rule = CELL_SCHEDULERS[self.type]
        try:
            return rule(rule.Settings.model_validate(self.settings))
        except ValidationError as exc:
            raise ValueError(
                f"scheduler {self.type!r}: {describe_validation_error(exc)} (its settings: {sorted(rule.Settings.model_fields) or 'none'})"
            ) from exc


class WatchdogSpec(_Strict):
    """When a study counts as stuck: no trial has reported for ``stall_after_s`` while trials
    wait for resources and no live run holds any (see sweeps/watchdog.py)."""

    stall_after_s: float = Field(default=900.0, gt=0)
    check_every_s: float = Field(default=10.0, gt=0)


class DesignSpec(_Strict):
    """How ablation cells are chosen: every combination, one factor at a time, or a sample."""

    type: Literal["crossed", "one_at_a_time", "sampled"] = "crossed"
    cells: int | None = Field(default=None, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sampled_has_size(self) -> DesignSpec:
        if (self.type == "sampled") != (self.cells is not None):
            raise ValueError("'cells' is required for type 'sampled' and only allowed there")
        return self


class ConfirmSpec(_Strict):
    """After the search, each cell's chosen configuration is trained again on fresh seeds (and,
    with ``folds``, on other validation folds); the ablation tables and tests then use these
    runs only, so the scores that compare cells are not the ones that chose their configurations
    (sweeps/confirm.py)."""

    seeds: list[int] = Field(min_length=1)
    folds: int | list[int] | None = None  # default: the search's folds


class TrackerSpec(_Strict):
    """An experiment tracker (sweeps/trackers.py): ``mlflow`` (``tracking_uri``, ``experiment``;
    default a local store in the study folder) or ``wandb`` (``project``, ``mode``: offline by default)."""

    name: str
    tracking_uri: str | None = None
    experiment: str | None = None
    project: str | None = None
    mode: Literal["offline", "online"] = "offline"

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return TRACKERS.check(name)


class StudySpec(_Strict):
    name: str
    cohort: Path
    synthetic: dict[str, Any] | None = None
    cohorts: list[str] | None = None
    tasks: dict[str, float] = Field(default_factory=dict)
    folds: int | list[int] = 2
    folds_by: Literal["case", "site"] = "case"  # "site": refuse a cohort whose folds split a tissue source site
    test_fold: int | None = Field(default=None, ge=0)  # held out of every repetition: an unbiased test of the selected model
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    train: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, list[Any]] = Field(default_factory=dict)
    design: DesignSpec = Field(default_factory=DesignSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: int = Field(default=2, ge=1)
    max_failures: int = Field(default=0, ge=0)
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec)
    storage: str | None = None
    min_free_mb: float = Field(default=100.0, ge=0)  # the study stops (resumable) below this much free storage
    confirm: ConfirmSpec | None = None
    trackers: list[TrackerSpec] = Field(default_factory=list)

    @field_validator("trackers", mode="before")
    @classmethod
    def _tracker_shorthand(cls, value: Any) -> Any:
        return [{"name": entry} if isinstance(entry, str) else entry for entry in value] if isinstance(value, list) else value

    @field_validator("design", mode="before")
    @classmethod
    def _design_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"must be letters, digits, '-', '_' or '.', got {name!r}")
        return name

    @field_validator("folds")
    @classmethod
    def _folds(cls, folds: int | list[int]) -> int | list[int]:
        _check_folds(folds)
        return folds

    @field_validator("factors")
    @classmethod
    def _factors(cls, factors: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, levels in factors.items():
            FACTORS.check(name)
            if not levels:
                raise ValueError(f"factor {name!r} needs at least one level")
            for level in levels:  # a level's own resources and search are checked here, the rest with the cohort at plan time
                if isinstance(level, dict) and "resources" in level:
                    level_resources(f"{name}: level {level!r}", level["resources"])
                if isinstance(level, dict) and "search" in level:
                    if name != "method":
                        raise ValueError(f"{name}: level {level!r}: only a method level may carry its own search")
                    factor_level(name, level)
        return factors

    @model_validator(mode="after")
    def _test_fold_held_out(self) -> StudySpec:
        if isinstance(self.folds, list) and self.test_fold in self.folds:
            raise ValueError(f"test_fold {self.test_fold} is also one of the validation folds {self.folds}")
        return self

    @model_validator(mode="after")
    def _confirmation_is_fresh(self) -> StudySpec:
        if self.confirm is None:
            return self
        if self.confirm.folds is not None:
            _check_folds(self.confirm.folds)
            if self.test_fold in validation_folds(self.confirm.folds, self.test_fold):
                raise ValueError(f"confirm.folds: the test fold {self.test_fold} cannot be a validation fold")
        reused = sorted(set(self.confirm.seeds) & set(self.seeds))
        if reused:
            raise ValueError(f"confirm.seeds {reused} are also search seeds: a confirmation retrains on fresh seeds")
        return self

    @property
    def fold_indices(self) -> list[int]:
        """The validation folds: ``folds`` as listed, or the first ``folds`` that are not the test fold."""
        return validation_folds(self.folds, self.test_fold)

    def confirmation(self) -> StudySpec:
        """The confirm stage as a study of its own: one trial per cell (its configuration fixed
        by the search), the confirmation's seeds and folds, every repetition run (no scheduler)."""
        if self.confirm is None:
            raise ValueError(f"study {self.name} has no confirm stage")
        return self.model_copy(update={
            "seeds": list(self.confirm.seeds),
            "folds": self.folds if self.confirm.folds is None else self.confirm.folds,
            "search": self.search.model_copy(update={"trials_per_cell": 1}),
            "scheduler": SchedulerSpec(type="none"),
            "confirm": None,
        })


def _check_folds(folds: int | list[int]) -> None:
    if isinstance(folds, int) and folds < 1:
        raise ValueError("needs at least one fold")
    if isinstance(folds, list) and (not folds or len(set(folds)) != len(folds) or min(folds) < 0):
        raise ValueError(f"needs distinct fold indices >= 0, got {folds}")


def validation_folds(folds: int | list[int], test_fold: int | None) -> list[int]:
    """``folds`` as listed, or the first ``folds`` fold indices that are not the test fold."""
    if isinstance(folds, list):
        return list(folds)
    return [f for f in range(folds + 1) if f != test_fold][:folds]


def load_study_spec(path: str | os.PathLike[str]) -> StudySpec:
    """Parse and validate the spec at ``path``; relative paths become relative to its folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "study spec")
    raw.setdefault("name", path.stem)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{path}: {describe_validation_error(exc)}") from exc
    if not spec.cohort.is_absolute():
        spec.cohort = (path.parent / spec.cohort).resolve()
    return spec
