"""The typed configuration of one ModalTune run, loaded from YAML and ``--set key=value``.

Sections map one-to-one to the code they configure: ``model`` to ``ModelSettings`` (the one
description of the model, ``modaltune.models.model_settings``),
``optim`` to the optimizer and schedule, ``engine`` to DeepSpeed / DDP, ``scaling`` to Ray
Train's ``ScalingConfig``. Unknown keys are errors that name the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modaltune.errors import InputError, describe_validation_error, read_yaml_mapping
from modaltune.models.model_settings import ModelSettings
from modaltune.objectives import OBJECTIVES
from modaltune.text.encoders import parse_text_encoder_spec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimSection(_Section):
    """AdamW with linear warm-up then cosine decay; the defaults are the paper's."""

    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    epochs: int = Field(default=15, ge=1)
    warmup_epochs: int = Field(default=10, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_clipping: float = Field(default=1.0, ge=0)


class EngineSection(_Section):
    """``deepspeed`` (default) or ``ddp``; ``precision`` auto = bf16 on GPU, fp32 on CPU."""

    backend: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = Field(default=2, ge=0, le=3)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    deepspeed_overrides: dict[str, Any] = Field(default_factory=dict)


class ScalingSection(_Section):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=0.5, gt=0)
    gpus_per_worker: float = Field(default=1.0, gt=0)


class EarlyStoppingSection(_Section):
    metric: str = "balanced_accuracy"
    mode: Literal["max", "min"] = "max"
    patience: int | None = Field(default=None, ge=1)


class TrainConfig(_Section):
    """One run: which fold, objective, text encoder, model, optimizer, engine and resources."""

    seed: int = 0
    fold: int = Field(default=0, ge=0)
    test_fold: int | None = Field(default=None, ge=0)  # held out of training and validation; predicted at the end
    cohorts: list[str] | None = None
    objective: str = "distill"
    loss_weights: dict[str, float] = Field(default_factory=dict)
    text_encoder: str = "minilm"
    max_tiles: int | None = Field(default=25000, ge=1)
    evaluate_every: int = Field(default=1, ge=1)
    prefix_cache: bool = True  # cache the frozen layers before the first adapter per case (modaltune/train/prefix_cache.py)
    prefix_cache_max_gb: float = Field(default=200.0, gt=0)  # the whole cache folder's budget; see prefix_cache.py for what is kept
    # Evaluation runs cases of equal tile count (e.g. all capped at max_tiles) together, up to this
    # many tiles a batch; 0 = one case at a time (ZeRO-3 always, whose ranks must run equal forwards).
    evaluation_batch_tiles: int = Field(default=8192, ge=0)
    model: ModelSettings = Field(default_factory=ModelSettings)
    optim: OptimSection = Field(default_factory=OptimSection)
    engine: EngineSection = Field(default_factory=EngineSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, name: str) -> str:
        return OBJECTIVES.check(name)

    @field_validator("text_encoder")
    @classmethod
    def _known_text_encoder(cls, spec: str) -> str:
        parse_text_encoder_spec(spec)
        return spec


# Small enough to train in about two minutes on two CPU cores; what `modaltune train` runs
# without --config. AdamW + warm-up/cosine as in the paper, but a tiny random-init model on a
# few hundred steps learns only with a larger learning rate (doubled for the two workers'
# averaged gradients) and without the 1.0 gradient clipping DeepSpeed would otherwise apply.
CPU_DEFAULT: dict[str, Any] = {
    "objective": "supervised",
    "max_tiles": 2000,
    "optim": {"lr": 4e-3, "weight_decay": 0.05, "epochs": 4, "warmup_epochs": 1, "gradient_clipping": 0.0},
    "engine": {"backend": "deepspeed", "zero_stage": 2, "precision": "fp32"},
    "scaling": {"num_workers": 2, "cpus_per_worker": 0.5},
}


def load_train_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The config at ``path`` (or the CPU default), with ``key.sub=value`` overrides applied."""
    raw: dict[str, Any] = _deep_copy(CPU_DEFAULT)
    if path is not None:
        raw = read_yaml_mapping(path, "config file")
    for item in overrides or []:
        apply_override(raw, item)
    return validate_train_config(raw, source=str(path) if path else "default config")


def validate_train_config(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{source}: {describe_validation_error(exc)}") from exc


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` (a ``--set`` item) in a nested dict; the value is parsed as YAML
    (numbers, lists, ...)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InputError(f"--set expects key=value, got {item!r}")
    set_dotted(raw, key, yaml.safe_load(value), where=f"--set {item!r}")


def set_dotted(raw: dict[str, Any], key: str, value: Any, where: str | None = None) -> None:
    """Set ``raw[a][b][c] = value`` for ``key`` ``a.b.c``, the value as given (a tuned float stays a
    float: no round trip through text, where YAML reads ``1e-05`` as a string)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{where or key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(raw))
