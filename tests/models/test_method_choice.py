"""Choosing a baseline method: the run config's ``model.method`` and ``model.method_settings``,
and the study factor ``method`` whose levels are methods; everything a user can get wrong is
refused before Ray starts (config validation, ``modaltune plan``), naming method, key or
modality and listing the choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from modaltune.cli.main import main
from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.models import ModalTuneModel
from modaltune.models.methods import Abmil, method_names
from modaltune.sweeps.plan import build_plan
from modaltune.sweeps.spec import load_study_spec
from modaltune.text import TextEmbeddingCache, build_label_bank, build_text_encoder
from modaltune.train.config import load_train_config, validate_train_config
from modaltune.train.loop import build_train_module

STUDIES = Path(__file__).resolve().parents[2] / "sweeps" / "studies"
CHOICES = re.escape("choose from ['modaltune', 'linear_probe', 'finetune', 'snn', 'abmil', 'mcat', 'survpath', 'transmil']")


def test_the_default_method_is_modaltune_and_a_saved_baseline_config_reads_back_the_same() -> None:
    assert load_train_config(None).model.method == "modaltune"
    config = load_train_config(None, ["model.method=abmil", "model.method_settings={width: 16}", "model.modalities=[wsi, rna]"])
    assert config.model.method_settings.model_dump()["width"] == 16
    assert validate_train_config(config.model_dump()) == config  # what a run saves is what predict rebuilds


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.method=abmill"], f"unknown method 'abmill'; {CHOICES}"),
        (["model.method=abmil", "model.method_settings={widht: 8}"], r"method 'abmil': widht: Extra inputs .* \(its settings: \["),
        (["model.method=abmil", "model.method_settings={landmarks: 8}"], "method 'abmil': landmarks: Extra inputs"),  # transmil's
        (["model.method_settings={width: 8}"], "method 'modaltune' takes no method_settings"),
        (["model.method=snn"], "method 'snn' cannot consume modality 'wsi'"),
        (["model.method=abmil", "model.modalities=[rna]"], "method 'abmil' requires modality 'wsi'"),
        (["model.modalities=[rna]"], "containing 'wsi'"),
        (["model.method=linear_probe"], "method 'linear_probe' cannot consume modality 'rna'"),
        (["model.method=linear_probe", "model.modalities=[wsi]", "model.method_settings={width: 8}"], "takes no method_settings"),
    ],
)
def test_a_bad_method_choice_is_refused_naming_method_and_key(overrides: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_train_config(None, overrides)


def test_build_train_module_builds_the_chosen_method_and_counts_only_its_weights(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    train_ids, _ = cohort.split(0)
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), train_ids, out_dim=8, cache=TextEmbeddingCache(tmp_path))
    settings = "{width: 16, attention_dim: 8, cat: {width: 8}}"
    common = ["objective=supervised", "model.out_dim=8", "model.modalities=[wsi, rna]"]
    module = build_train_module(load_train_config(None, [*common, "model.method=abmil", f"model.method_settings={settings}"]), cohort, bank)
    assert isinstance(module.model, Abmil) and module.model.settings.width == 16
    assert module.model.prefix_depth == 0 and not module.model.frozen_parameters()  # nothing frozen: no prefix cache
    network = sum(p.numel() for p in module.model.parameters())
    assert sum(p.numel() for p in module.trainable_parameters()) == network + sum(p.numel() for p in module.objective.parameters())
    modaltune = build_train_module(load_train_config(None, common), cohort, bank)
    assert isinstance(modaltune.model, ModalTuneModel)
    assert sum(p.numel() for p in modaltune.trainable_parameters()) != sum(p.numel() for p in module.trainable_parameters())
    probe = build_train_module(load_train_config(None, [*common[:2], "model.method=linear_probe", "model.modalities=[wsi]"]), cohort, bank)
    assert isinstance(probe.model, ModalTuneModel) and probe.model.adapter is None and not probe.model.modality_encoders
    assert probe.model.prefix_depth == probe.model.encoder.depth  # its whole frozen encoder is the cached prefix
    counts = probe.model.parameter_counts()
    assert counts["trainable"] == counts["task_tokens"] + counts["head"]
    batch = {"features": torch.zeros(2, 5, cohort.manifest.feature_dim), "coords": torch.zeros(2, 5, 2, dtype=torch.long)}
    out = module.model(**batch, task=torch.tensor([0, 1]), inputs={"rna": torch.zeros(2, sum(module.model.modality_inputs["rna"]))})
    assert out.shape == (2, 8)


def _spec(tmp_path: Path, cohort: Path, factors: dict) -> Path:
    spec = yaml.safe_load((STUDIES / "tiny.yaml").read_text()) | {"cohort": str(cohort), "synthetic": None, "factors": factors}
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_study_crossing_methods_plans_one_cell_per_level(small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    levels = ["modaltune", "abmil", {"name": "transmil", "width": 16, "heads": 2}, {"name": "snn", "modalities": ["rna"]}]
    path = _spec(tmp_path, small_cohort, {"method": levels})
    code = main(["plan", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "4 cells x 1 trials = 4 trials" in out
    plan = build_plan(load_study_spec(path), tmp_path / "study")
    labels = ["modaltune", "abmil", "transmil(heads=2,width=16)", "snn[rna]"]  # settings as the YAML file lists them
    assert [cell.levels["method"] for cell in plan.cells] == labels
    configs = [plan.train_config(cell, {"optim.lr": 0.004}, plan.repetitions[0]).model for cell in plan.cells]
    every = ["wsi", "rna", "clinical"]  # the model section's default: "-cat" for abmil and transmil
    assert [(c.method, c.modalities) for c in configs] == [("modaltune", every), ("abmil", every), ("transmil", every), ("snn", ["rna"])]
    assert configs[2].method_settings.model_dump()["heads"] == 2


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (["modaltune", "abmill"], f"factors.method: level 'abmill': unknown method 'abmill'; {CHOICES}"),
        ([{"name": "abmil", "landmarks": 4}], "factors.method: level .*: method 'abmil': landmarks: Extra inputs are not permitted"),
    ],
)
def test_modaltune_plan_refuses_an_unknown_method_or_setting(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: list, message: str
) -> None:
    code = main(["plan", str(_spec(tmp_path, small_cohort, {"method": levels}))])
    _, err = capsys.readouterr()
    assert code == 2
    assert any(re.search(message, line) for line in err.splitlines()), err


@pytest.mark.parametrize(
    ("factors", "message"),
    [
        ({"method": ["modaltune", "snn"], "modalities": [["wsi", "rna"]]}, "c001: model: .*method 'snn' cannot consume modality 'wsi'"),
        ({"method": ["modaltune", {"name": "abmil", "modalities": ["rna"]}]}, "c001: model: .*method 'abmil' requires modality 'wsi'"),
    ],
)
def test_a_cell_whose_method_cannot_take_its_modalities_is_refused_before_ray_starts(
    small_cohort: Path, tmp_path: Path, factors: dict, message: str
) -> None:
    """``build_plan`` is what the study runs before it starts Ray (sweeps/study.py); every cell x
    modalities combination is validated there."""
    with pytest.raises(InputError, match=message):
        build_plan(load_study_spec(_spec(tmp_path, small_cohort, factors)), tmp_path / "study")
    assert not (tmp_path / "study").exists()


def test_every_registered_method_is_a_choice() -> None:
    assert method_names()[0] == "modaltune" and len(method_names()) == len(set(method_names()))
