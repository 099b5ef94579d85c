"""Whole studies through the real CLI on an embedded Ray: the shipped smoke study, and a resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from modaltune.cli.main import main as cli_main
from modaltune.data import Cohort
from modaltune.data.labels import default_labels, save_labels
from modaltune.predict import ExportedModel, predict_member
from tests.browser import loaded_images, screenshot
from tests.feature_files import tcga_shaped
from tests.studyproc import finish_study, markers, start_study, write_spec

pytestmark = pytest.mark.slow


def _spec(tmp_path: Path, name: str, edits: dict[str, Any]) -> Path:
    return write_spec(tmp_path / f"{name}.yaml", "smoke", {"cohort": str(tmp_path / "cohort")} | edits)


@dataclass(frozen=True)
class Smoke:
    root: Path
    spec: Path
    study: Path
    code: int
    output: str


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    """The shipped smoke study, run once for this module (it ends with its report and model)."""
    root = tmp_path_factory.mktemp("smoke")
    spec = _spec(root, "smoke", {})
    code, output = finish_study(start_study(spec, root / "studies"), timeout=900)
    return Smoke(root, spec, root / "studies" / "smoke", code, output)


def test_smoke_study_end_to_end(smoke: Smoke) -> None:
    """2 adapter depths x 2 modality sets x 2 text encoders, 2 folds: every cell x fold, sane
    metrics, and the planted RNA effect recovered in the direction truth.json gives."""
    tmp_path, spec, study, code, output = smoke.root, smoke.spec, smoke.study, smoke.code, smoke.output
    assert code == 0, output[-4000:]
    assert "results:" in output and "c_index" in output

    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 8 and set(trials["state"]) == {"finished"}
    results = pd.read_parquet(study / "results.parquet")
    assert not results.duplicated(["trial_id", "fold", "seed", "epoch"]).any()
    epochs = yaml.safe_load(spec.read_text())["train"]["optim"]["epochs"]
    per_cell = results.groupby(["cell", "fold"])["epoch"].nunique()
    assert len(per_cell) == 8 * 2 and (per_cell == epochs).all()
    for column in ("val_c_index", "val_balanced_accuracy", "val_macro_auc"):
        assert results[column].between(0, 1).all(), column
    for column in ("adapter_depth", "modalities", "llm", "optim.lr", "epoch_time_s", "time_total_s", "num_workers", "cpus_per_worker"):
        assert results[column].notna().all(), column

    # Label banks: one per text encoder x fold, computed before the trials.
    assert len(list((study / "label_banks").glob("*.npz"))) == 2 * 2
    # Per-slide predictions of every trial x repetition x epoch, tagged with their trial.
    predictions = sorted((study / "predictions").glob("*/*/epoch_???.parquet"))
    assert len(predictions) == 8 * 2 * epochs
    frame = pd.read_parquet(predictions[0])
    assert {"case_id", "risk", "trial_id", "fold", "seed", "epoch"} <= set(frame.columns)
    # 15% of cases have no RNA row: every cell, with RNA or without, scores the same cases, those included.
    validated = pd.concat(pd.read_parquet(path, columns=["case_id", "risk", "fold", "cell"]) for path in predictions)
    cases_per_cell = validated.groupby(["fold", "cell"])["case_id"].agg(frozenset)
    for fold, cells in cases_per_cell.groupby(level="fold"):
        assert cells.nunique() == 1, f"fold {fold}: cells scored different cases"
    without_rna = set(validated["case_id"]) - Cohort(tmp_path / "cohort").modality_cases("rna")
    assert without_rna and validated.loc[validated["case_id"].isin(without_rna), "risk"].notna().all()

    # truth.json: RNA carries risk the slide does not show. Final-epoch C-index, WSI+RNA vs WSI.
    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text())
    assert truth["expected"]["rna_adds_c_index_over_wsi"] > 0
    final = results.sort_values("epoch").groupby(["trial_id", "fold"]).tail(1)
    by_modality = final.groupby("modalities")["val_c_index"].mean()
    assert by_modality["wsi+rna"] > by_modality["wsi"], by_modality


def _report_table(report: str, section: str, factor: str) -> dict[str, float]:
    """Overall means of one factor's rows in one metric's ablation table of report.md."""
    table = report.split("## Ablation tables", 1)[1].split(f"### {section}\n", 1)[1].split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith(f"| {factor} ")]
    return {level.rstrip("*"): float(overall.split()[0]) for _, level, overall, *_ in rows}


def test_report_recovers_the_planted_rna_effect(smoke: Smoke) -> None:
    """The study ends with its report; its modality ablation shows RNA helping, as truth.json says."""
    assert smoke.code == 0, smoke.output[-4000:]
    report_dir = smoke.study / "report"
    assert f"report: {report_dir / 'report.html'}" in smoke.output
    report = (report_dir / "report.md").read_text()
    truth = json.loads((smoke.root / "cohort" / "truth.json").read_text())
    modalities = _report_table(report, "c_index", "modalities")
    assert np.sign(modalities["wsi+rna"] - modalities["wsi"]) == np.sign(truth["expected"]["rna_adds_c_index_over_wsi"]), modalities
    for section in ("## Statistics", "## Model selection", "### Held-out test fold", "Log-rank", "Uno's IPCW", "## Cost", "## TensorBoard"):
        assert section in report, section
    for figure in ("ablation_c_index.png", "forest_c_index.png", "kaplan_meier.png", "pareto.png"):
        assert (report_dir / figure).stat().st_size > 5000, figure


def test_report_renders_with_its_images_in_headless_chromium(smoke: Smoke, tmp_path: Path) -> None:
    html = smoke.study / "report" / "report.html"
    decoded, total = loaded_images(html, tmp_path)
    assert total >= 4 and decoded == total, (decoded, total)
    image = matplotlib.image.imread(screenshot(html, tmp_path / "report.png"))
    bars = np.all(np.abs(image[..., :3] - np.array([0x4C, 0x72, 0xB0]) / 255) < 0.02, axis=-1)  # the ablation bars' blue
    assert bars.sum() > 1000, "the ablation figure is not on the rendered page"


def test_tensorboard_hparams_view_has_every_trial(smoke: Smoke) -> None:
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(smoke.study / "tensorboard" / "hparams"))
    multiplexer.Reload()
    runs = multiplexer.PluginRunToTagToContent("hparams")
    trials = pd.read_parquet(smoke.study / "trials.parquet")
    assert set(trials["trial_id"]) <= set(runs), sorted(runs)


def test_selected_model_is_exported_and_predicts_like_it_validated(
    smoke: Smoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """``best/`` reproduces, for each fold model, the validation predictions the study recorded,
    and ``modaltune predict`` scores every case of a cohort."""
    best = smoke.study / "best"
    selection = json.loads((best / "selection.json").read_text())
    assert (best / "MODEL_CARD.md").exists() and selection["rule"].startswith("one standard error")
    model = ExportedModel.open(best)
    cohort = Cohort(smoke.root / "cohort")
    for member in model.members:
        recorded = max((smoke.study / "predictions" / selection["trial_id"] / member).glob("epoch_???.parquet"))
        validation = pd.read_parquet(recorded)
        again = predict_member(model.member_dir(member), cohort, list(validation["case_id"]), model.classes)
        assert np.allclose(again["risk"], validation["risk"], atol=1e-5)
        assert list(again["predicted_subtype"]) == list(validation["predicted_subtype"])

    out = tmp_path / "predictions.parquet"
    command = [sys.executable, "-m", "modaltune.cli.main", "predict", str(best), "--cohort", str(smoke.root / "cohort"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = pd.read_parquet(out)
    assert sorted(predictions["case_id"]) == cohort.case_ids
    assert predictions["risk"].notna().all() and set(predictions["risk_group"]) == {"high", "low"}
    assert ((predictions["risk"] > 0.5) == (predictions["risk_group"] == "high")).all()  # one rule for both
    assert np.allclose([sum(p) for p in predictions["class_probabilities"]], 1.0, atol=1e-4)

    # --out x.csv writes CSV; an output that cannot be written is refused before any case is scored.
    # risk is the members' mean percentile among their training cases' risks: a last-digit change
    # of a raw risk between the two runs (the second reads the frozen prefixes the first cached)
    # can move it by a rank, 1 / (2 x training cases) per member; more than two ranks is a real change.
    done = subprocess.run([*command[:-1], str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    as_csv = pd.read_csv(tmp_path / "p.csv")
    assert sorted(as_csv["case_id"]) == cohort.case_ids
    moved = (as_csv["risk"] - predictions["risk"]).abs().max()
    assert moved <= 2 / len(cohort.case_ids), moved
    assert all(abs(sum(json.loads(p).values()) - 1) < 1e-4 for p in as_csv["class_probabilities"])
    scored: list[str] = []
    monkeypatch.setattr("modaltune.predict.predict_member", lambda *args: scored.append("member") or pytest.fail("scored"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli_main(["predict", str(best), "--cohort", str(smoke.root / "cohort"), "--out", str(blocker / "p.parquet")]) == 2
    assert cli_main(["predict", str(best), "--cohort", str(smoke.root / "cohort"), "--out", str(tmp_path / "p.xlsx")]) == 2
    assert "cannot write there" in capsys.readouterr().err and not scored
    monkeypatch.undo()

    # A cohort from another feature extractor is refused before any slide is read.
    other = tmp_path / "other"
    assert cli_main(["synth", str(other), "--cohorts", "NSCLC", "--slides-per-cohort", "12", "--feature-dim", "16",
                     "--min-tiles", "4", "--max-tiles", "8", "--genes", "20", "--pathways", "4", "--folds", "2"]) == 0
    assert cli_main(["predict", str(best), "--cohort", str(other), "--out", str(tmp_path / "other.parquet")]) == 2

    # New patients of a cancer type the model never saw are listed and skipped; the rest are scored.
    mixed = tmp_path / "mixed"
    shutil.copytree(smoke.root / "cohort", mixed, ignore=shutil.ignore_patterns("cache"))
    slides = pd.read_parquet(mixed / "slides.parquet")
    foreign = set(cohort.case_ids[:6])
    slides.loc[slides["case_id"].isin(foreign), ["cohort", "subtype"]] = ["BRCA", "IDC"]
    slides.to_parquet(mixed / "slides.parquet", index=False)
    save_labels(mixed / "labels.yaml", default_labels(["BRCA", "NSCLC"]))
    assert cli_main(["predict", str(best), "--cohort", str(mixed), "--out", str(tmp_path / "mixed.parquet")]) == 0
    scored = pd.read_parquet(tmp_path / "mixed.parquet")
    assert sorted(scored["case_id"]) == sorted(set(cohort.case_ids) - foreign)

    # New patients as they come: TCGA barcodes, no outcomes, RNA for only some of them.
    h5_dir, csv, ours = tcga_shaped(cohort, tmp_path / "new")
    pd.read_csv(csv).drop(columns=["subtype", "time", "event"]).to_csv(csv, index=False)
    barcode = dict(zip(cohort.slides["case_id"], ours["case_id"], strict=True))
    rna = pd.read_parquet(cohort.layout.rna)
    rna.assign(case_id=rna["case_id"].map(barcode)).iloc[::3].to_csv(tmp_path / "new" / "rna.csv", index=False)
    assert cli_main(["import-h5", str(h5_dir), "--slides", str(csv), str(tmp_path / "new" / "cohort"), "--for-prediction",
                     "--labels", str(cohort.layout.labels), "--rna", str(tmp_path / "new" / "rna.csv"),
                     "--gene-groups", str(cohort.layout.gene_groups)]) == 0
    assert cli_main(["predict", str(best), "--cohort", str(tmp_path / "new" / "cohort"), "--out", str(tmp_path / "new.parquet")]) == 0
    new = pd.read_parquet(tmp_path / "new.parquet")
    assert sorted(new["case_id"]) == sorted(barcode.values()) and new["risk"].notna().all()


@pytest.mark.exhaustive(
    "Ctrl-C and --resume: tests/faults/test_study_state.py (Ctrl-C three times), a killed driver: tests/faults/test_faults.py"
)
def test_interrupted_study_resumes_without_rerunning(tmp_path: Path) -> None:
    """SIGINT mid-study, then --resume: every trial of the budget exactly once, finished
    repetitions untouched, no duplicated rows, and the Optuna study continued (pruned included)."""
    edits = {
        "factors": {"modalities": [["wsi"]]},
        "search": {"trials_per_cell": 4, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": 2,
        "test_fold": 2,
    }
    spec = _spec(tmp_path, "race", edits)
    storage = tmp_path / "studies"
    study = storage / "race"
    first = start_study(spec, storage)
    deadline = time.monotonic() + 600
    while len(markers(study)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(2)
    assert first.poll() is None, "the study ended before it could be interrupted"
    first.send_signal(signal.SIGINT)
    code, output = finish_study(first, timeout=180)
    assert code == 130, output[-4000:]
    assert "--resume" in output
    status = subprocess.run([sys.executable, "-m", "modaltune.cli.main", "status", str(study)], capture_output=True, text=True, check=False)
    assert status.returncode == 4 and "study race: interrupted" in status.stdout, status.stdout + status.stderr
    before = markers(study)
    interrupted = pd.read_parquet(study / "trials.parquet")
    assert (interrupted["state"] != "finished").any()

    code, output = finish_study(start_study(spec, storage, "--resume"), timeout=900)
    assert code == 0, output[-4000:]
    after = markers(study)
    assert all(after[name] == stamp for name, stamp in before.items()), "a finished repetition ran again"

    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 4 and trials["trial_id"].is_unique
    assert set(trials["state"]) <= {"finished", "stopped_early"} and (trials["state"] == "finished").any()
    results = pd.read_parquet(study / "results.parquet")
    assert not results.duplicated(["trial_id", "fold", "seed", "epoch"]).any()
    assert set(results["trial_id"]) == set(trials["trial_id"])

    # The resumed driver continued the same Optuna study, which Optuna's own API opens from the folder.
    storage = JournalStorage(JournalFileBackend(str(study / "optuna.journal")))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["c000: modalities=wsi"]
    optuna_trials = optuna.load_study(study_name="c000: modalities=wsi", storage=storage).trials
    assert len(optuna_trials) == 4 and [t.number for t in optuna_trials] == [0, 1, 2, 3]
    assert {t.user_attrs["tune_trial_id"] for t in optuna_trials} == set(trials["trial_id"])
    states = {t.state for t in optuna_trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}
    stopped = set(trials.loc[trials["state"] == "stopped_early", "trial_id"])
    assert sum(t.state == TrialState.PRUNED for t in optuna_trials) == len(stopped)
    assert all(t.intermediate_values for t in optuna_trials)

    # Its progress record says finished, and `modaltune status` exits 0 with the counts.
    status = subprocess.run([sys.executable, "-m", "modaltune.cli.main", "status", str(study)], capture_output=True, text=True, check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "study race: finished" in status.stdout and "trials 4/4 done" in status.stdout

    # Finished, it was analysed: the selected model is scored on the held-out fold it never saw.
    selection = json.loads((study / "best" / "selection.json").read_text())
    assert selection["test_fold"] == 2 and 0.0 <= selection["test"]["c_index"] <= 1.0
    report = (study / "report" / "report.md").read_text()
    assert "Fold 2 was never trained on" in report
