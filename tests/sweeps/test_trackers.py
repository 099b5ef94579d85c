"""Experiment trackers through Ray Tune's logger callbacks, for real: a study with ``trackers:
[mlflow]`` against MLflow's local store, read back with MLflow's own client."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from modaltune.sweeps.spec import load_study_spec
from tests.studyproc import finish_study, start_study, write_spec

pytestmark = pytest.mark.slow


@pytest.mark.exhaustive("MLflow tracking of a whole study: tests/sweeps/test_confirm.py (the confirmed study, both stages)")
def test_mlflow_gets_every_trial_its_params_per_epoch_metrics_and_the_report(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path / "tracked.yaml", "tiny",
        {
            "cohort": str(tmp_path / "cohort"), "trackers": ["mlflow"],
            "search": {"trials_per_cell": 2, "params": {"optim.lr": {"type": "loguniform", "low": 0.002, "high": 0.008}}},
        },
    )
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=400)
    assert code == 0, output[-4000:]
    study = tmp_path / "studies" / "tracked"
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None and experiment.artifact_location == (study / "mlflow-artifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    trial_runs = [run for run in runs if run.data.tags.get("stage") == "search"]
    assert len(trial_runs) == 2
    epochs = load_study_spec(spec).train["optim"]["epochs"]
    for run in trial_runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["cell"] == "c000" and 0.002 <= float(run.data.params["optim.lr"]) <= 0.008
        history = client.get_metric_history(run.info.run_id, "val_c_index")
        assert len(history) >= epochs and all(0.0 <= point.value <= 1.0 for point in history)  # every epoch's value
    (report,) = [run for run in runs if run.info.run_name == "report"]
    assert "report.md" in [artifact.path for artifact in client.list_artifacts(report.info.run_id)]


def test_a_tracker_whose_package_is_missing_is_refused_before_ray_starts(tmp_path: Path) -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    spec = write_spec(tmp_path / "nowandb.yaml", "tiny", {"cohort": str(tmp_path / "cohort"), "trackers": [{"name": "wandb"}]})
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=120)
    assert code == 2 and "trackers: wandb needs the 'wandb' package: pip install wandb" in output, output[-2000:]
    assert "Started a local Ray instance" not in output
