"""One epoch of training and one evaluation pass: the code every run and trial shares.

The engine is anything with ``backward(loss)`` and ``step()`` (DeepSpeed's engine, or
``TorchEngine`` for plain torch/DDP), so the same loop runs single-process in tests, inside
Ray Train workers, and under DeepSpeed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from modaltune.metrics import evaluate_predictions
from modaltune.models import ModalTuneModel, TaskModel
from modaltune.models.methods import SLFM_METHODS
from modaltune.objectives import CaseBatch, Objective, build_objective
from modaltune.probes import ProbeInputs, fit_probe_predictions

if TYPE_CHECKING:
    from modaltune.data import Cohort
    from modaltune.text import LabelBank
    from modaltune.train.config import TrainConfig

logger = logging.getLogger(__name__)


class TrainModule(nn.Module):
    """The model and its objective as one module, as DeepSpeed and DDP want to wrap it."""

    def __init__(self, model: TaskModel, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: CaseBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(self.model, batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_parameters(self, lr: float) -> list[nn.Parameter] | list[dict[str, Any]]:
        """What the optimizer takes: the trainable parameters, or, where the model gives some a
        learning-rate multiplier (``finetune``'s ``layer_decay``), one group per multiplier with
        its ``lr``, the run's own rate first (the group a run logs the rate of)."""
        scales = {f"model.{name}": scale for name, scale in self.model.lr_scales().items()}
        if not scales:
            return self.trainable_parameters()
        groups: dict[float, list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups.setdefault(scales.get(name, 1.0), []).append(param)
        return [{"params": params, "lr": lr * scale} for scale, params in sorted(groups.items(), key=lambda group: -group[0])]


def build_train_module(config: TrainConfig, cohort: Cohort, bank: LabelBank) -> TrainModule:
    """The run's model and objective, as training builds them and ``predict`` rebuilds them: the
    random-init SLFM (without a checkpoint) seeded by ``encoder_init_seed``, so that every worker
    and every later prediction holds the same one, and the new modules by the run's seed; a
    method on the SLFM (``modaltune``, ``linear_probe``, ``finetune``) is built so, a baseline network (all of
    it new) by the run's seed."""
    model: TaskModel
    if config.model.method in SLFM_METHODS:
        torch.manual_seed(config.model.encoder_init_seed)
        model = ModalTuneModel(config.model.for_cohort(cohort))
        torch.manual_seed(config.seed)
    else:
        torch.manual_seed(config.seed)
        model = config.model.method_network(cohort)
    return TrainModule(model, build_objective(config.objective, bank, config.loss_weights))


class Engine(Protocol):
    def __call__(self, batch: CaseBatch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...


class TorchEngine:
    """DeepSpeed-like ``backward``/``step`` over a torch optimizer, with accumulation and clipping."""

    def __init__(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        gradient_accumulation_steps: int = 1, gradient_clipping: float | None = None,
    ) -> None:
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.accumulation, self.clipping = gradient_accumulation_steps, gradient_clipping
        self.micro_steps = 0
        self.last_grad_norm = math.nan

    def __call__(self, batch: CaseBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.module(batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.accumulation:
            return
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clipping if self.clipping else float("inf"))
        self.last_grad_norm = float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()


def train_epoch(
    engine: Engine, batches: Callable[[str], CaseBatch], case_ids: Sequence[str], on_step: Callable[[int, float], None] | None = None
) -> dict[str, float]:
    """One pass over ``case_ids`` (already shuffled by the caller). Returns mean losses."""
    totals: dict[str, float] = {}
    for step, case_id in enumerate(case_ids):
        loss, parts = engine(batches(case_id))
        engine.backward(loss)
        engine.step()
        for name, value in {"loss": float(loss.detach()), **{f"loss/{k}": v for k, v in parts.items()}}.items():
            totals[name] = totals.get(name, 0.0) + value
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return {name: value / max(len(case_ids), 1) for name, value in totals.items()}


def bucket_by_tile_count(batches: Iterable[CaseBatch], batch_tiles: int) -> Iterator[list[CaseBatch]]:
    """Cases grouped with others of the same tile count (and the same cached-prefix state), at
    most ``batch_tiles`` tiles a group, so that a group runs as one batch with no padding.

    Cases capped at ``max_tiles`` all have exactly that many tiles, so evaluation batches fill
    up; uncapped cases of other lengths run alone. At most about ``batch_tiles`` tiles wait
    for company: past that, the fullest waiting group runs. ``batch_tiles`` 0 means one case each.
    """
    if batch_tiles <= 0:
        yield from ([batch] for batch in batches)
        return
    waiting: dict[tuple[int, bool], list[CaseBatch]] = {}
    held = 0
    for batch in batches:
        tiles = batch.features.shape[1]
        key = (tiles, batch.prefix is not None)
        group = waiting.setdefault(key, [])
        group.append(batch)
        held += tiles
        if (len(group) + 1) * tiles > batch_tiles:  # full: the next case of this length would not fit
            held -= tiles * len(group)
            yield waiting.pop(key)
        while held > batch_tiles:  # too many tiles waiting: run the fullest group
            fullest = max(waiting, key=lambda k: k[0] * len(waiting[k]))
            held -= fullest[0] * len(waiting[fullest])
            yield waiting.pop(fullest)
    yield from waiting.values()


@torch.no_grad()
def collect_case_outputs(
    module: TrainModule, batches: Callable[[str], CaseBatch], case_ids: Sequence[str], with_loss: bool = True, batch_tiles: int = 0,
) -> list[dict]:
    """Per case of ``case_ids`` (in that order): labels, validation loss (NaN without
    ``with_loss``: new cases have no text targets), task embeddings and (supervised) head
    predictions. Cases of equal tile count run together, up to ``batch_tiles`` tiles a batch."""
    was_training = module.training
    module.eval()
    try:
        model, objective = module.model, module.objective
        rows: dict[str, dict] = {}
        for group in bucket_by_tile_count((batches(case_id) for case_id in case_ids), batch_tiles):
            for batch, outputs in zip(group, objective.evaluate_cases(model, group, with_loss), strict=True):
                row = {
                    "case_id": batch.case_id, "cohort": batch.cohort, "subtype_index": batch.subtype_index, "time": batch.time,
                    "event": batch.event, "loss": outputs.loss, "embeddings": outputs.embeddings,
                }
                if outputs.predictions is not None:
                    row["risk"], row["class_probabilities"] = outputs.predictions
                rows[batch.case_id] = row
        return [rows[case_id] for case_id in case_ids]
    finally:
        module.train(was_training)


def score_case_outputs(
    objective: Objective, train_rows: Sequence[dict], val_rows: Sequence[dict], classes_of: dict[str, list[str]], where: str = "",
) -> tuple[dict[str, float], pd.DataFrame]:
    """Validation loss, metrics per cohort and overall, and per-case predictions (``predict_cases``);
    ``where`` names the split in an undefined metric's warning."""
    predictions = predict_cases(objective, train_rows, val_rows, classes_of)
    losses = [r["loss"] for r in val_rows]
    metrics = {"loss": float(np.mean(losses)) if losses else math.nan} | evaluate_predictions(predictions, classes_of, where)
    return metrics, predictions


def predict_cases(
    objective: Objective, train_rows: Sequence[dict], rows: Sequence[dict], classes_of: dict[str, list[str]]
) -> pd.DataFrame:
    """Per-case risk, subtype and task embeddings of ``rows`` (outputs of ``collect_case_outputs``).

    ``distill`` fits its probes on the training rows' embeddings (as the paper);
    ``supervised`` reads predictions from its heads and ignores ``train_rows``.
    """
    predictions = _cases_frame(rows, classes_of)
    if objective.predicts_with_probes:
        predictions = _probe(_cases_frame(train_rows, classes_of), train_rows, predictions, rows, classes_of)
    else:
        predictions["risk"] = [r["risk"] for r in rows]
        predictions["class_probabilities"] = [r["class_probabilities"] for r in rows]
        predictions["predicted_subtype"] = [
            classes_of[r["cohort"]][int(np.argmax(r["class_probabilities"]))] for r in rows
        ]
    for task in objective.tasks:
        predictions[f"embedding_{task}"] = [r["embeddings"][task] for r in rows]
    return predictions


def evaluate(
    module: TrainModule, batches: Callable[[str], CaseBatch], train_ids: Sequence[str], val_ids: Sequence[str],
    classes_of: dict[str, list[str]],
) -> tuple[dict[str, float], pd.DataFrame]:
    """Single-process evaluation: collect outputs, then score (see ``score_case_outputs``)."""
    train_rows = collect_case_outputs(module, batches, train_ids) if module.objective.predicts_with_probes else []
    return score_case_outputs(module.objective, train_rows, collect_case_outputs(module, batches, val_ids), classes_of)


def _cases_frame(rows: Sequence[dict], classes_of: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "case_id": [r["case_id"] for r in rows],
            "cohort": [r["cohort"] for r in rows],
            "subtype": [classes_of[r["cohort"]][r["subtype_index"]] if r["subtype_index"] >= 0 else None for r in rows],
            "time": [r["time"] for r in rows],
            "event": [r["event"] for r in rows],
        }
    )


def _probe(
    train: pd.DataFrame, train_rows: Sequence[dict], val: pd.DataFrame, val_rows: Sequence[dict], classes_of: dict[str, list[str]]
) -> pd.DataFrame:
    """Subtype from diagnosis-token embeddings, risk from survival-token embeddings."""

    def inputs(cases: pd.DataFrame, rows: Sequence[dict]) -> ProbeInputs:
        return ProbeInputs(
            cases,
            np.stack([r["embeddings"]["diagnosis"] for r in rows]),
            np.stack([r["embeddings"]["survival"] for r in rows]),
        )

    return fit_probe_predictions(inputs(train, train_rows), inputs(val, val_rows), classes_of)
