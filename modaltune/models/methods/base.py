"""What every method network shares: ``ModalTuneModel``'s forward contract, the modalities it
consumes, its settings schema, per-task heads and its parameter counts.

A method turns a case (tile features with coordinates, and the case vectors of the modalities it
is given) into one embedding per (case, task) row, which the existing objectives score against
their label bank; so every method is trained and evaluated exactly as ModalTune is.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from modaltune.errors import InputError
from modaltune.models.methods.slfm import SLFM_METHODS
from modaltune.models.modality_encoders import IMAGE, MODALITY_ENCODERS
from modaltune.registry import EntrySettings, Registry, UnknownChoiceError

# The modalities that come as a case vector (rna, clinical, mutations): every one a method may take.
CASE_VECTOR_MODALITIES = frozenset(MODALITY_ENCODERS.names())


# The gene-group layout MCAT's and SurvPath's reference constructors default to (``omic_sizes``):
# the stated RNA input of the genomic methods' published parameter counts.
REFERENCE_OMIC_SIZES = (100, 200, 300, 400, 500, 600)


@dataclass(frozen=True)
class PublishedSize:
    """A method's parameter count at the paper's default sizes (its settings' defaults), without
    the task heads, for a stated input: tile features of ``in_dim`` and ``modality_inputs``."""

    parameters: int
    in_dim: int = 1024
    modality_inputs: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


class MethodSettings(EntrySettings):
    """A method's own settings (widths, depth, dropout, ...), as every registry entry declares
    its options (``Settings``, validated by ``METHOD_NETWORKS.settings``); unknown keys are errors."""


class TaskHeads(nn.Module):
    """One linear projection per task over the task-independent case embedding:
    ``[B, width]`` and task ids ``[B]`` -> ``[B, out_dim]``.

    Why per-task heads rather than a learned task vector added before one shared projection:
    added before a linear map, a task vector only shifts each task's output by a constant, so
    every task would read the same direction of the case embedding. The papers train one
    classifier per task on their body; per-task heads are that, sharing the body.
    """

    def __init__(self, n_tasks: int, width: int, out_dim: int) -> None:
        super().__init__()
        if n_tasks < 1 or out_dim < 1:
            raise InputError(f"a method needs n_tasks >= 1 and out_dim >= 1, got {n_tasks} and {out_dim}")
        self.n_tasks = n_tasks
        bound = 1 / math.sqrt(width)  # nn.Linear's default initialisation, per task
        self.weight = nn.Parameter(torch.empty(n_tasks, out_dim, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_tasks, out_dim).uniform_(-bound, bound))

    def forward(self, embedding: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        if task.ndim != 1 or task.dtype.is_floating_point or task.shape[0] != embedding.shape[0]:
            raise ValueError(f"expected integer task ids [{embedding.shape[0]}], got {task.dtype} {tuple(task.shape)}")
        if task.numel() and (int(task.min()) < 0 or int(task.max()) >= self.n_tasks):
            raise ValueError(f"task ids must be in [0, {self.n_tasks}), got {task.tolist()}")
        task = task.long()
        return torch.einsum("bw,bow->bo", embedding, self.weight[task].to(embedding.dtype)) + self.bias[task].to(
            embedding.dtype
        )


class MethodNetwork(nn.Module, ABC):
    """A baseline network with ``ModalTuneModel``'s forward contract.

    Subclasses set ``name``, ``consumes`` (the modalities it can use: ``wsi`` and case-vector
    modalities), ``requires`` (those it cannot work without), ``Settings`` and ``published``
    (its parameter count at the published sizes, written next to the class), and implement
    ``build`` (the body) and ``embed``; the per-task heads come last. ``modality_inputs`` gives,
    for each case-vector modality the instance uses, its segment sizes (RNA: genes per pathway; a
    plain vector: its width), as ``ModalTuneConfig.modality_inputs``; the slide is not in it.
    ``settings`` None: the published sizes.
    """

    name: ClassVar[str]
    consumes: ClassVar[frozenset[str]]
    requires: ClassVar[frozenset[str]]
    Settings: ClassVar[type[MethodSettings]]
    published: ClassVar[PublishedSize]
    heads: TaskHeads

    def __init__(
        self,
        settings: MethodSettings | None = None,
        *,
        in_dim: int,
        modality_inputs: Mapping[str, Sequence[int]],
        n_tasks: int,
        out_dim: int,
    ) -> None:
        super().__init__()
        self.settings = settings if settings is not None else self.Settings()
        if not isinstance(self.settings, self.Settings):
            raise InputError(f"method {self.name!r} takes {self.Settings.__name__}, got {type(self.settings).__name__}")
        if in_dim < 1:
            raise InputError(f"method {self.name!r} needs tile features of width >= 1, got in_dim {in_dim}")
        self.modality_inputs = {name: tuple(int(s) for s in segments) for name, segments in modality_inputs.items()}
        self._check_modalities()
        self.in_dim = in_dim
        self.heads = TaskHeads(n_tasks, self.build(), out_dim)

    def _check_modalities(self) -> None:
        vectors = sorted(self.consumes - {IMAGE})
        for name, segments in self.modality_inputs.items():
            if name not in vectors:
                raise InputError(f"method {self.name!r} cannot consume modality {name!r}; its case-vector modalities are {vectors}")
            if not segments or min(segments) < 1:
                raise InputError(f"method {self.name!r}: modality {name!r} needs positive segment sizes, got {list(segments)}")
        missing = sorted(self.requires - self.modalities)
        if missing:
            required = ", ".join(map(repr, missing))
            raise InputError(f"method {self.name!r} requires modality {required}; it was given {sorted(self.modalities)}")
        if not self.modalities:
            raise InputError(f"method {self.name!r} needs at least one of the modalities {vectors}")

    @property
    def modalities(self) -> frozenset[str]:
        """The modalities this instance uses: the slide where the method consumes it, and the
        case-vector modalities it was given."""
        return frozenset(self.modality_inputs) | (self.consumes & {IMAGE})

    @abstractmethod
    def build(self) -> int:
        """Builds the body from ``settings``, ``in_dim`` and ``modality_inputs``; returns the
        width of ``embed``'s output."""

    @abstractmethod
    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The task-independent case embedding ``[B, width]`` that the task heads project."""

    def forward(
        self,
        features: torch.Tensor,
        coords: torch.Tensor,
        task: torch.Tensor,
        inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Tile features ``[B, N, in_dim]``, level-0 pixel coords ``[B, N, 2]``, task ids ``[B]``
        and ``inputs``, each used modality's case vectors by name (a NaN row: the case lacks it)
        -> ``[B, out_dim]``. Inputs of modalities the instance does not use are ignored."""
        inputs = inputs or {}
        for name in self.modality_inputs:
            if name not in inputs:
                raise ValueError(f"method {self.name!r} is configured with the {name!r} modality but inputs has no {name!r}")
        return self.heads(self.embed(features, coords, inputs), task)

    # The objectives call a model through ModalTuneModel's cached-prefix seam; a method has no
    # frozen part, so its "prefix" is the tile features themselves and nothing is cached.
    prefix_depth: ClassVar[int] = 0

    def encode_prefix(self, features: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """The tile features unchanged: a method trains everything it runs on them."""
        return features

    def forward_from_prefix(
        self, prefix: torch.Tensor, coords: torch.Tensor, task: torch.Tensor, inputs: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return self(prefix, coords, task, inputs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if not param.requires_grad]

    def lr_scales(self) -> dict[str, float]:
        """Learning-rate multipliers other than 1, by parameter name: none, a method trains every weight at the run's rate."""
        return {}

    def parameter_counts(self) -> dict[str, int]:
        """Trainable / frozen totals (a method has no frozen part) and the count of each
        top-level component (``heads``: the per-task projections)."""
        counts = {
            "trainable": sum(p.numel() for p in self.trainable_parameters()),
            "frozen": sum(p.numel() for p in self.parameters() if not p.requires_grad),
        }
        for name, param in self.named_parameters():
            component = name.split(".")[0]
            counts[component] = counts.get(component, 0) + param.numel()
        return counts


METHOD_NETWORKS: Registry[type[MethodNetwork]] = Registry("method")

def method_names() -> list[str]:
    """Every method a run config or a study level may name: those on the frozen SLFM
    (``modaltune``, the default, ``linear_probe`` and ``finetune``), then the entries of ``METHOD_NETWORKS``."""
    return [*SLFM_METHODS, *METHOD_NETWORKS.names()]


def check_method_modalities(method: str, modalities: Sequence[str]) -> None:
    """A ``ValueError`` naming ``method`` and the modality, for a modality it cannot consume or
    one it requires that ``modalities`` lacks (ModalTune: any modality, always the slide)."""
    if method in SLFM_METHODS:
        consumes, requires = SLFM_METHODS[method].consumed(), SLFM_METHODS[method].requires
    else:
        if method not in METHOD_NETWORKS:
            raise UnknownChoiceError(f"unknown method {method!r}; choose from {method_names()}")
        consumes, requires = METHOD_NETWORKS[method].consumes, METHOD_NETWORKS[method].requires
    for name in modalities:
        if name not in consumes:
            raise ValueError(f"method {method!r} cannot consume modality {name!r}; it consumes {sorted(consumes)}")
    missing = sorted(requires - set(modalities))
    if missing:
        raise ValueError(f"method {method!r} requires modality {missing[0]!r}; modalities are {list(modalities)}")
    if not set(modalities) & consumes:
        raise ValueError(f"method {method!r} needs at least one of the modalities {sorted(consumes)}")


def registered(cls: type[MethodNetwork]) -> type[MethodNetwork]:
    """Adds a method class to ``METHOD_NETWORKS`` under its ``name``."""
    return METHOD_NETWORKS.register(cls.name)(cls)
