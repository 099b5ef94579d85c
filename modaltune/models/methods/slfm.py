"""The methods that are ``ModalTuneModel`` on the slide encoder (SLFM), told apart by the model
settings they fix and by what of the SLFM they train:

- ``modaltune``: the ``model`` section as written, the SLFM frozen;
- ``linear_probe``: no adapters and no other modality: the frozen SLFM's slide embedding, a
  LayerNorm and a linear map to the task embeddings, per-task offsets from the task tokens, and
  the objective's heads; the paper's "LP", fitted by gradient descent with the other methods
  rather than post hoc;
- ``finetune``: the same model as ``linear_probe`` with the SLFM's last ``unfrozen_layers``
  layers trained too (with what follows them: the final norm and the pooler its slide
  embedding reads), or the whole SLFM (its tile embedding included) when that is unset; with
  ``layer_decay`` below 1, layer-wise learning-rate decay (BEiT, Bao et al. 2022, as Patho-Bench
  fine-tunes SLFMs): layer ``i`` of a ``depth``-layer SLFM learns at ``lr * layer_decay **
  (depth - 1 - i)``, the tile embedding at ``lr * layer_decay ** depth``, the rest at ``lr``.

All reuse the SLFM as it is loaded or seeded for ModalTune, and so the frozen-prefix cache: a
linear probe's whole encoder is its cached prefix, so after the first epoch an epoch costs its
heads only; a fine-tune's prefix is the layers before the first unfrozen one (none, and no
cache, when every layer trains).

An entry declares its options as ``Settings`` (an ``EntrySettings``), validated by
``SLFM_METHODS.settings``; ``modaltune`` and ``linear_probe`` take none (their settings are
the ``model`` section's keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field

from modaltune.models.modality_encoders import IMAGE, MODALITY_ENCODERS
from modaltune.registry import EntrySettings, Registry

MODALTUNE = "modaltune"
LINEAR_PROBE = "linear_probe"
FINETUNE = "finetune"


@dataclass(frozen=True)
class SlfmMethod:
    """``consumes`` None: every registered modality; ``fixed``: model settings the method sets;
    ``Settings``: its own options (none)."""

    consumes: frozenset[str] | None
    requires: frozenset[str]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    Settings: ClassVar[type[EntrySettings]] = EntrySettings

    def consumed(self) -> frozenset[str]:
        """What it consumes now (a test or notebook may have registered a modality since import)."""
        return self.consumes if self.consumes is not None else frozenset(MODALITY_ENCODERS.names()) | {IMAGE}


class FinetuneSettings(EntrySettings):
    """What of the SLFM ``finetune`` trains, and at which learning rates."""

    unfrozen_layers: int | None = Field(
        default=None, ge=1,
        description="train the SLFM's last k layers and its final norm / pooler (the layers before stay frozen and cached); "
        "unset: the whole SLFM, its tile embedding included",
    )
    layer_decay: float = Field(
        default=1.0, gt=0, le=1,
        description="layer-wise learning-rate decay: layer i of a depth-layer SLFM learns at lr * layer_decay ** (depth - 1 - i); "
        "1: every weight at lr",
    )

    def unfrozen(self, depth: int) -> int:
        """How many of a ``depth``-layer SLFM's layers train."""
        return depth if self.unfrozen_layers is None else self.unfrozen_layers


@dataclass(frozen=True)
class FinetuneMethod(SlfmMethod):
    """``linear_probe``'s model with the SLFM (or its last layers) trained: ``FinetuneSettings``."""

    Settings: ClassVar[type[EntrySettings]] = FinetuneSettings


SLFM_METHODS: Registry[SlfmMethod] = Registry("method")
"""The methods built as ``ModalTuneModel`` (``model.method``), with the settings each fixes."""

_SLIDE_ONLY = {"adapter_depth": 0, "adapter_layout": None}
SLFM_METHODS.register(MODALTUNE)(SlfmMethod(None, frozenset({IMAGE})))
SLFM_METHODS.register(LINEAR_PROBE)(SlfmMethod(frozenset({IMAGE}), frozenset({IMAGE}), _SLIDE_ONLY))
SLFM_METHODS.register(FINETUNE)(FinetuneMethod(frozenset({IMAGE}), frozenset({IMAGE}), _SLIDE_ONLY))
