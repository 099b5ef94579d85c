"""What one trial reserves: its Ray Train worker group's size, study-wide or per factor level.

A study's ``resources`` size every trial; a ``method`` level may carry its own (``{name: abmil,
resources: {gpus_per_worker: 0.25}}``): an attention-MIL trial needs a fraction of what a full
fine-tune of the slide encoder does, so a study mixing methods packs its cheap trials together.
A level's resources are partial (the keys it gives override the study's) and never part of its
label: they change where a trial runs, not what it trains.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modaltune.errors import InputError, describe_validation_error


class ResourcesSpec(BaseModel):
    """Per-trial resources: each trial is a Ray Train run of ``num_workers`` workers."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(default=1, ge=1)
    cpus_per_worker: float = Field(default=0.5, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    def with_overrides(self, overrides: dict[str, Any]) -> ResourcesSpec:
        """These resources with the keys of a level's partial ``overrides`` replaced."""
        return self.model_copy(update=overrides) if overrides else self

    def scaling(self) -> dict[str, Any]:
        """The run config's ``scaling`` section for a trial of this size."""
        return {
            "num_workers": self.num_workers,
            "cpus_per_worker": self.cpus_per_worker,
            "use_gpu": self.use_gpu,
            **({"gpus_per_worker": self.gpus_per_worker} if self.use_gpu else {}),
        }

    def devices(self) -> tuple[float, str]:
        """What a trial of this size reserves of its scarcest kind: (GPUs, "GPU") or (CPUs, "CPU")."""
        if self.use_gpu:
            return self.num_workers * self.gpus_per_worker, "GPU"
        return self.num_workers * self.cpus_per_worker, "CPU"

    def text(self) -> str:
        """``2 x (4 CPU, 1 GPU)``: workers x what each reserves."""
        gpu = f", {self.gpus_per_worker:g} GPU" if self.use_gpu else ""
        return f"{self.num_workers} x ({self.cpus_per_worker:g} CPU{gpu})"


def level_resources(where: str, value: Any) -> dict[str, Any]:
    """A level's ``resources`` mapping checked against ``ResourcesSpec`` (any subset of its keys);
    returns the keys it sets. An unknown key is refused naming the level and listing the keys."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: resources must be a mapping such as {{num_workers: 2, gpus_per_worker: 1}}")
    choices = sorted(ResourcesSpec.model_fields)
    unknown = sorted(set(value) - set(choices))
    if unknown:
        hint = " (use_gpu follows from gpus_per_worker > 0)" if "use_gpu" in unknown else ""
        raise InputError(f"{where}: resources: unknown key(s) {unknown}; choose from {choices}{hint}")
    try:
        checked = ResourcesSpec.model_validate(value)
    except ValidationError as exc:
        raise InputError(f"{where}: resources: {describe_validation_error(exc)}") from exc
    return {key: getattr(checked, key) for key in value}
