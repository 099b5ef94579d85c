"""ABMIL: gated attention pooling over tile features (Ilse, Tomczak, Welling, "Attention-based
Deep Multiple Instance Learning", ICML 2018), at CLAM's sizes (Lu et al., Nat. Biomed. Eng.
2021), WSI-only or as late fusion ("-cat") with the case vectors of the other modalities.

Checked against AMLab-Amsterdam/AttentionDeepMIL ``model.py`` (``GatedAttention``) and
mahmoodlab/CLAM ``models/model_clam.py`` (``Attn_Net_Gated``, ``CLAM_SB`` "small": fc in -> 512,
ReLU, dropout; attention hidden 256, dropout on both branches); the "-cat" branch as the
concat fusion of mahmoodlab/MCAT ``models/model_set_mil.py`` (an SNN of two blocks of 256 over
the genomic vector, concatenated with the slide vector).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field
from torch import nn

from modaltune.models.methods.base import (
    CASE_VECTOR_MODALITIES,
    MethodNetwork,
    MethodSettings,
    PublishedSize,
    registered,
)
from modaltune.models.methods.snn import CaseVectorSnn, SnnSettings
from modaltune.models.modality_encoders import IMAGE


class GatedAttentionPool(nn.Module):
    """``[B, N, dim]`` -> ``[B, dim]``: ``sum_k a_k h_k`` with
    ``a_k = softmax_k w^T (tanh(V h_k) * sigmoid(U h_k))`` (Ilse et al. 2018, eq. 9)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.score(self.tanh_branch(tokens) * self.gate_branch(tokens)).softmax(dim=1)  # [B, N, 1]
        return (weights * tokens).sum(dim=1)


class AbmilSettings(MethodSettings):
    """CLAM's "small" gated ABMIL; ``cat``: the SNN over the other modalities in "-cat"."""

    width: int = Field(default=512, ge=1)
    attention_dim: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.25, ge=0, lt=1)
    cat: SnnSettings = Field(default_factory=SnnSettings)


@registered
class Abmil(MethodNetwork):
    """Tiles -> Linear + ReLU + dropout -> gated attention pooling -> slide vector; with other
    modalities ("-cat"), the slide vector concatenated with ``CaseVectorSnn`` of their case
    vectors (a modality a case lacks enters as its learned vector) -> task heads.

    CLAM's instance-level clustering loss is not part of it (the baseline is the attention MIL
    itself, as in MCAT's and SurvPath's ABMIL baselines). Coords are not used.
    """

    name = "abmil"
    consumes = CASE_VECTOR_MODALITIES | {IMAGE}
    requires = frozenset({IMAGE})
    Settings = AbmilSettings
    settings: AbmilSettings
    # CLAM's sizes, 1024-d tile features, WSI-only: fc 1024*512+512 = 524,800; attention branches
    # 2 * (512*256+256) = 262,656; score 257.
    published = PublishedSize(787_713, in_dim=1024)

    def build(self) -> int:
        settings = self.settings
        self.tiles = nn.Sequential(nn.Linear(self.in_dim, settings.width), nn.ReLU(), nn.Dropout(settings.dropout))
        self.pool = GatedAttentionPool(settings.width, settings.attention_dim, settings.dropout)
        self.others = CaseVectorSnn(self.modality_inputs, settings.cat) if self.modality_inputs else None
        return settings.width + (self.others.width if self.others is not None else 0)

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        slide = self.pool(self.tiles(features))
        return slide if self.others is None else torch.cat([slide, self.others(inputs)], dim=1)
