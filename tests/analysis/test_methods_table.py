"""The methods table (the ModalTune paper's Table 1) on synthetic study tables with known effects."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from modaltune.analysis.ablation import compare_to_reference, repetition_scores
from modaltune.analysis.inference import FoldDesign
from modaltune.analysis.methods_table import methods_table, parameters_text
from modaltune.analysis.report import analyze_study
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec
from modaltune.train.checkpoints import ADAPTER_FILE, CONFIG_FILE, STATE_FILE

FOLDS, SEEDS = 5, [0, 1]
DESIGN = FoldDesign(folds=FOLDS, cv_folds=FOLDS)
METHODS: list[Any] = ["modaltune", "linear_probe", {"name": "abmil", "modalities": ["wsi", "rna"]}]
# planted per method: C-index gain over modaltune (abmil +0.08, linear_probe none), balanced accuracy, size, trial hours
C_GAIN = {"modaltune": 0.0, "linear_probe": 0.0, "abmil[wsi+rna]": 0.08}
ACCURACY = {"modaltune": 0.70, "linear_probe": 0.75, "abmil[wsi+rna]": 0.60}
TRAINABLE = {"modaltune": 90_000, "linear_probe": 1_000, "abmil[wsi+rna]": 40_000}
HOURS = {"modaltune": 0.5, "linear_probe": 0.1, "abmil[wsi+rna]": 0.2}


def _spec(cohort: str = "/nowhere", folds: int = FOLDS) -> StudySpec:
    return StudySpec.model_validate({
        "name": "methods", "cohort": cohort, "folds": folds, "seeds": SEEDS, "factors": {"method": METHODS},
        "search": {"trials_per_cell": 2, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
    })


def _tables(spec: StudySpec, per_cancer: bool = True, trainable: bool = True, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per method two trials, the second worse; fold effects shared by every method (pairing removes them)."""
    rng = np.random.default_rng(seed)
    folds = spec.fold_indices
    fold_effect = {f: rng.normal(0, 0.03) for f in folds}
    results, trials = [], []
    for cell in design_cells(spec.factors, spec.design):
        method = cell.levels["method"]
        for k, penalty in enumerate((0.0, 0.05)):
            trial_id = f"{cell.id}_{k}"
            values = []
            for fold, run_seed in itertools.product(folds, SEEDS):
                value = 0.60 + C_GAIN[method] - penalty + fold_effect[fold] + rng.normal(0, 0.01)
                values.append(value)
                row = {
                    "trial_id": trial_id, "cell": cell.id, **cell.levels, "fold": fold, "seed": run_seed, "epoch": 0,
                    "val_c_index": value, "val_balanced_accuracy": ACCURACY[method] - penalty + rng.normal(0, 0.005),
                    "val_loss": 1.0, "val_macro_auc": 0.7, "num_workers": 2, "cpus_per_worker": 1.0,
                }
                if per_cancer:
                    row |= {"val_BRCA/c_index": value + 0.02, "val_RCC/c_index": value - 0.02,
                            "val_BRCA/balanced_accuracy": row["val_balanced_accuracy"], "val_RCC/balanced_accuracy": 0.5}
                if trainable:
                    row["trainable_parameters"] = TRAINABLE[method]
                results.append(row)
            trials.append({
                "trial_id": trial_id, "cell": cell.id, **cell.levels, "state": "finished", "cv_c_index": float(np.mean(values)),
                "time_total_s": HOURS[method] * 3600,
            })
    return pd.DataFrame(results), pd.DataFrame(trials)


def test_one_row_per_method_per_cancer_columns_and_the_best_per_column_marked() -> None:
    spec = _spec()
    table = methods_table(spec, *_tables(spec), ["c_index", "balanced_accuracy"], DESIGN)
    assert list(table.rows.index) == ["modaltune", "linear_probe", "abmil[wsi+rna]"] and table.reference == "modaltune"
    assert list(table.rows["reference"]) == [True, False, False] and table.per_cancer
    assert [c.key for c in table.columns] == [
        "BRCA/c_index", "BRCA/balanced_accuracy", "RCC/c_index", "RCC/balanced_accuracy", "overall/c_index", "overall/balanced_accuracy",
    ]
    best = {c.key: list(table.rows.index[table.rows[f"{c.key}_best"]]) for c in table.columns}
    assert best["overall/c_index"] == best["BRCA/c_index"] == best["RCC/c_index"] == ["abmil[wsi+rna]"]
    assert best["overall/balanced_accuracy"] == best["BRCA/balanced_accuracy"] == ["linear_probe"]
    assert best["RCC/balanced_accuracy"] == ["modaltune", "linear_probe", "abmil[wsi+rna]"]  # a tie marks every method
    assert table.rows.loc["abmil[wsi+rna]", "overall/c_index_mean"] == pytest.approx(0.68, abs=0.02)
    assert (table.rows["overall/c_index_folds"] == FOLDS).all() and (table.rows["overall/c_index_std"] > 0).all()


