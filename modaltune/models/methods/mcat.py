"""MCAT: Multimodal Co-Attention Transformer (Chen et al., "Multimodal Co-Attention Transformer
for Survival Prediction in Gigapixel Whole Slide Images", ICCV 2021).

Each gene group (here: each of the cohort's gene groups / pathways of ``gene_groups.json``) is
one token by its own SNN; genomic-guided co-attention (the genomic tokens as queries over the
tile tokens) gives one WSI token per group; each stream (co-attended WSI, genomic) runs through
a small transformer, gated-attention pooling and a Linear + ReLU; the two are concatenated and
fused by a two-layer MLP. Checked against mahmoodlab/MCAT ``models/model_coattn.py``
(``MCAT_Surv``, fusion "concat", "small" sizes: width 256, 1-head co-attention, 2-layer
transformers of 8 heads with feed-forward 512 and dropout 0.25).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field, model_validator
from torch import nn

from modaltune.models.methods.abmil import GatedAttentionPool
from modaltune.models.methods.base import (
    CASE_VECTOR_MODALITIES,
    REFERENCE_OMIC_SIZES,
    MethodNetwork,
    MethodSettings,
    PublishedSize,
    registered,
)
from modaltune.models.methods.snn import genomic_tokens, pathway_tokens
from modaltune.models.modality_encoders import IMAGE


class McatSettings(MethodSettings):
    """MCAT's "small" sizes; ``genomic_dropout``: the AlphaDropout of the per-group SNNs."""

    width: int = Field(default=256, ge=1)
    heads: int = Field(default=8, ge=1)
    depth: int = Field(default=2, ge=1)
    feedforward: int = Field(default=512, ge=1)
    coattention_heads: int = Field(default=1, ge=1)
    dropout: float = Field(default=0.25, ge=0, lt=1)
    genomic_dropout: float = Field(default=0.25, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> McatSettings:
        for key in ("heads", "coattention_heads"):
            if self.width % getattr(self, key):
                raise ValueError(f"{key} ({getattr(self, key)}) must divide width ({self.width})")
        return self


class _Stream(nn.Module):
    """One stream after co-attention: transformer -> gated attention pooling -> Linear + ReLU + dropout."""

    def __init__(self, settings: McatSettings) -> None:
        super().__init__()
        width = settings.width
        layer = nn.TransformerEncoderLayer(
            width, settings.heads, settings.feedforward, settings.dropout, activation="relu", batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, settings.depth, enable_nested_tensor=False)
        self.pool = GatedAttentionPool(width, width, settings.dropout)
        self.rho = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(settings.dropout))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.rho(self.pool(self.transformer(tokens)))


@registered
class Mcat(MethodNetwork):
    """Genomic-guided co-attention over tiles -> two streams -> concatenation -> fusion MLP ->
    task heads.

    Genomic tokens: one per gene group of RNA, and one for each other case-vector modality given
    (clinical, mutations), each by its own SNN (MCAT's six families included mutation and copy
    number groups; a modality the case lacks gives its learned tokens). Coords are not used.
    """

    name = "mcat"
    consumes = CASE_VECTOR_MODALITIES | {IMAGE}
    requires = frozenset({IMAGE, "rna"})
    Settings = McatSettings
    settings: McatSettings
    # MCAT's "small" sizes, 1024-d tile features, RNA in REFERENCE_OMIC_SIZES groups: the reference
    # without its classifier, 4,160,258 (tiles 262,400; group SNNs 933,888; co-attention 263,168;
    # per stream two transformer layers 1,054,208 + pooling 131,841 + rho 65,792; fusion
    # 197,120), plus 6*256 = 1,536 learned values for the tokens of a case without RNA.
    published = PublishedSize(4_161_794, in_dim=1024, modality_inputs={"rna": REFERENCE_OMIC_SIZES})

    def build(self) -> int:
        settings = self.settings
        width = settings.width
        self.tiles = nn.Sequential(nn.Linear(self.in_dim, width), nn.ReLU(), nn.Dropout(settings.dropout))
        self.genomic = pathway_tokens(self.modality_inputs, width, settings.genomic_dropout)
        self.coattention = nn.MultiheadAttention(width, settings.coattention_heads, batch_first=True)
        self.wsi_stream = _Stream(settings)
        self.genomic_stream = _Stream(settings)
        self.fusion = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        return width

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tiles = self.tiles(features)
        genomic = genomic_tokens(self.genomic, inputs)
        coattended, _ = self.coattention(genomic, tiles, tiles, need_weights=False)
        return self.fusion(torch.cat([self.wsi_stream(coattended), self.genomic_stream(genomic)], dim=1))
