"""The two training objectives over a ModalTune model, each with per-task loss weights.

* ``distill`` (the paper): the model runs once per task token (general, diagnosis, survival);
  each output is pulled towards that case's projected text embedding by a temperature-scaled
  KL divergence. Predictions come from probes fitted on training embeddings
  (``modaltune.probes``): the diagnosis-token embedding for subtype, the survival-token one
  for risk.
* ``supervised`` (ours): the diagnosis-token output is scored against each class
  description's text embedding by scaled cosine similarity (cross-entropy), and the
  survival-token output against each survival bin's text embedding, giving discrete-time
  hazards trained with the censoring-aware NLL. Predictions come straight from these heads.

The frozen prefix of the slide encoder is computed once per case and shared by the task passes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modaltune.errors import InputError
from modaltune.losses import cosine_logits, discrete_time_nll, distillation_kl, risk_from_hazard_logits
from modaltune.models import TaskModel
from modaltune.registry import Registry
from modaltune.text import TASKS, LabelBank

OBJECTIVES: Registry[type[Objective]] = Registry("objective")


def _registered(cls: type[Objective]) -> type[Objective]:
    """Adds an objective class to ``OBJECTIVES`` under its ``name``."""
    return OBJECTIVES.register(cls.name)(cls)


@dataclass
class CaseBatch:
    """One case, ready for the model (batch size 1, as in the paper)."""

    case_id: str
    cohort: str
    features: torch.Tensor  # (1, N, in_dim) float
    coords: torch.Tensor  # (1, N, 2) long
    modalities: dict[str, torch.Tensor]  # name -> (1, width); a row of NaN: the case lacks the modality
    targets: torch.Tensor  # (len(TASKS), out_dim) text targets
    subtype_index: int  # -1 (batches.UNKNOWN) with survival_bin and event: a new patient, outcome unknown
    survival_bin: int
    event: int
    time: float
    all_tiles: bool = False  # every tile of the case, in slide order (no random cap): its prefix may be cached
    prefix: torch.Tensor | None = None  # the frozen encoder's cached output before the first adapter

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> CaseBatch:
        def move(t: torch.Tensor, floating: bool = True) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if floating and dtype is not None else t.dtype)

        return replace(
            self, features=move(self.features), coords=move(self.coords, floating=False),
            modalities={name: move(values) for name, values in self.modalities.items()}, targets=move(self.targets),
            prefix=None if self.prefix is None else move(self.prefix),
        )


@dataclass
class CaseOutputs:
    """What evaluation needs of one case: weighted loss, per-task embeddings, head predictions."""

    loss: float
    embeddings: dict[str, np.ndarray]
    predictions: tuple[float, np.ndarray] | None


def resolve_loss_weights(objective: str, tasks: tuple[str, ...], loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Every task's weight (1.0 unless given); unknown tasks and unusable weights are input errors."""
    weights = {task: 1.0 for task in tasks} | dict(loss_weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise InputError(f"loss_weights has task(s) {unknown} that objective '{objective}' does not train ({list(tasks)})")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise InputError(f"loss_weights must be finite, >= 0 and not all 0, got {weights}")
    return weights


class Objective(nn.Module, ABC):
    """Loss and per-case outputs of one objective; may own a few trainable parameters."""

    name: str
    tasks: tuple[str, ...]
    # Predictions come from probes fitted on the training cases' embeddings (the paper's distill),
    # not from the objective's own heads: evaluation and predict embed the training cases too.
    predicts_with_probes: ClassVar[bool] = False

    def __init__(self, bank: LabelBank, loss_weights: Mapping[str, float] | None) -> None:
        super().__init__()
        self.loss_weights = resolve_loss_weights(self.name, self.tasks, loss_weights)
        self.bank = bank

    def _outputs(self, model: TaskModel, batches: Sequence[CaseBatch]) -> list[dict[str, torch.Tensor]]:
        """Per case of ``batches``, one embedding (1, out_dim) per task of this objective.

        The cases must have the same tile count (``modaltune.train.loop.bucket_by_tile_count``):
        they and their task passes run as one batch of ``cases x tasks`` rows that differ only in
        case and task token, so nothing is padded. The frozen prefix comes cached with a case or
        is computed once for the cases without it.
        """
        prefixes = [batch.prefix for batch in batches]
        missing = [i for i, prefix in enumerate(prefixes) if prefix is None]
        if missing:
            computed = model.encode_prefix(_stacked([batches[i].features for i in missing]), _stacked([batches[i].coords for i in missing]))
            for i, prefix in zip(missing, computed.split(1), strict=True):
                prefixes[i] = prefix
        n_tasks = len(self.tasks)

        def per_task(rows: torch.Tensor) -> torch.Tensor:  # [cases, ...] -> [cases * tasks, ...], case-major
            return rows.unsqueeze(1).expand(-1, n_tasks, *rows.shape[1:]).flatten(0, 1)

        task_ids = torch.tensor([TASKS.index(t) for t in self.tasks], device=batches[0].features.device).repeat(len(batches))
        inputs = {name: per_task(_stacked([batch.modalities[name] for batch in batches])) for name in batches[0].modalities}
        coords = per_task(_stacked([batch.coords for batch in batches]))
        outputs = model.forward_from_prefix(per_task(_stacked(prefixes)), coords, task_ids, inputs)  # type: ignore[arg-type]
        return [
            {task: outputs[case * n_tasks + j : case * n_tasks + j + 1] for j, task in enumerate(self.tasks)}
            for case in range(len(batches))
        ]

    def forward(self, model: TaskModel, batch: CaseBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total loss and each task's unweighted loss (for logging)."""
        losses = self.task_losses(self._outputs(model, [batch])[0], batch)
        total = sum(self.loss_weights[task] * loss for task, loss in losses.items())
        return total, {task: float(loss.detach()) for task, loss in losses.items()}  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate_cases(self, model: TaskModel, batches: Sequence[CaseBatch], with_loss: bool = True) -> list[CaseOutputs]:
        """Per case: loss, task embeddings and (for objectives with heads) predictions, from one
        pass over cases of equal tile count. Without ``with_loss`` the loss is NaN: new cases at
        prediction time have no text targets."""
        results = []
        for outputs, batch in zip(self._outputs(model, batches), batches, strict=True):
            loss = math.nan
            if with_loss:
                loss = float(sum(self.loss_weights[task] * value for task, value in self.task_losses(outputs, batch).items()))
            results.append(CaseOutputs(
                loss=loss,
                embeddings={task: out[0].float().cpu().numpy() for task, out in outputs.items()},
                predictions=self.head_predictions(outputs, batch),
            ))
        return results

    def head_predictions(self, outputs: dict[str, torch.Tensor], batch: CaseBatch) -> tuple[float, np.ndarray] | None:
        """(risk, class probabilities in labels.yaml order), or None where probes predict instead."""
        return None

    @abstractmethod
    def task_losses(self, outputs: dict[str, torch.Tensor], batch: CaseBatch) -> dict[str, torch.Tensor]:
        """Unweighted loss per task."""


@_registered
class DistillObjective(Objective):
    name = "distill"
    tasks = TASKS
    predicts_with_probes = True

    def __init__(
        self, bank: LabelBank, loss_weights: Mapping[str, float] | None = None, temperature: float = 1.0, scale: float = 10.0
    ) -> None:
        super().__init__(bank, loss_weights)
        self.temperature, self.scale = temperature, scale

    def task_losses(self, outputs: dict[str, torch.Tensor], batch: CaseBatch) -> dict[str, torch.Tensor]:
        return {
            task: distillation_kl(
                outputs[task].float(), batch.targets[TASKS.index(task)].unsqueeze(0).float(), self.temperature, self.scale
            )
            for task in self.tasks
        }


@_registered
class SupervisedObjective(Objective):
    """Text-anchored heads: a learned logit scale per head and a learned bias per survival bin.

    Class and bin anchors are the text embeddings of their descriptions, so the text encoder
    shapes this objective too and stays a meaningful ablation factor. Class anchors are
    centred (only their differences matter to a softmax); bin anchors are not: their shared
    direction is the axis along which every hazard rises together, i.e. the risk axis.
    """

    name = "supervised"
    tasks = ("diagnosis", "survival")

    def __init__(self, bank: LabelBank, loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__(bank, loss_weights)
        self.log_scale = nn.Parameter(torch.full((2,), math.log(10.0)))
        self.bin_bias = nn.Parameter(torch.zeros(bank.bins.n_bins))
        for cohort, anchors in bank.class_targets.items():
            self.register_buffer(f"classes_{cohort}", _centred(anchors), persistent=False)
        for cohort, anchors in bank.bin_targets.items():
            self.register_buffer(f"bins_{cohort}", torch.from_numpy(np.asarray(anchors)).float(), persistent=False)

    def class_logits(self, diagnosis: torch.Tensor, cohort: str) -> torch.Tensor:
        return cosine_logits(diagnosis.float(), getattr(self, f"classes_{cohort}"), self.log_scale[0].exp())

    def hazard_logits(self, survival: torch.Tensor, cohort: str) -> torch.Tensor:
        return cosine_logits(survival.float(), getattr(self, f"bins_{cohort}"), self.log_scale[1].exp()) + self.bin_bias

    def task_losses(self, outputs: dict[str, torch.Tensor], batch: CaseBatch) -> dict[str, torch.Tensor]:
        device = outputs["diagnosis"].device
        return {
            "diagnosis": F.cross_entropy(
                self.class_logits(outputs["diagnosis"], batch.cohort), torch.tensor([batch.subtype_index], device=device)
            ),
            "survival": discrete_time_nll(
                self.hazard_logits(outputs["survival"], batch.cohort),
                torch.tensor([batch.survival_bin], device=device),
                torch.tensor([batch.event], device=device),
            ),
        }

    def head_predictions(self, outputs: dict[str, torch.Tensor], batch: CaseBatch) -> tuple[float, np.ndarray]:
        risk = risk_from_hazard_logits(self.hazard_logits(outputs["survival"], batch.cohort))
        probabilities = self.class_logits(outputs["diagnosis"], batch.cohort).softmax(dim=-1)
        return float(risk[0]), probabilities[0].cpu().numpy()

def _stacked(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cases' ``[1, ...]`` tensors as one ``[cases, ...]`` batch (no copy for a single case)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


def _centred(anchors: np.ndarray) -> torch.Tensor:
    """Anchors minus their mean: prompts of one cancer type share most of their words, so their
    embeddings are nearly parallel; centring keeps only what tells the classes apart."""
    tensor = torch.from_numpy(np.asarray(anchors)).float()
    return tensor - tensor.mean(dim=0, keepdim=True)


def check_loss_weights(objective: str, loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    """``resolve_loss_weights`` by objective name, so a study checks weights before building anything."""
    return resolve_loss_weights(objective, OBJECTIVES[objective].tasks, loss_weights)


def build_objective(name: str, bank: LabelBank, loss_weights: Mapping[str, float] | None = None, **options: float) -> Objective:
    """The objective registered as ``name``; ``options`` are its own keyword arguments."""
    return OBJECTIVES[name](bank, loss_weights, **options)