def test_paired_differences_are_compare_to_reference_and_find_the_planted_one_only() -> None:
    spec = _spec()
    results, trials = _tables(spec)
    rows = methods_table(spec, results, trials, ["c_index"], DESIGN).rows
    expected = compare_to_reference(spec, repetition_scores(spec, results, trials), "c_index", DESIGN).set_index("level")
    for method in ("linear_probe", "abmil[wsi+rna]"):
        for column in ("difference", "ci_low", "ci_high", "p_holm", "mdd"):
            assert rows.loc[method, f"c_index_{column}"] == expected.loc[method, column]
    assert rows.loc["abmil[wsi+rna]", "c_index_difference"] == pytest.approx(0.08, abs=0.01)
    assert rows.loc["abmil[wsi+rna]", "c_index_p_holm"] < 0.05  # planted: detected
    assert rows.loc["linear_probe", "c_index_p_holm"] >= 0.05  # null: not
    assert math.isnan(rows.loc["modaltune", "c_index_difference"])  # the reference is not tested against itself


def test_cost_and_trainable_parameters_per_method() -> None:
    spec = _spec()
    rows = methods_table(spec, *_tables(spec), ["c_index"], DESIGN).rows
    for method, hours in HOURS.items():  # 2 trials x hours x 2 workers x 1 CPU
        assert rows.loc[method, "trials"] == 2 and rows.loc[method, "cpu_hours"] == pytest.approx(2 * hours * 2)
    assert (rows["gpu_hours"] == 0).all()
    assert dict(rows["trainable_min"]) == dict(rows["trainable_max"]) == TRAINABLE
    assert parameters_text(1_000, 1_000) == "1,000" and parameters_text(1_024, 4_096) == "1,024–4,096"
    unrecorded = methods_table(spec, *_tables(spec, trainable=False), ["c_index"], DESIGN).rows
    assert unrecorded["trainable_min"].isna().all() and parameters_text(math.nan, math.nan) == "n/a"


def test_without_per_cancer_metrics_the_overall_columns_stand() -> None:
    spec = _spec()
    table = methods_table(spec, *_tables(spec, per_cancer=False), ["c_index", "balanced_accuracy", "loss"], DESIGN)
    assert not table.per_cancer and [c.key for c in table.columns] == ["overall/c_index", "overall/balanced_accuracy"]
    assert table.metrics == ["c_index", "balanced_accuracy"]  # loss is no case metric: left out


def _study_folder(root: Path, cohort: Path) -> Path:
    """A finished study's folder as the study writes it, with a method factor (4 folds of the cohort)."""
    study = root / "methods"
    layout = StudyLayout(study)
    study.mkdir(parents=True)
    spec = _spec(str(cohort), folds=4)
    layout.spec.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    results, trials = _tables(spec)
    for trial in trials["trial_id"]:
        checkpoint = layout.runs / trial / "train" / "checkpoint_000000"
        checkpoint.mkdir(parents=True)
        torch.save({"adapter.weight": torch.zeros(10)}, checkpoint / ADAPTER_FILE)
        (checkpoint / STATE_FILE).write_text(json.dumps({"epoch": 0}))
        (checkpoint / CONFIG_FILE).write_text(json.dumps({"train": {"fold": 0, "seed": 0}}))
    results.assign(time_total_s=1.0).to_parquet(layout.results)
    trials.to_parquet(layout.trials)
    return study


def test_analyze_writes_the_methods_table_into_the_report(small_cohort: Path, tmp_path: Path) -> None:
    report = analyze_study(_study_folder(tmp_path, small_cohort), n_boot=10)
    text = report.markdown.read_text()
    section = text[text.index("## Methods table (search stage)"):text.index("## Model selection")]
    tables = [[line for line in block.splitlines() if line.startswith("| ")] for block in section.split("\n\n") if block.startswith("|")]
    scores, versus = ({line.split("|")[1].strip(): line for line in table[1:]} for table in tables)
    assert "BRCA c_index" in tables[0][0] and "overall balanced_accuracy" in tables[0][0]
    # bold: abmil's C-index in every column, linear_probe's balanced accuracy, all three on RCC's tied balanced accuracy
    assert {name: line.count("**") // 2 for name, line in scores.items()} == {"modaltune*": 1, "linear_probe": 3, "abmil[wsi+rna]": 4}
    assert "c_index vs modaltune" in tables[1][0] and "trainable parameters" in tables[1][0] and "cpu hours" in tables[1][0]
    assert "reference" in versus["modaltune*"] and "90,000" in versus["modaltune*"] and "40,000" in versus["abmil[wsi+rna]"]
    assert versus["abmil[wsi+rna]"].split("|")[2].strip().startswith("+0.0")  # its planted C-index gain
