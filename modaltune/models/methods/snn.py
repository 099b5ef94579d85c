"""SNN: a self-normalising network over a case's vectors (RNA and/or clinical and mutations), no
slide; and the genomic encoders that other methods share (the "-cat" branch of ABMIL and
TransMIL, MCAT's and SurvPath's one-token-per-pathway encoder).

Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017: Linear -> SELU ->
AlphaDropout blocks with LeCun-normal weights. As the genomics baselines of MCAT (Chen et al.,
ICCV 2021) and SurvPath (Jaume et al., CVPR 2024), checked against their code
(mahmoodlab/MCAT ``models/model_genomic.py``, mahmoodlab/SurvPath ``models/model_SNNOmics.py``):
the case's genomic features concatenated, blocks of 256, a linear classifier (here: the task heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
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
from modaltune.models.modality_encoders import ModalityEncoder, PathwayMLPs


class SnnSettings(MethodSettings):
    """SurvPath's ``SNNOmics`` "small": two blocks of 256 (MCAT's standalone SNN used four)."""

    width: int = Field(default=256, ge=1)
    depth: int = Field(default=2, ge=1)
    dropout: float = Field(default=0.25, ge=0, lt=1)


def snn_blocks(in_dim: int, settings: SnnSettings) -> nn.Sequential:
    """``depth`` blocks Linear -> SELU -> AlphaDropout, LeCun-normal weights and zero biases
    (the references' ``init_max_weights``; they use ELU, we keep the paper's SELU as the
    project's pathway SNN does)."""
    blocks: list[nn.Module] = []
    for index in range(settings.depth):
        linear = nn.Linear(in_dim if index == 0 else settings.width, settings.width)
        nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
        nn.init.zeros_(linear.bias)
        blocks += [linear, nn.SELU(), nn.AlphaDropout(settings.dropout)]
    return nn.Sequential(*blocks)


class LearnedMissingVector(ModalityEncoder):
    """A case vector as is, with a case that lacks the modality (a NaN row) given a learned
    vector of the same width (``ModalityEncoder``'s missing token at input width; zero at
    start, the training mean of a z-scored modality), so one network reads every case."""

    def __init__(self, width: int) -> None:
        super().__init__(width, 1, width)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return values.unsqueeze(1)


class CaseVectorSnn(nn.Module):
    """The used modalities' case vectors, concatenated in ``modality_inputs`` order -> SNN -> ``[B, width]``."""

    def __init__(self, modality_inputs: Mapping[str, Sequence[int]], settings: SnnSettings) -> None:
        super().__init__()
        self.vectors = nn.ModuleDict({name: LearnedMissingVector(sum(segments)) for name, segments in modality_inputs.items()})
        self.mlp = snn_blocks(sum(sum(segments) for segments in modality_inputs.values()), settings)
        self.width = settings.width

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([vector(inputs[name])[:, 0] for name, vector in self.vectors.items()], dim=1))


class PathwayTokens(ModalityEncoder):
    """One token per segment of a case vector (RNA: per pathway or gene group; a plain vector:
    one token), each by its own two-block SNN (MCAT's and SurvPath's ``sig_networks``; the
    project's batched ``PathwayMLPs``). A case that lacks the modality gets learned tokens."""

    def __init__(self, segments: Sequence[int], width: int, dropout: float) -> None:
        super().__init__(sum(segments), len(segments), width)
        self.mlps = PathwayMLPs(segments, width, dropout)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return self.mlps(values)


def pathway_tokens(modality_inputs: Mapping[str, Sequence[int]], width: int, dropout: float) -> nn.ModuleDict:
    """A ``PathwayTokens`` per used modality; ``genomic_tokens`` runs them."""
    return nn.ModuleDict({name: PathwayTokens(segments, width, dropout) for name, segments in modality_inputs.items()})


def genomic_tokens(encoders: nn.ModuleDict, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Every used modality's tokens, concatenated in order: ``[B, sum of segment counts, width]``."""
    return torch.cat([encoder(inputs[name]) for name, encoder in encoders.items()], dim=1)


@registered
class Snn(MethodNetwork):
    """Self-normalising network over the concatenated case vectors -> task heads. Tile
    features and coords are ignored. A modality a case lacks enters as its learned vector."""

    name = "snn"
    consumes = CASE_VECTOR_MODALITIES
    requires = frozenset()
    Settings = SnnSettings
    settings: SnnSettings
    # Two blocks of 256 over RNA of 2,100 genes (REFERENCE_OMIC_SIZES): the reference's fc_omic,
    # 2,101*256 + 257*256 = 603,648, plus 2,100 learned values for a case without RNA.
    published = PublishedSize(605_748, modality_inputs={"rna": REFERENCE_OMIC_SIZES})

    def build(self) -> int:
        self.snn = CaseVectorSnn(self.modality_inputs, self.settings)
        return self.snn.width

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.snn(inputs)
