"""SurvPath (Jaume et al., "Modeling Dense Multimodal Interactions Between Biological Pathways
and Histology for Survival Prediction", CVPR 2024).

One token per biological pathway (an SNN over its genes) and one per tile (a linear projection),
one pre-norm attention layer whose attention is masked to pathway<->pathway, pathway->tile and
tile->pathway (no tile<->tile, so it costs O(pathways x tiles)), a feed-forward block and a
LayerNorm; the mean of the pathway tokens and the mean of the tile tokens are concatenated.
Checked against mahmoodlab/SurvPath ``models/model_SurvPath.py`` and
``models/layers/cross_attention.py`` (width 256, one attention head of width 128 with no output
projection and no residual, feed-forward 128 -> 128 with GELU and dropout 0.1, a readout
Linear 256 -> 64 + ReLU before the classifier).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

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


class PathwayTileAttention(nn.Module):
    """Single-head attention over ``[pathways; tiles]`` where a pathway attends to every token
    and a tile to the pathways only: ``[B, P, dim]``, ``[B, N, dim]`` -> ``[B, P + N, attention_dim]``.
    The tile->tile block is never formed."""

    def __init__(self, dim: int, attention_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * attention_dim, bias=False)

    def forward(self, pathways: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        n_pathways = pathways.shape[1]
        q, k, v = self.qkv(self.norm(torch.cat([pathways, tiles], dim=1))).chunk(3, dim=-1)
        from_pathways = F.scaled_dot_product_attention(q[:, :n_pathways], k, v)
        from_tiles = F.scaled_dot_product_attention(q[:, n_pathways:], k[:, :n_pathways], v[:, :n_pathways])
        return torch.cat([from_pathways, from_tiles], dim=1)


class SurvPathSettings(MethodSettings):
    """SurvPath's sizes; ``attention_dim`` None: ``width // 2``; ``readout`` None: ``width // 4``;
    ``genomic_dropout``: the AlphaDropout of the per-pathway SNNs."""

    width: int = Field(default=256, ge=2)
    attention_dim: int | None = Field(default=None, ge=1)
    readout: int | None = Field(default=None, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    genomic_dropout: float = Field(default=0.25, ge=0, lt=1)


@registered
class SurvPath(MethodNetwork):
    """Pathway and tile tokens -> masked attention -> feed-forward -> LayerNorm -> per-modality
    means, concatenated -> readout -> task heads.

    Pathway tokens: one per gene group of RNA, and one for each other case-vector modality given
    (clinical, mutations; an extension: the paper's tokens are transcriptomic pathways), each by
    its own SNN; a modality the case lacks gives its learned tokens. Coords are not used.
    """

    name = "survpath"
    consumes = CASE_VECTOR_MODALITIES | {IMAGE}
    requires = frozenset({IMAGE, "rna"})
    Settings = SurvPathSettings
    settings: SurvPathSettings
    # SurvPath's sizes, 1024-d tile features, RNA in REFERENCE_OMIC_SIZES pathways: the reference
    # without its last Linear, 1,345,088 (tile projection 262,400; pathway SNNs 933,888; attention
    # LayerNorm 512 + qkv 98,304; feed-forward 33,280; LayerNorm 256; readout 16,448), plus
    # 6*256 = 1,536 learned values for the tokens of a case without RNA.
    published = PublishedSize(1_346_624, in_dim=1024, modality_inputs={"rna": REFERENCE_OMIC_SIZES})

    def build(self) -> int:
        settings = self.settings
        width = settings.width
        attention_dim = settings.attention_dim or width // 2
        readout = settings.readout or max(1, width // 4)
        self.tiles = nn.Linear(self.in_dim, width)
        self.genomic = pathway_tokens(self.modality_inputs, width, settings.genomic_dropout)
        self.attention = PathwayTileAttention(width, attention_dim)
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(attention_dim), nn.Linear(attention_dim, attention_dim), nn.GELU(),
            nn.Dropout(settings.dropout), nn.Linear(attention_dim, attention_dim),
        )
        self.norm = nn.LayerNorm(attention_dim)
        self.readout = nn.Sequential(nn.Linear(2 * attention_dim, readout), nn.ReLU())
        return readout

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tiles = self.tiles(features)
        pathways = genomic_tokens(self.genomic, inputs)
        tokens = self.norm(self.feed_forward(self.attention(pathways, tiles)))
        n_pathways = pathways.shape[1]
        return self.readout(torch.cat([tokens[:, :n_pathways].mean(dim=1), tokens[:, n_pathways:].mean(dim=1)], dim=1))
