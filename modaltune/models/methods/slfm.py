"""The methods that are ``ModalTuneModel`` on the frozen slide encoder (SLFM), told apart by the
model settings they fix: ``modaltune`` (the ``model`` section as written) and ``linear_probe``
(no adapters and no other modality: the SLFM's slide embedding, a LayerNorm and a linear map to
the task embeddings, per-task offsets from the task tokens, and the objective's heads; the
paper's "LP", fitted by gradient descent with the other methods rather than post hoc).

Both reuse the frozen encoder as it is loaded or seeded for ModalTune, and so the frozen-prefix
cache: a linear probe's whole encoder is its cached prefix, so after the first epoch an epoch
costs its heads only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modaltune.models.modality_encoders import IMAGE, MODALITY_ENCODERS

MODALTUNE = "modaltune"
LINEAR_PROBE = "linear_probe"


@dataclass(frozen=True)
class SlfmMethod:
    """``consumes`` None: every registered modality; ``fixed``: model settings the method sets."""

    consumes: frozenset[str] | None
    requires: frozenset[str]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def consumed(self) -> frozenset[str]:
        """What it consumes now (a test or notebook may have registered a modality since import)."""
        return self.consumes if self.consumes is not None else frozenset(MODALITY_ENCODERS.names()) | {IMAGE}


SLFM_METHODS: dict[str, SlfmMethod] = {
    MODALTUNE: SlfmMethod(None, frozenset({IMAGE})),
    LINEAR_PROBE: SlfmMethod(frozenset({IMAGE}), frozenset({IMAGE}), {"adapter_depth": 0, "adapter_layout": None}),
}
