"""Encoders that turn non-image inputs into modality tokens ``[B, T, dim]`` for the adapters.

Each modality the model can use is a ``ModalityEncoderEntry`` class registered in
``MODALITY_ENCODERS`` under the modality's name (the name ``model.modalities`` lists). An entry
owns its settings (``Settings``: the keys it reads from the ``model`` section, with their
defaults and bounds; RNA's ``n_rna_tokens``, ``rna_hidden``, ``rna_mixer_depth``,
``rna_dropout``) and builds its ``ModalityEncoder`` from them. Its cohort side (files,
validation, per-case vectors) is the entry of the same name in
``modaltune.data.modalities.COHORT_MODALITIES``. A new modality is one entry here and one there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from modaltune.errors import InputError
from modaltune.registry import EntrySettings, Registry

IMAGE = "wsi"  # the slide, always present; every other modality is an entry of MODALITY_ENCODERS

# Task ids of the paper's three task tokens.
DEFAULT_TASKS: tuple[str, ...] = ("general", "diagnosis", "survival")


class PathwayMLPs(nn.Module):
    """One two-layer self-normalising MLP per pathway (Klambauer et al., 2017, "Self-Normalizing
    Neural Networks"; per-pathway as in SurvPath, Jaume et al., CVPR 2024), all run at once.

    The first layer is block-diagonal: gene ``i`` only feeds its own pathway, so its weights are
    stored per gene (``[n_genes, hidden]``) and summed into pathways with ``index_add``; the
    second layer is a stack of ``[hidden, hidden]`` matrices applied with ``einsum``. The
    parameter count equals that of separate modules. SELU + AlphaDropout with LeCun-normal init
    (the reference code uses ELU and a 0.02 normal init).
    """

    group_index: torch.Tensor

    def __init__(self, group_sizes: Sequence[int], hidden: int, dropout: float) -> None:
        super().__init__()
        n_groups = len(group_sizes)
        gene_group = [group for group, size in enumerate(group_sizes) for _ in range(size)]
        self.register_buffer("group_index", torch.tensor(gene_group), persistent=False)
        fan_in = torch.tensor([float(group_sizes[group]) for group in gene_group])
        self.in_weight = nn.Parameter(torch.randn(len(gene_group), hidden) / fan_in.sqrt()[:, None])
        self.in_bias = nn.Parameter(torch.zeros(n_groups, hidden))
        self.hidden_weight = nn.Parameter(torch.randn(n_groups, hidden, hidden) / hidden**0.5)
        self.hidden_bias = nn.Parameter(torch.zeros(n_groups, hidden))
        self.activation = nn.SELU()
        self.dropout = nn.AlphaDropout(dropout)

    def forward(self, genes: torch.Tensor) -> torch.Tensor:
        """``[B, n_genes]`` -> ``[B, n_groups, hidden]``."""
        contributions = genes.unsqueeze(-1) * self.in_weight  # [B, n_genes, hidden]
        pooled = contributions.new_zeros(genes.shape[0], self.in_bias.shape[0], self.in_bias.shape[1])
        hidden = pooled.index_add(1, self.group_index, contributions) + self.in_bias
        hidden = self.dropout(self.activation(hidden))
        hidden = torch.einsum("bgh,ghk->bgk", hidden, self.hidden_weight) + self.hidden_bias
        return self.dropout(self.activation(hidden))


class _MixerFeedForward(nn.Sequential):
    def __init__(self, dim: int, expansion: float, dropout: float) -> None:
        inner = max(1, int(dim * expansion))
        super().__init__(
            nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim), nn.Dropout(dropout)
        )


class _MixerBlock(nn.Module):
    """MLP-Mixer block (Tolstikhin et al., NeurIPS 2021): pre-norm token mixing across pathways,
    then pre-norm channel mixing."""

    def __init__(self, n_tokens: int, dim: int, expansion: float, dropout: float) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.token_mix = _MixerFeedForward(n_tokens, expansion, dropout)
        self.channel_norm = nn.LayerNorm(dim)
        self.channel_mix = _MixerFeedForward(dim, expansion, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.token_mix(self.token_norm(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mix(self.channel_norm(x))


class ModalityEncoder(nn.Module, ABC):
    """One modality's case vector ``[B, width]`` -> ``n_tokens`` tokens ``[B, n_tokens, dim]``.

    A case that lacks the modality comes as a row of NaN (TCGA: about one case in six has no
    RNA-seq); an encoder whose modality may be missing replaces that row's tokens by
    ``missing_tokens``, learned, so every case trains and is scored in every cell of a modality
    ablation and paired comparisons stay on the same cases. ``summary`` is the modality's summand
    in the output embedding (the mean of its tokens, as the reference's ``prompt_agg="avg"``).
    """

    def __init__(self, width: int, n_tokens: int, dim: int, *, may_be_missing: bool = True) -> None:
        super().__init__()
        self.width, self.n_tokens = width, n_tokens
        self.missing_tokens = nn.Parameter(torch.zeros(n_tokens, dim)) if may_be_missing else None

    @abstractmethod
    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, width]`` without NaN -> ``[B, n_tokens, dim]``."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if values.ndim != 2 or values.shape[1] != self.width:
            raise ValueError(f"expected {type(self).__name__} input [B, {self.width}], got {tuple(values.shape)}")
        if self.missing_tokens is None:
            return self.encode(values)
        missing = values.isnan().any(dim=1)
        tokens = self.encode(values.nan_to_num(0.0))
        return torch.where(missing[:, None, None], self.missing_tokens.to(tokens.dtype).expand_as(tokens), tokens)

    def summary(self, tokens: torch.Tensor) -> torch.Tensor:
        """This modality's ``[B, n_tokens, dim]`` tokens after the adapters -> its ``[B, dim]`` summand."""
        return tokens.mean(dim=1)


class ModalityEncoderEntry(ABC):
    """How one modality's encoder is made from the entry's own ``Settings``, and how many tokens
    it makes (known before any encoder is built: the adapters are sized and initialised first, so
    a config's random initialisation does not depend on which modalities it adds).

    ``Settings`` fields are keys of the ``model`` section (a spec writes ``model.n_rna_tokens``),
    so they must be named for the modality and differ from every other entry's and the section's.
    """

    Settings: ClassVar[type[EntrySettings]] = EntrySettings

    def __init__(self, settings: EntrySettings) -> None:
        self.settings = settings

    @property
    def n_tokens(self) -> int:
        return 1

    @abstractmethod
    def build(self, segments: tuple[int, ...], dim: int) -> ModalityEncoder:
        """The encoder of case vectors made of ``segments`` (RNA: genes per pathway; a vector:
        its width), giving tokens of width ``dim``."""


MODALITY_ENCODERS: Registry[type[ModalityEncoderEntry]] = Registry("modality")


class RnaPathwayEncoder(ModalityEncoder):
    """Bulk RNA-seq grouped into pathways -> ``n_tokens`` modality tokens.

    Input ``rna: [B, sum(group_sizes)]`` is each pathway's (z-scored) gene values concatenated in
    group order. Per-pathway SNN -> one token per pathway -> MLP-Mixer over pathway tokens ->
    LayerNorm + projection to ``dim`` -> learned linear compression of the pathway axis to
    ``n_tokens`` (the paper: 331 Reactome/Hallmark pathways -> 64 tokens).

    A case without RNA gets the learned missing tokens (``ModalityEncoder``).
    """

    def __init__(
        self,
        group_sizes: Sequence[int],
        dim: int,
        *,
        n_tokens: int,
        mixer_depth: int,
        hidden: int,
        dropout: float,
        mixer_expansion: float = 0.5,
    ) -> None:
        if not group_sizes or min(group_sizes) < 1:
            raise InputError(
                f"rna group sizes must be a non-empty list of positive gene counts, got {list(group_sizes)}"
            )
        if n_tokens < 1:
            raise InputError(f"n_rna_tokens must be >= 1, got {n_tokens}")
        super().__init__(int(sum(group_sizes)), n_tokens, dim)
        n_groups = len(group_sizes)
        self.pathway_mlps = PathwayMLPs(group_sizes, hidden, dropout)
        self.mixer = nn.Sequential(
            *(_MixerBlock(n_groups, hidden, mixer_expansion, dropout) for _ in range(mixer_depth))
        )
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, dim)
        self.compress = nn.Linear(n_groups, n_tokens)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(self.norm(self.mixer(self.pathway_mlps(values))))  # [B, n_groups, dim]
        return self.compress(tokens.transpose(1, 2)).transpose(1, 2)


class VectorEncoder(ModalityEncoder):
    """A short numeric vector (clinical fields; a gene panel's mutation status) -> one token by a
    two-layer MLP (the paper's clinical encoder)."""

    def __init__(self, width: int, dim: int, *, may_be_missing: bool = True) -> None:
        if width < 1:
            raise InputError(f"a vector modality needs at least one value per case, got width {width}")
        super().__init__(width, 1, dim, may_be_missing=may_be_missing)
        self.mlp = nn.Sequential(nn.Linear(width, dim // 2), nn.ReLU(), nn.Linear(dim // 2, dim), nn.LayerNorm(dim))

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return self.mlp(values).unsqueeze(1)


class RnaSettings(EntrySettings):
    """The RNA encoder's sizes; the defaults are CPU-sized, the paper's are 64 tokens of width 256."""

    n_rna_tokens: int = Field(default=8, ge=1, description="tokens the pathways are compressed to (the paper: 64)")
    rna_hidden: int = Field(default=32, ge=1, description="width of the per-pathway MLPs and the mixer (the paper: 256)")
    rna_mixer_depth: int = Field(default=3, ge=0, description="MLP-Mixer blocks over the pathway tokens")
    rna_dropout: float = Field(default=0.25, ge=0, lt=1, description="dropout of the pathway MLPs and the mixer")


@MODALITY_ENCODERS.register("rna")
class RnaEntry(ModalityEncoderEntry):
    """Bulk RNA-seq by pathway: ``RnaPathwayEncoder``."""

    Settings = RnaSettings
    settings: RnaSettings

    @property
    def n_tokens(self) -> int:
        return self.settings.n_rna_tokens

    def build(self, segments: tuple[int, ...], dim: int) -> ModalityEncoder:
        s = self.settings
        return RnaPathwayEncoder(
            segments, dim, n_tokens=s.n_rna_tokens, mixer_depth=s.rna_mixer_depth, hidden=s.rna_hidden, dropout=s.rna_dropout
        )


@MODALITY_ENCODERS.register("clinical")
class ClinicalEntry(ModalityEncoderEntry):
    """The clinical record's fields: one token (``VectorEncoder``)."""

    def build(self, segments: tuple[int, ...], dim: int) -> ModalityEncoder:
        # Missing clinical fields are encoded field by field (value + indicator), never as a missing record.
        return VectorEncoder(sum(segments), dim, may_be_missing=False)


@MODALITY_ENCODERS.register("mutations")
class MutationsEntry(ModalityEncoderEntry):
    """A gene panel's mutation status: one token (``VectorEncoder``), learned when a case was not sequenced."""

    def build(self, segments: tuple[int, ...], dim: int) -> ModalityEncoder:
        return VectorEncoder(sum(segments), dim)


class TaskTokens(nn.Module):
    """A one-hot task id -> Linear + LayerNorm -> one token that tells the model which task's
    embedding to produce (the paper runs each case once per task)."""

    def __init__(self, n_tasks: int, dim: int) -> None:
        super().__init__()
        if n_tasks < 1:
            raise InputError(f"n_tasks must be >= 1, got {n_tasks}")
        self.n_tasks = n_tasks
        self.proj = nn.Linear(n_tasks, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, task: torch.Tensor) -> torch.Tensor:
        """``task: [B]`` integer ids -> ``[B, 1, dim]``."""
        if task.ndim != 1 or task.dtype.is_floating_point:
            raise ValueError(f"expected integer task ids [B], got {task.dtype} {tuple(task.shape)}")
        if task.numel() and (int(task.min()) < 0 or int(task.max()) >= self.n_tasks):
            raise ValueError(f"task ids must be in [0, {self.n_tasks}), got {task.tolist()}")
        one_hot = F.one_hot(task.long(), self.n_tasks).to(self.proj.weight.dtype)
        return self.norm(self.proj(one_hot)).unsqueeze(1)
