"""Extension points by name: each registry is what its validator accepts and what its builder
makes, a newly registered entry works through the same seam, and an unknown name lists them all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from pydantic import Field
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from torch import nn

from modaltune.data import Cohort
from modaltune.data.feature_formats import FEATURE_FORMATS, H5Features, SlideFileInfo, detect_format
from modaltune.data.tile_geometry import TileGeometry
from modaltune.errors import InputError
from modaltune.metrics import METRICS, CaseMetric, evaluate_predictions
from modaltune.models import (
    MODALITY_ENCODERS,
    SLIDE_ENCODER_PRESETS,
    EncoderConfig,
    ModalityEncoderEntry,
    ModalTuneModel,
    VectorEncoder,
)
from modaltune.models.methods import METHOD_NETWORKS, MethodNetwork, MethodSettings, PublishedSize
from modaltune.models.model_settings import ModelSettings
from modaltune.objectives import OBJECTIVES, build_objective
from modaltune.registry import EntrySettings, Registry, UnknownChoiceError
from modaltune.sweeps.cell_schedulers import CELL_SCHEDULERS, CellRace, CellScheduler, RuleSettings
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.factors import FACTORS, Level
from modaltune.sweeps.samplers import SAMPLERS, make_sampler
from modaltune.sweeps.spec import SchedulerSpec, SearchSpec, load_study_spec
from modaltune.text import TEXT_ENCODERS, Prompt, TextEncoder, TextEncoderEntry, build_label_bank, build_text_encoder
from modaltune.text.encoders import known_text_encoders
from modaltune.train.config import TrainConfig, load_train_config


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
    categorical = {"type": "categorical", "choices": [1e-4, 1e-3]}
    param = categorical if choice.categorical_only else {"type": "loguniform", "low": 1e-4, "high": 1e-2}
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
    encoder = ModelSettings(encoder=name, modalities=["wsi"]).build({}, feature_dim=48, tile_size_px=512).encoder
    assert isinstance(encoder, EncoderConfig) and encoder.in_dim == 48 and encoder.tile_size == 512
    assert encoder.build().dim == encoder.dim
    with pytest.raises(ValueError, match="unknown slide encoder preset 'uni'; choose from"):
        ModelSettings(encoder="uni")
    with pytest.raises(ValueError, match=rf"encoder_overrides \['dilation'\] are not settings of preset '{name}'"):
        ModelSettings(encoder=name, encoder_overrides={"dilation": 2})


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
        ModelSettings(modalities=["wsi", "methylation"])


# A new entry with its own settings is one class in one place, for every registry whose entries
# have options: registered here for one test, chosen by name through the seam users use, its
# settings validated by the entry (a bad value refused naming the setting).


class _MethylationSettings(EntrySettings):
    methylation_tokens: int = Field(default=2, ge=1)


class _Methylation(ModalityEncoderEntry):
    Settings = _MethylationSettings
    settings: _MethylationSettings

    @property
    def n_tokens(self) -> int:
        return self.settings.methylation_tokens

    def build(self, segments: tuple[int, ...], dim: int) -> VectorEncoder:
        return _TokensEncoder(sum(segments), self.n_tokens, dim)


class _TokensEncoder(VectorEncoder):
    def __init__(self, width: int, n_tokens: int, dim: int) -> None:
        super().__init__(width, dim)
        self.n_tokens, self.repeat = n_tokens, n_tokens

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return super().encode(values).expand(-1, self.repeat, -1)


def test_a_registered_modality_owns_its_settings_in_the_model_section() -> None:
    with MODALITY_ENCODERS.registered("methylation", _Methylation):
        config = load_train_config(None, ["model.modalities=[wsi, methylation]", "model.methylation_tokens=3"])
        assert config.model.model_dump()["methylation_tokens"] == 3
        reloaded = TrainConfig.model_validate(config.model_dump())  # as a worker, export and predict read the saved config
        assert reloaded.model.modality_settings["methylation"] == _MethylationSettings(methylation_tokens=3)
        built = config.model.build({"methylation": (10,)}, feature_dim=32, tile_size_px=256)
        model = ModalTuneModel(built).eval()
        assert built.n_modality_tokens == 1 + 3 and model.modality_encoders["methylation"].n_tokens == 3
        features, coords = torch.randn(2, 9, 32), torch.randint(0, 4096, (2, 9, 2))
        assert model(features, coords, torch.tensor([0, 1]), {"methylation": torch.randn(2, 10)}).shape == (2, 32)
        with pytest.raises(InputError, match=r"modality 'methylation': methylation_tokens: Input should be greater than or equal to 1"):
            load_train_config(None, ["model.methylation_tokens=0"])
    with pytest.raises(InputError, match="methylation_tokens"):  # no such key once the entry is gone
        load_train_config(None, ["model.methylation_tokens=3"])


def test_the_rna_settings_belong_to_the_rna_entry_and_a_spec_still_writes_them_flat() -> None:
    model = load_train_config(None, ["model.n_rna_tokens=2", "model.rna_hidden=8"]).model
    assert model.modality_entry("rna").n_tokens == 2 and model.model_dump()["rna_hidden"] == 8
    with pytest.raises(InputError, match=r"modality 'rna': n_rna_tokens: Input should be greater than or equal to 1"):
        load_train_config(None, ["model.n_rna_tokens=0"])


class _ConstantText(TextEncoder):
    def __init__(self, name: str, dim: int) -> None:
        self.name, self.revision, self.dim = name, "constant", dim

    def encode(self, prompts: Sequence[Prompt]) -> np.ndarray:
        return np.ones((len(prompts), self.dim), np.float32)


class _ConstantSettings(EntrySettings):
    dim: int = Field(ge=1)


class _Constant(TextEncoderEntry):
    Settings = _ConstantSettings
    settings: _ConstantSettings
    form = "constant:DIM"

    @classmethod
    def parse(cls, argument: str) -> dict[str, Any]:
        return {"dim": argument}

    def build(self, labels: Any) -> TextEncoder:
        return _ConstantText(self.spec, self.settings.dim)


def test_a_registered_text_encoder_is_chosen_by_name_with_its_own_settings(small_cohort: Path) -> None:
    assert known_text_encoders()[:3] == ["minilm", "random-minilm", "onehot"]
    with TEXT_ENCODERS.registered("constant", _Constant):
        assert TrainConfig(text_encoder="constant:6").text_encoder == "constant:6" and "constant:DIM" in known_text_encoders()
        cohort = Cohort(small_cohort)
        bank = build_label_bank(cohort, build_text_encoder("constant:6"), cohort.split(0)[0], out_dim=4)
        assert bank.out_dim == 4
        with pytest.raises(ValueError, match=r"text encoder 'constant:0': dim: Input should be greater than or equal to 1"):
            TrainConfig(text_encoder="constant:0")
    with pytest.raises(ValueError, match="unknown text encoder 'constant:6'"):
        TrainConfig(text_encoder="constant:6")


class _ScaledSettings(EntrySettings):
    coords_scale: float = Field(default=1.0, gt=0)


class _EmbeddingsH5(H5Features):
    """Files with ``embeddings`` and ``coords`` in units of ``coords_scale`` pixels."""

    name = "embeddings-h5"
    description = "h5 with 'embeddings'"
    features_dataset = "embeddings"
    Settings = _ScaledSettings
    settings: _ScaledSettings

    def inspect(self, slide_id: str) -> SlideFileInfo:
        info = super().inspect(slide_id)
        return SlideFileInfo(info.n_tiles, info.feature_dim, info.n_coords, TileGeometry())

    def read(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        features, coords = super().read(slide_id)
        return features, coords * self.settings.coords_scale


def test_a_registered_feature_format_is_detected_and_reads_with_its_own_settings(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "s1.h5", "w") as handle:
        handle["embeddings"] = np.ones((3, 4), np.float32)
        handle["coords"] = np.arange(6).reshape(3, 2)
    with pytest.raises(InputError, match="not a feature file of a known format"):
        detect_format(tmp_path, ["s1"])
    with FEATURE_FORMATS.registered(_EmbeddingsH5.name, _EmbeddingsH5):
        source = detect_format(tmp_path, ["s1"], settings={"coords_scale": 2.0})
        assert isinstance(source, _EmbeddingsH5) and source.inspect("s1").n_tiles == 3
        np.testing.assert_array_equal(source.read("s1")[1], np.arange(6).reshape(3, 2) * 2.0)
        assert "embeddings-h5" in sorted(FEATURE_FORMATS)
        with pytest.raises(InputError, match=r"feature format 'embeddings-h5': coords_scale: Input should be greater than 0"):
            detect_format(tmp_path, ["s1"], "embeddings-h5", settings={"coords_scale": 0})
    assert "embeddings-h5" not in FEATURE_FORMATS


class _HalvingSettings(RuleSettings):
    rungs: int = Field(default=2, ge=1)


class _Halving(CellScheduler):
    Settings = _HalvingSettings

    def build(self, race: CellRace) -> TrialScheduler:
        return FIFOScheduler()


def test_a_registered_scheduler_takes_its_own_settings_in_a_study_spec(tmp_path: Path) -> None:
    raw: dict[str, Any] = {"cohort": str(tmp_path / "cohort"), "folds": 2, "scheduler": {"type": "halving", "rungs": 3}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with CELL_SCHEDULERS.registered("halving", _Halving):
        rule = load_study_spec(path).scheduler.rule()
        assert isinstance(rule, _Halving) and rule.settings == _HalvingSettings(rungs=3)
        path.write_text(yaml.safe_dump(raw | {"scheduler": {"type": "halving", "rungs": 0}}), encoding="utf-8")
        with pytest.raises(InputError, match=r"scheduler 'halving': rungs: Input should be greater than or equal to 1"):
            load_study_spec(path)


class _MeanPoolSettings(MethodSettings):
    width: int = Field(default=8, ge=1)


class _MeanPool(MethodNetwork):
    name = "mean-pool"
    consumes = frozenset({"wsi"})
    requires = frozenset({"wsi"})
    Settings = _MeanPoolSettings
    settings: _MeanPoolSettings
    published: ClassVar[PublishedSize] = PublishedSize(parameters=0)

    def build(self) -> int:
        self.body = nn.Linear(self.in_dim, self.settings.width)
        return self.settings.width

    def embed(self, features: torch.Tensor, coords: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.body(features).mean(dim=1)


def test_a_registered_method_declares_its_settings_as_every_entry_does() -> None:
    with METHOD_NETWORKS.registered("mean-pool", _MeanPool):
        settings = METHOD_NETWORKS.settings("mean-pool", {"width": 4})
        network = METHOD_NETWORKS["mean-pool"](settings, in_dim=6, modality_inputs={}, n_tasks=3, out_dim=2)
        assert network(torch.randn(2, 5, 6), torch.zeros(2, 5, 2), torch.tensor([0, 2])).shape == (2, 2)
        with pytest.raises(InputError, match=r"method 'mean-pool': width: Input should be greater than or equal to 1"):
            METHOD_NETWORKS.settings("mean-pool", {"width": 0})
        with pytest.raises(InputError, match=r"method 'mean-pool': depth: Extra inputs are not permitted \(its settings: \['width'\]\)"):
            METHOD_NETWORKS.settings("mean-pool", {"depth": 2})
