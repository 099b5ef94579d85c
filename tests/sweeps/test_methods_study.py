"""A study whose ``method`` factor crosses ModalTune (the reference) with linear probing and an
ABMIL baseline of its own (smaller) size, run as users run it: every method's cell trains on the
same validation cases, reports its own trainable parameters, is recorded at its own size, and the
report lays the methods out side by side (issue #36)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from modaltune.data import Cohort
from modaltune.models import ModalTuneModel
from modaltune.sweeps.spec import load_study_spec
from modaltune.train.config import load_train_config
from tests.studyproc import REPO, finish_study, start_study, write_spec

pytestmark = pytest.mark.slow

ABMIL = {"name": "abmil", "modalities": ["wsi"], "width": 16, "attention_dim": 8, "resources": {"cpus_per_worker": 0.25}}
METHODS = ["modaltune", {"name": "linear_probe", "modalities": ["wsi"]}, ABMIL]
LABELS = ["modaltune", "linear_probe[wsi]", "abmil[wsi](attention_dim=8,width=16)"]
MODALTUNE, PROBE, SMALL_ABMIL = LABELS


def test_a_study_crossing_methods_trains_each_at_its_own_size_on_the_same_cases_and_tables_them(tmp_path: Path) -> None:
    tiny = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text())
    spec_path = write_spec(tmp_path / "methods.yaml", "tiny", {
        "cohort": str(tmp_path / "cohort"), "factors": {"method": METHODS}, "max_concurrent": 3,
        "train": tiny["train"] | {"optim": {"lr": 0.004, "epochs": 2, "warmup_epochs": 1}},
    })
    code, output = finish_study(start_study(spec_path, tmp_path / "studies"), timeout=900)
    assert code == 0, output[-4000:]
    _check_outputs(tmp_path / "studies" / "methods", spec_path, tmp_path / "cohort", tiny)


def _check_outputs(study: Path, spec_path: Path, cohort_dir: Path, tiny: dict) -> None:
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 3 and set(trials["state"]) == {"finished"}
    results = pd.read_parquet(study / "results.parquet")
    assert sorted(results["method"].unique()) == sorted(LABELS)
    assert results.groupby("method")["epoch"].nunique().eq(2).all()

    # Every method scored on the same folds and, within a fold, the same validation cases.
    assert results.groupby("method")["fold"].agg(frozenset).nunique() == 1
    predictions = pd.concat(
        pd.read_parquet(p, columns=["case_id", "fold", "cell"]) for p in (study / "predictions").glob("*/*/epoch_*.parquet")
    )
    per_cell = predictions.groupby(["fold", "cell"])["case_id"].agg(frozenset)
    assert per_cell.index.get_level_values("cell").nunique() == 3 and per_cell.groupby(level="fold").nunique().eq(1).all()

    # Each method's trainable weights: its own network's plus the (shared) objective's.
    trainable = results.groupby("method")["trainable_parameters"].agg(set)
    assert trainable.map(len).eq(1).all()
    reported = {method: next(iter(counts)) for method, counts in trainable.items()}
    spec = load_study_spec(spec_path)
    cohort = Cohort(cohort_dir)
    model = tiny["train"]["model"]
    overrides = [f"model.{key}={value}" for key, value in model.items()] + ["objective=supervised"]
    abmil = load_train_config(None, [*overrides, "model.method=abmil", "model.modalities=[wsi]",
                                     "model.method_settings={width: 16, attention_dim: 8}"]).model
    network = {SMALL_ABMIL: abmil.method_network(cohort).parameter_counts()["trainable"]}
    for label, extra in ((MODALTUNE, []), (PROBE, ["model.method=linear_probe", "model.modalities=[wsi]"])):
        settings = load_train_config(None, [*overrides, *extra]).model
        network[label] = ModalTuneModel(settings.for_cohort(cohort)).parameter_counts()["trainable"]
    objective = {label: reported[label] - network[label] for label in LABELS}
    assert len(set(objective.values())) == 1 and objective[SMALL_ABMIL] >= 0, (reported, network)
    assert reported[PROBE] < reported[MODALTUNE] and reported[SMALL_ABMIL] != reported[MODALTUNE]

    # Each cell recorded (and is billed) at its own level's size: abmil's smaller cpus_per_worker.
    assert spec.resources.cpus_per_worker == 0.5
    recorded = results.groupby("method")[["num_workers", "cpus_per_worker", "gpus_per_worker"]].agg(set)
    assert recorded["cpus_per_worker"].to_dict() == {MODALTUNE: {0.5}, PROBE: {0.5}, SMALL_ABMIL: {0.25}}
    assert recorded["num_workers"].map(lambda s: s == {1}).all() and recorded["gpus_per_worker"].map(lambda s: s == {0.0}).all()
    # ... and trained at it: the run config each trial's checkpoints carry (what Ray Train sized its worker group from).
    trained = results.groupby("trial_id")["method"].first()
    for trial_id, method in trained.items():
        saved = (study / "trials" / trial_id / "train").glob("checkpoint_*/train_config.json")
        scaling = [json.loads(path.read_text())["train"]["scaling"] for path in saved]
        sizes = {(s["num_workers"], s["cpus_per_worker"], s["use_gpu"]) for s in scaling}
        assert sizes == {(1, 0.25 if method == SMALL_ABMIL else 0.5, False)}, (method, scaling)

    # The report's methods table: one row per method, the reference marked.
    report = (study / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Methods table" in report
    section = report.split("## Methods table", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    for label in LABELS:
        shown = f"{label}*" if label == MODALTUNE else label
        assert sum(line.startswith(f"| {shown} ") for line in rows) == 2, section  # the scores table and the versus table
    assert "| modaltune " not in section and f"{reported[SMALL_ABMIL]:,}" in section
