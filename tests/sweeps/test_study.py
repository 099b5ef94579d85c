"""Whole studies through the real CLI on an embedded Ray: the shipped smoke study, and a resume."""

from __future__ import annotations

import json
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from optuna.trial import TrialState

from sweeps.searcher import CellSearcher
from tests.studyproc import finish_study, markers, start_study, write_spec


def _spec(tmp_path: Path, name: str, edits: dict[str, Any]) -> Path:
    return write_spec(tmp_path / f"{name}.yaml", "smoke", {"cohort": str(tmp_path / "cohort")} | edits)


def test_smoke_study_end_to_end(tmp_path: Path) -> None:
    """2 adapter depths x 2 modality sets x 2 text encoders, 2 folds: every cell x fold, sane
    metrics, and the planted RNA effect recovered in the direction truth.json gives."""
    spec = _spec(tmp_path, "smoke", {})
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=900)
    assert code == 0, output[-4000:]
    study = tmp_path / "studies" / "smoke"
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

    # truth.json: RNA carries risk the slide does not show. Final-epoch C-index, WSI+RNA vs WSI.
    truth = json.loads((tmp_path / "cohort" / "truth.json").read_text())
    assert truth["expected"]["rna_adds_c_index_over_wsi"] > 0
    final = results.sort_values("epoch").groupby(["trial_id", "fold"]).tail(1)
    by_modality = final.groupby("modalities")["val_c_index"].mean()
    assert by_modality["wsi+rna"] > by_modality["wsi"], by_modality


def test_interrupted_study_resumes_without_rerunning(tmp_path: Path) -> None:
    """SIGINT mid-study, then --resume: every trial of the budget exactly once, finished
    repetitions untouched, no duplicated rows, and the Optuna study continued (pruned included)."""
    edits = {
        "factors": {"modalities": [["wsi"]]},
        "search": {"trials_per_cell": 4, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent": 2,
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

    searcher = CellSearcher.__new__(CellSearcher)
    searcher.restore(str(max(study.glob("searcher-state-*.pkl"))))
    optuna_trials = searcher.studies()["c000"].trials
    assert len(optuna_trials) == 4
    states = {t.state for t in optuna_trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}
    stopped = set(trials.loc[trials["state"] == "stopped_early", "trial_id"])
    assert sum(t.state == TrialState.PRUNED for t in optuna_trials) == len(stopped)
    assert all(t.intermediate_values for t in optuna_trials)
    assert pickle.dumps(searcher)  # the state Tune saves is whole
