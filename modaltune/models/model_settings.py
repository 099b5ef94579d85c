"""The one description of a ModalTune model: ``ModelSettings``, the ``model`` section of a run
config and of a study spec's ``train``, with every default in one place.

The run config (``TrainConfig.model``), the study spec (through the run configs its cells and
searched parameters make), the builder (``ModalTuneModel``, through ``for_cohort`` / ``build``)
and export / predict (which re-validate the saved run config) all read this class. The cohort
fixes what is not a choice: the tile-feature width and tile size the encoder is built for, and
the input shape of each modality (``ModalTuneConfig``).

A modality's own settings belong to its ``MODALITY_ENCODERS`` entry (``Settings``); a config
writes them beside the shared keys (``model: {n_rna_tokens: 1}``) and they are validated by the
entry, so a modality with options is one entry. The defaults are CPU-sized (a tiny random
slide encoder, one adapter block); ``PAPER_MODEL`` is the paper's GigaPath setting.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from modaltune.errors import InputError, describe_validation_error
from modaltune.models.frozen_encoder import SLIDE_ENCODER_PRESETS
from modaltune.models.methods import (
    METHOD_NETWORKS,
    MODALTUNE,
    SLFM_METHODS,
    MethodNetwork,
    MethodSettings,
    check_method_modalities,
    method_names,
)
from modaltune.models.modality_encoders import DEFAULT_TASKS, IMAGE, MODALITY_ENCODERS, ModalityEncoderEntry
from modaltune.registry import EntrySettings, UnknownChoiceError

if TYPE_CHECKING:
    from modaltune.data.cohort import Cohort
    from modaltune.models.modaltune_model import ModalTuneConfig

# The paper's setting (Prov-GigaPath's slide encoder, its three adapter blocks of four layers,
# 12 adapter heads, 64 RNA tokens of width 256, 256-d embeddings); a spec writes these keys under
# ``model:`` (with ``encoder_hub_id`` or ``encoder_checkpoint``) to train at the paper's sizes.
PAPER_MODEL: dict[str, Any] = {
    "encoder": "gigapath", "adapter_depth": None, "adapter_heads": 12, "out_dim": 256, "n_rna_tokens": 64, "rna_hidden": 256,
}


class ModelSettings(BaseModel):
    """Shape of the model; ``encoder`` is a slide-encoder preset (``SLIDE_ENCODER_PRESETS``:
    ``gigapath``, ``titan`` and their CPU-sized ``tiny``, ``titan_tiny``) plus overrides of its
    config's fields. Adapter placement: ``adapter_layout`` (explicit inclusive ``[start, end]``
    blocks) or ``adapter_depth`` (that many blocks of ``adapter_block_size`` layers, default
    ``encoder depth // 3``, over the last layers; 0 = no adapters; null = the paper's three).
    ``encoder_checkpoint`` / ``encoder_hub_id`` name pretrained SLFM weights; with neither the
    SLFM is random, seeded by ``encoder_init_seed``. Each modality's own keys (``n_rna_tokens``,
    ...) come from its ``MODALITY_ENCODERS`` entry and are kept in ``modality_settings``."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = "tiny"
    encoder_overrides: dict[str, Any] = Field(default_factory=dict)
    encoder_checkpoint: str | None = None
    encoder_hub_id: str | None = None
    encoder_init_seed: int = 0  # random-init encoders must be identical in every worker and at predict time
    modalities: list[str] = Field(default_factory=lambda: ["wsi", "rna", "clinical"])
    adapter_depth: int | None = Field(default=1, ge=0)
    adapter_layout: list[list[int]] | None = None
    adapter_block_size: int | None = Field(default=None, ge=1)  # layers per block with adapter_depth (default: depth // 3)
    adapter_heads: int = Field(default=4, ge=1)
    cffn_ratio: float = Field(default=0.25, gt=0, le=1)
    adapter_drop_path: float = Field(default=0.1, ge=0, lt=1)
    extra_extractors: int = Field(default=2, ge=0)  # extractors added to the last block
    modality_self_attention: bool = True
    out_dim: int = Field(default=32, ge=1)
    modality_settings: dict[str, SerializeAsAny[EntrySettings]] = Field(default_factory=dict)
    # Which network the run trains: ``modaltune`` (the keys above), another method on the SLFM
    # (``SLFM_METHODS``: ``linear_probe``, ``finetune`` with its own ``method_settings``) or a
    # baseline of ``METHOD_NETWORKS`` with its own ``method_settings`` (its published sizes by default).
    method: str = MODALTUNE
    method_settings: SerializeAsAny[EntrySettings] = Field(default_factory=EntrySettings, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _gather_modality_settings(cls, value: Any) -> Any:
        """A config writes a modality's settings beside the shared keys; each goes to the entry that declares it."""
        if not isinstance(value, dict) or "modality_settings" in value:
            return value
        owners = _modality_setting_owners(set(cls.model_fields))
        gathered: dict[str, dict[str, Any]] = {name: {} for name in MODALITY_ENCODERS.names()}
        shared = {}
        for key, item in value.items():
            if key in owners:
                gathered[owners[key]][key] = item
            else:
                shared[key] = item
        return {**shared, "modality_settings": gathered}

    @field_validator("modality_settings", mode="before")
    @classmethod
    def _entries_validate_their_settings(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        raw: dict[str, Any] = {name: {} for name in MODALITY_ENCODERS.names()} | value
        return {
            name: settings if isinstance(settings, EntrySettings) else MODALITY_ENCODERS.settings(name, settings)
            for name, settings in raw.items()
        }

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in method_names():
            raise UnknownChoiceError(f"unknown method {name!r}; choose from {method_names()}")
        return name

    @field_validator("method_settings", mode="before")
    @classmethod
    def _method_validates_its_settings(cls, value: Any, info: ValidationInfo) -> Any:
        method = info.data.get("method")
        if type(value) is EntrySettings:  # the default (no settings given): the method's own defaults
            value = {}
        if isinstance(value, EntrySettings) or method is None:
            return value
        if method in SLFM_METHODS:
            if value and SLFM_METHODS[method].Settings is EntrySettings:
                raise ValueError(f"method {method!r} takes no method_settings (its settings are the model section's keys), got {value}")
            return SLFM_METHODS.settings(method, value, written=method)
        return METHOD_NETWORKS.settings(method, value, written=method)

    @field_validator("encoder")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        return SLIDE_ENCODER_PRESETS.check(name)

    @model_validator(mode="after")
    def _overrides_fit_the_preset(self) -> ModelSettings:
        known = {f.name for f in dataclasses.fields(cast(Any, SLIDE_ENCODER_PRESETS[self.encoder].make()))}  # each preset is a dataclass
        unknown = sorted(set(self.encoder_overrides) - known)
        if unknown:
            raise ValueError(f"encoder_overrides {unknown} are not settings of preset {self.encoder!r}; it has {sorted(known)}")
        return self

    @field_validator("modalities")
    @classmethod
    def _known_modalities(cls, modalities: list[str]) -> list[str]:
        known = [IMAGE, *MODALITY_ENCODERS.names()]
        unknown = sorted(set(modalities) - set(known))
        if unknown or not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct entries of {known}, got {modalities}")
        return modalities

    @model_validator(mode="after")
    def _method_consumes_the_modalities(self) -> ModelSettings:
        if self.method == MODALTUNE and IMAGE not in self.modalities:
            known = [IMAGE, *MODALITY_ENCODERS.names()]
            raise ValueError(f"modalities must be distinct entries of {known} containing {IMAGE!r}, got {self.modalities}")
        check_method_modalities(self.method, self.modalities)
        return self

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any) -> dict[str, Any]:
        """Written back as a config gives it: each modality's settings beside the shared keys."""
        dumped = handler(self)
        return {**{k: v for k, v in dumped.items() if k != "modality_settings"}, **{
            key: item for settings in dumped["modality_settings"].values() for key, item in settings.items()
        }}

    def modality_entry(self, name: str) -> ModalityEncoderEntry:
        """Modality ``name``'s entry with its settings from this section."""
        settings = self.modality_settings.get(name)
        return MODALITY_ENCODERS[name](settings if settings is not None else MODALITY_ENCODERS.settings(name))

    def for_cohort(self, cohort: Cohort) -> ModalTuneConfig:
        """``build`` with the input shapes of the modalities the model uses (only those: WSI-only
        runs need no RNA files), the cohort's feature width and tile size; for a method on the
        SLFM other than ``modaltune``, with the settings it fixes (``linear_probe``, ``finetune``: no adapters)."""
        from modaltune.data.modalities import modality_inputs

        fixed = SLFM_METHODS[self.method].fixed if self.method in SLFM_METHODS else {}
        settings = self.model_copy(update=dict(fixed)) if fixed else self
        return settings.build(modality_inputs(cohort, self.modalities), cohort.manifest.feature_dim, cohort.manifest.tile_size_px)

    def method_network(self, cohort: Cohort) -> MethodNetwork:
        """The baseline ``method`` with its settings, for ``cohort``'s tile-feature width and the
        input shapes of the modalities it is given (the slide is not a case vector)."""
        from modaltune.data.modalities import modality_inputs

        inputs = modality_inputs(cohort, self.modalities)
        return METHOD_NETWORKS[self.method](
            cast(MethodSettings, self.method_settings),  # validated by the method's own Settings
            in_dim=cohort.manifest.feature_dim, modality_inputs=inputs,
            n_tasks=len(DEFAULT_TASKS), out_dim=self.out_dim,
        )

    def build(self, modality_inputs: dict[str, tuple[int, ...]], feature_dim: int, tile_size_px: int) -> ModalTuneConfig:
        """The model for a cohort: its tile-feature width and its tile size (level-0 pixels per
        cell of the SLFM's position grid), unless ``encoder_overrides`` set them."""
        from modaltune.models.modaltune_model import ModalTuneConfig

        encoder = SLIDE_ENCODER_PRESETS[self.encoder].make(**{"in_dim": feature_dim, "tile_size": tile_size_px, **self.encoder_overrides})
        return ModalTuneConfig(self, encoder, modality_inputs)


def model_settings(raw: dict[str, Any], where: str = "model") -> ModelSettings:
    """``raw`` validated as a ``model`` section; an input error naming ``where`` and each bad key."""
    try:
        return ModelSettings.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{where}: {describe_validation_error(exc)}") from exc


def _modality_setting_owners(shared: set[str]) -> dict[str, str]:
    """Each modality setting's key -> the modality whose entry declares it (a key two entries
    declare, or one the section has itself, is an error in the registry, not the config)."""
    owners: dict[str, str] = {}
    for name, entry in MODALITY_ENCODERS.items():
        for key in entry.Settings.model_fields:
            if key in owners or key in shared:
                raise ValueError(f"modality {name!r} declares setting {key!r}, which {owners.get(key, 'the model section')!r} has too")
            owners[key] = name
    return owners
