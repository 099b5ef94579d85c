"""Extension points by name: each registry is what its validator accepts and what its builder
makes, a newly registered entry works through the same seam, and an unknown name lists them all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from ray.tune.schedulers import TrialScheduler

from modaltune.errors import InputError
from modaltune.metrics import METRICS, CaseMetric, evaluate_predictions
from modaltune.models import SLIDE_ENCODER_PRESETS, EncoderConfig
from modaltune.objectives import OBJECTIVES, build_objective
from modaltune.registry import Registry, UnknownChoiceError
from modaltune.sweeps.cell_schedulers import CELL_SCHEDULERS, CellRace
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.factors import FACTORS, Level
from modaltune.sweeps.samplers import SAMPLERS, make_sampler
from modaltune.sweeps.spec import SchedulerSpec, SearchSpec, load_study_spec
from modaltune.train.config import ModelSection, TrainConfig


def test_an_unknown_name_is_an_input_error_that_lists_every_choice() -> None:
    registry: Registry[int] = Registry("widget")
    registry.register("a")(1)
    registry.register("b")(2)
    assert registry["b"] == 2 and registry.names() == ["a", "b"]
    with pytest.raises(UnknownChoiceError, match=r"unknown widget 'c'; choose from \['a', 'b'\]") as caught:
        registry["c"]
    assert isinstance(caught.value, InputError)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(3)
    with registry.registered("c", 3):
        assert registry["c"] == 3
    assert "c" not in registry


def _search_for(sampler: str) -> SearchSpec:
    """A search each sampler takes: two metrics for a multi-objective one, categorical params for a grid."""
    choice = SAMPLERS[sampler]
    metrics = [{"name": "c_index"}, {"name": "balanced_accuracy"}][: max(choice.min_objectives, 1)]
    param = {"type": "categorical", "choices": [1e-4, 1e-3]} if choice.categorical_only else {"type": "loguniform", "low": 1e-4, "high": 1e-2}
    return SearchSpec(sampler=sampler, metrics=metrics, params={"optim.lr": param})


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_registered_sampler_is_accepted_and_proposes_a_trial(sampler: str) -> None:
    search = _search_for(sampler)
    study = optuna.create_study(sampler=make_sampler(search), directions=["maximize"] * len(search.metrics))
    trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)} if not SAMPLERS[sampler].categorical_only
                      else {"optim.lr": optuna.distributions.CategoricalDistribution([1e-4, 1e-3])})
    assert 1e-4 <= trial.params["optim.lr"] <= 1e-2


def test_an_unknown_sampler_lists_the_registered_ones_instead_of_becoming_another() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'hyperopt'") as caught:
        SearchSpec(sampler="hyperopt")
    assert all(name in str(caught.value) for name in SAMPLERS.names())


@pytest.mark.parametrize("name", CELL_SCHEDULERS.names())
def test_every_registered_scheduler_is_accepted_and_made_for_a_cell(name: str) -> None:
    rule = SchedulerSpec(type=name).rule()
    assert not rule.stops_trials or isinstance(rule.build(CellRace("cv_c_index", "max", "repetitions_done", 4)), TrialScheduler)


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_every_registered_objective_is_accepted_by_the_run_config(name: str) -> None:
    assert TrainConfig(objective=name).objective == name
    assert OBJECTIVES[name].name == name


def test_an_unknown_objective_lists_the_registered_ones() -> None:
    with pytest.raises(InputError, match="unknown objective 'contrastive'; choose from"):
        build_objective("contrastive", bank=None)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SLIDE_ENCODER_PRESETS.names())
def test_every_slide_encoder_preset_is_accepted_and_built_for_the_cohort_width(name: str) -> None:
    encoder = ModelSection(encoder=name, modalities=["wsi"]).build({}, feature_dim=48, tile_size_px=512).encoder
    assert isinstance(encoder, EncoderConfig) and encoder.in_dim == 48 and encoder.tile_size == 512
    assert encoder.build().dim == encoder.dim
    with pytest.raises(ValueError, match="unknown slide encoder preset 'uni'; choose from"):
        ModelSection(encoder="uni")
    with pytest.raises(ValueError, match=rf"encoder_overrides \['dilation'\] are not settings of preset '{name}'"):
        ModelSection(encoder=name, encoder_overrides={"dilation": 2})


def test_a_registered_factor_is_a_spec_factor_with_its_own_labels_and_overrides(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "cohort": str(tmp_path / "cohort"), "folds": 2, "seeds": [0],
        "factors": {"adapter_heads": [4, 8], "modalities": [["wsi"]]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(InputError, match="unknown factor 'adapter_heads'"):
        load_study_spec(path)

    def heads(where: str, value: Any) -> Level:
        return Level(f"heads={value}", {"model": {"adapter_heads": value}})

    with FACTORS.registered("adapter_heads", heads):
        spec = load_study_spec(path)
        cells = design_cells(spec.factors, spec.design)
    assert [cell.levels["adapter_heads"] for cell in cells] == ["heads=4", "heads=8"]
    assert cells[1].overrides[0] == {"model": {"adapter_heads": 8}}


def test_a_registered_metric_is_scored_per_cancer_type_and_can_be_a_study_goal() -> None:
    rng = np.random.default_rng(0)
    predictions = pd.DataFrame({
        "case_id": [f"c{i}" for i in range(8)], "cohort": ["BRCA"] * 4 + ["NSCLC"] * 4,
        "subtype": ["a", "b"] * 4, "predicted_subtype": ["a", "b", "b", "b"] * 2,
        "time": rng.uniform(1, 10, 8), "event": [1, 0] * 4, "risk": rng.normal(size=8),
        "class_probabilities": [np.array([0.6, 0.4])] * 8,
    })
    accuracy = CaseMetric("max", lambda group, classes: float((group["subtype"] == group["predicted_subtype"]).mean()))
    with METRICS.registered("accuracy", accuracy):
        scores = evaluate_predictions(predictions, {"BRCA": ["a", "b"], "NSCLC": ["a", "b"]})
        assert SearchSpec(metrics=[{"name": "accuracy"}]).primary.direction == "max"
    assert scores["BRCA/accuracy"] == 0.75 and scores["accuracy"] == 0.75
    assert "accuracy" not in evaluate_predictions(predictions, {"BRCA": ["a", "b"], "NSCLC": ["a", "b"]})


def test_every_modality_has_a_cohort_side_and_a_model_side() -> None:
    """A modality is chosen by one name in both registries; the spec validator offers exactly those."""
    from modaltune.data.modalities import COHORT_MODALITIES
    from modaltune.models import MODALITY_ENCODERS

    assert sorted(COHORT_MODALITIES.names()) == sorted(MODALITY_ENCODERS.names()) == ["clinical", "mutations", "rna"]
    with pytest.raises(ValueError, match=r"distinct entries of \['wsi', 'rna', 'clinical', 'mutations'\]"):
        ModelSection(modalities=["wsi", "methylation"])
