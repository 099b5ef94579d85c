"""Objectives over a tiny ModalTune model: one optimizer step for every modality subset,
adapter layout and objective, the frozen SLFM's invariance, and per-task loss weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modaltune.data import Cohort, modality_inputs
from modaltune.errors import InputError
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig, TitanConfig
from modaltune.objectives import CaseBatch, DistillObjective, SupervisedObjective, build_objective
from modaltune.text import TASKS, LabelBank, build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher
from modaltune.train.loop import TorchEngine, TrainModule, train_epoch

OUT_DIM = 16
SUBSETS: list[tuple[str, ...]] = [("wsi",), ("wsi", "rna"), ("wsi", "clinical"), ("wsi", "rna", "clinical")]
LAYOUTS: list[dict[str, Any]] = [
    {"adapter_depth": 0},
    {"adapter_depth": 1},
    {"adapter_depth": 2},
    {"adapter_layout": [[0, 1], [2, 3]]},
]
LAYOUT_IDS = ["depth0", "depth1", "depth2", "layout01-23"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cohort(small_cohort: Path) -> Cohort:
    return Cohort(small_cohort)


@pytest.fixture(scope="module")
def bank(cohort: Cohort) -> LabelBank:
    """One-hot label bank of fold 0's training split (no language model to load)."""
    train_ids, _ = cohort.split(0)
    return build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), train_ids, out_dim=OUT_DIM)


@pytest.fixture(scope="module")
def batch(cohort: Cohort, bank: LabelBank) -> CaseBatch:
    """One training case that died (so the survival NLL has both of its terms), tiles capped for speed."""
    train_ids, _ = cohort.split(0)
    case_id = next(c for c in train_ids if cohort.record(c).event == 1)
    batcher = CaseBatcher(cohort, bank, train_ids, modalities=("rna", "clinical"), max_tiles=48)
    return batcher.batch(case_id, np.random.default_rng(0))


def _model(cohort: Cohort, modalities: tuple[str, ...], layout: dict[str, Any], seed: int = 0) -> ModalTuneModel:
    torch.manual_seed(seed)
    config = ModalTuneConfig.tiny(
        encoder=SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim),
        modalities=modalities,
        modality_inputs=modality_inputs(cohort, ["rna", "clinical"]),
        out_dim=OUT_DIM,
        **layout,
    )
    return ModalTuneModel(config)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _trainable_submodules(model: ModalTuneModel) -> dict[str, torch.nn.Module]:
    """The new modules whose weights one step must move, where the configuration has them."""
    modules = {"adapter": model.adapter} if model.adapter is not None else {}
    return modules | {f"{name}_encoder": encoder for name, encoder in model.modality_encoders.items()}


