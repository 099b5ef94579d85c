"""The typed configuration of one ModalTune run, loaded from YAML and ``--set key=value``.

Sections map one-to-one to the code they configure: ``model`` to ``ModalTuneConfig``,
``optim`` to the optimizer and schedule, ``engine`` to DeepSpeed / DDP, ``scaling`` to Ray
Train's ``ScalingConfig``. Unknown keys are errors that name the key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modaltune.data.cohort import Cohort
from modaltune.data.modalities import modality_inputs
from modaltune.errors import InputError, describe_validation_error, read_yaml_mapping
from modaltune.models import IMAGE, MODALITY_ENCODERS, SLIDE_ENCODER_PRESETS, ModalTuneConfig
from modaltune.objectives import OBJECTIVES
from modaltune.text.encoders import parse_text_encoder_spec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    """Shape of the model; ``encoder`` is a slide-encoder preset (``SLIDE_ENCODER_PRESETS``:
    ``gigapath``, ``titan`` and their CPU-sized ``tiny``, ``titan_tiny``) plus overrides of its
    config's fields."""

    encoder: str = "tiny"
    encoder_overrides: dict[str, Any] = Field(default_factory=dict)
    encoder_checkpoint: str | None = None
    encoder_hub_id: str | None = None
    encoder_init_seed: int = 0  # random-init encoders must be identical in every worker and at predict time
    modalities: list[str] = Field(default_factory=lambda: ["wsi", "rna", "clinical"])
    adapter_depth: int | None = 1
    adapter_layout: list[list[int]] | None = None
    adapter_block_size: int | None = Field(default=None, ge=1)  # layers per block with adapter_depth (default: depth // 3)
    adapter_heads: int = 4
    cffn_ratio: float = 0.25
    adapter_drop_path: float = Field(default=0.1, ge=0, lt=1)
    extra_extractors: int = Field(default=2, ge=0)  # extractors added to the last block
    modality_self_attention: bool = True
    n_rna_tokens: int = 8
    rna_hidden: int = 32
    rna_mixer_depth: int = Field(default=3, ge=0)
    rna_dropout: float = Field(default=0.25, ge=0, lt=1)
    out_dim: int = 32

    @field_validator("encoder")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        return SLIDE_ENCODER_PRESETS.check(name)

    @model_validator(mode="after")
    def _overrides_fit_the_preset(self) -> ModelSection:
        known = {f.name for f in dataclasses.fields(SLIDE_ENCODER_PRESETS[self.encoder].make())}
        unknown = sorted(set(self.encoder_overrides) - known)
        if unknown:
            raise ValueError(f"encoder_overrides {unknown} are not settings of preset {self.encoder!r}; it has {sorted(known)}")
        return self

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, modalities: list[str]) -> list[str]:
        known = [IMAGE, *MODALITY_ENCODERS.names()]
        unknown = sorted(set(modalities) - set(known))
        if unknown or IMAGE not in modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct entries of {known} containing {IMAGE!r}, got {modalities}")
        return modalities

    def for_cohort(self, cohort: Cohort) -> ModalTuneConfig:
        """``build`` with the input shapes of the modalities the model uses (only those: WSI-only
        runs need no RNA files), the cohort's feature width and tile size."""
        return self.build(modality_inputs(cohort, self.modalities), cohort.manifest.feature_dim, cohort.manifest.tile_size_px)

    def build(self, modality_inputs: dict[str, tuple[int, ...]], feature_dim: int, tile_size_px: int) -> ModalTuneConfig:
        """The model for a cohort: its tile-feature width and its tile size (level-0 pixels per
        cell of the SLFM's position grid), unless ``encoder_overrides`` set them."""
        encoder = SLIDE_ENCODER_PRESETS[self.encoder].make(**{"in_dim": feature_dim, "tile_size": tile_size_px, **self.encoder_overrides})
        return ModalTuneConfig(
            encoder=encoder,
            modalities=tuple(self.modalities),
            adapter_layout=tuple(tuple(b) for b in self.adapter_layout) if self.adapter_layout else None,
            adapter_depth=None if self.adapter_layout else self.adapter_depth,
            adapter_block_size=self.adapter_block_size,
            adapter_heads=self.adapter_heads,
            cffn_ratio=self.cffn_ratio,
            adapter_drop_path=self.adapter_drop_path,
            extra_extractors=self.extra_extractors,
            modality_self_attention=self.modality_self_attention,
            modality_inputs=modality_inputs,
            n_rna_tokens=self.n_rna_tokens,
            rna_hidden=self.rna_hidden,
            rna_mixer_depth=self.rna_mixer_depth,
            rna_dropout=self.rna_dropout,
            out_dim=self.out_dim,
            encoder_checkpoint=self.encoder_checkpoint,
            encoder_hub_id=self.encoder_hub_id,
        )


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
    model: ModelSection = Field(default_factory=ModelSection)
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