@pytest.mark.parametrize("objective_name", ["distill", "supervised"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("modalities", SUBSETS, ids="+".join)
def test_one_step_trains_new_modules_and_leaves_the_slfm_untouched(
    cohort: Cohort, bank: LabelBank, batch: CaseBatch, modalities: tuple[str, ...], layout: dict[str, Any], objective_name: str
) -> None:
    """A step moves adapters/modality encoders, never the frozen SLFM, and the optimizer never sees it."""
    model = _model(cohort, modalities, layout)
    module = TrainModule(model, build_objective(objective_name, bank)).train()
    params = module.trainable_parameters()
    # No weight decay: with Adam's sign-like first step, a weight moves only if a gradient reached it.
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    engine = TorchEngine(module, optimizer)

    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = list(model.encoder.parameters())
    assert frozen and not any(id(p) in optimised for p in frozen)
    assert {id(p) for p in frozen} == {id(p) for p in model.frozen_parameters()}
    assert optimised == {id(p) for p in module.parameters() if p.requires_grad}

    encoder_before = _snapshot(model.encoder)
    parts_before = {name: _snapshot(sub) for name, sub in _trainable_submodules(model).items()}
    head_before = model.head.weight.detach().clone()

    losses = train_epoch(engine, lambda _case: batch, [batch.case_id])

    assert set(losses) == {"loss", *(f"loss/{task}" for task in module.objective.tasks)}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert torch.isfinite(torch.tensor(engine.last_grad_norm)) and engine.last_grad_norm > 0
    after = model.encoder.state_dict()
    assert all(torch.equal(encoder_before[k], after[k]) for k in encoder_before), "the frozen SLFM changed"
    assert not any(m.training for m in model.encoder.modules()), "the frozen SLFM left eval mode"
    assert not torch.equal(head_before, model.head.weight)
    expected_parts = {"adapter"} if model.config.layout else set()
    expected_parts |= {f"{m}_encoder" for m in ("rna", "clinical") if m in modalities}
    assert parts_before.keys() == expected_parts
    parts_after = _trainable_submodules(model)
    for name, before in parts_before.items():
        now = parts_after[name].state_dict()
        assert any(not torch.equal(before[k], now[k]) for k in before), f"no {name} parameter changed"


@pytest.mark.parametrize("objective_name", ["distill", "supervised"])
def test_loss_weights_reach_the_total(cohort: Cohort, bank: LabelBank, batch: CaseBatch, objective_name: str) -> None:
    """The total is the weighted sum of the reported task losses; a zero weight drops a task."""
    model = _model(cohort, ("wsi", "rna", "clinical"), {"adapter_depth": 1}).eval()
    diagnosis_only = {"survival": 0.0} | ({"general": 0.0} if objective_name == "distill" else {"diagnosis": 1.0})
    objective = build_objective(objective_name, bank, diagnosis_only)
    total, parts = objective(model, batch)
    assert parts["diagnosis"] > 0 and parts["survival"] > 0
    assert float(total.detach()) == pytest.approx(parts["diagnosis"], rel=1e-6)
    if isinstance(objective, SupervisedObjective):  # nothing of the survival head is trained
        total.backward()
        assert objective.bin_bias.grad is not None and not objective.bin_bias.grad.any()
        assert objective.log_scale.grad[1] == 0 and objective.log_scale.grad[0] != 0

    with torch.no_grad():
        total, parts = build_objective(objective_name, bank, {"diagnosis": 2.5, "survival": 0.5})(model, batch)
        default_total, default_parts = build_objective(objective_name, bank)(model, batch)
    expected = 2.5 * parts["diagnosis"] + 0.5 * parts["survival"] + parts.get("general", 0.0)
    assert float(total) == pytest.approx(expected, rel=1e-6)
    assert default_parts == pytest.approx(parts, rel=1e-6)  # weights change the total, not the task losses
    assert float(default_total) == pytest.approx(sum(default_parts.values()), rel=1e-6)


@pytest.mark.parametrize(
    ("objective_name", "weights", "message"),
    [
        ("distill", {"survivl": 1.0}, "survivl"),
        ("supervised", {"general": 1.0}, "general"),
        ("supervised", {"survival": 0.0, "diagnosis": 0.0}, "not all 0"),
        ("distill", {"diagnosis": -1.0}, ">= 0"),
        ("supervised", {"diagnosis": float("nan")}, "finite"),
    ],
    ids=["distill-typo", "supervised-general", "all-zero", "negative", "nan"],
)
def test_bad_loss_weights_are_input_errors(bank: LabelBank, objective_name: str, weights: dict[str, float], message: str) -> None:
    """A task the objective does not train, or weights that cannot train anything, are user errors."""
    with pytest.raises(InputError, match=message):
        build_objective(objective_name, bank, weights)


def test_objective_classes_and_unknown_name(bank: LabelBank) -> None:
    """``build_objective`` maps names to objectives and rejects unknown ones as input errors."""
    assert isinstance(build_objective("distill", bank), DistillObjective)
    assert isinstance(build_objective("supervised", bank), SupervisedObjective)
    with pytest.raises(InputError, match="unknown objective"):
        build_objective("contrastive", bank)


@pytest.mark.parametrize("encoder", ["longnet", "titan"])
def test_the_task_passes_run_as_one_forward_equal_to_one_forward_per_task(
    cohort: Cohort, bank: LabelBank, batch: CaseBatch, encoder: str
) -> None:
    """The reference code runs the model once per task token; here a case's tasks are rows of one
    batch (the frozen prefix shared), with the same embeddings, for either SLFM."""
    torch.manual_seed(0)
    encoder_config = TitanConfig.tiny if encoder == "titan" else SlideEncoderConfig.tiny
    config = ModalTuneConfig.tiny(
        encoder=encoder_config(in_dim=cohort.manifest.feature_dim),
        modality_inputs=modality_inputs(cohort, ["rna", "clinical"]),
        out_dim=OUT_DIM,
        adapter_depth=1,
    )
    model = ModalTuneModel(config).eval()
    objective = DistillObjective(bank)
    with torch.no_grad():
        batched = objective.evaluate_cases(model, [batch], with_loss=False)[0].embeddings
        for task in objective.tasks:
            alone = model(batch.features, batch.coords, torch.tensor([TASKS.index(task)]), batch.modalities)
            np.testing.assert_allclose(batched[task], alone[0].numpy(), rtol=0, atol=1e-5)
