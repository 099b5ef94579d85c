"""The confirm stage through a real study: the search, then each cell's chosen configuration
retrained on a fresh seed, the report's tests computed on those runs, and a resume that reruns
nothing. Its second level adds a somatic mutation panel (some cases not sequenced), so the
mutations modality goes through a whole study here too; and it is tracked in MLflow (Ray Tune's
logger callback against MLflow's local store, read back with MLflow's own client)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from modaltune.analysis.ablation import compare_to_reference, repetition_scores
from modaltune.analysis.inference import FoldDesign
from modaltune.analysis.summary import load_study
from modaltune.data import Cohort
from modaltune.sweeps.confirm import CONFIRMS_KEY
from modaltune.sweeps.trial import TRIAL_FILE
from tests.studyproc import REPO, finish_study, markers, start_study, write_spec

pytestmark = pytest.mark.slow

FOLDS, CONFIRM_SEED, EPOCHS = 2, 7, 2


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, Path]:
    root = tmp_path_factory.mktemp("confirmed")
    tiny = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text())
    train = tiny["train"]
    train["optim"] |= {"epochs": EPOCHS, "warmup_epochs": 0}
    spec = write_spec(root / "confirmed.yaml", "tiny", {
        "train": train,
        "cohort": str(root / "cohort"), "folds": FOLDS,
        "synthetic": tiny["synthetic"] | {"n_mutation_genes": 6, "mutation_log_hazard": 1.0, "mutation_missing_fraction": 0.1},
        "factors": {"modalities": [["wsi", "rna"], ["wsi", "rna", "mutations"]]},
        "search": {"trials_per_cell": 2, "sampler": "random", "seed": 0,
                   "params": {"optim.lr": {"type": "loguniform", "low": 0.002, "high": 0.008}}},
        "confirm": {"seeds": [CONFIRM_SEED]},
        "trackers": ["mlflow"],
    })
    code, output = finish_study(start_study(spec, root / "studies"), timeout=900)
    return root / "studies" / "confirmed", code, output, spec


def test_each_cells_chosen_configuration_is_retrained_on_the_fresh_seed(confirmed) -> None:
    study, code, output, _ = confirmed
    assert code == 0, output[-4000:]
    search = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    trials = pd.read_parquet(study / "confirm" / "trials.parquet")
    assert len(trials) == 2 and set(trials["state"]) == {"finished"}
    records = [json.loads(p.read_text()) for p in (study / "confirm" / "trials").glob(f"*/{TRIAL_FILE}")]
    assert len(records) == 2
    for record in records:
        config = record["config"]
        chosen = search[(search["cell"] == config["cell"]) & (search["state"] == "finished")]["cv_c_index"].idxmax()
        assert config[CONFIRMS_KEY] == chosen
        assert config["optim.lr"] == pytest.approx(search.loc[chosen, "optim.lr"])
    results = pd.read_parquet(study / "confirm" / "results.parquet")
    assert set(results["seed"]) == {CONFIRM_SEED} and sorted(set(results["fold"])) == list(range(FOLDS))
    assert len(results.groupby(["cell", "fold"])) == 2 * FOLDS
    assert set(results["modalities"]) == {"wsi+rna", "wsi+rna+mutations"} and results["val_c_index"].between(0, 1).all()
    cohort = Cohort(study.parents[1] / "cohort")
    assert 0 < len(cohort.modality_cases("mutations")) < len(cohort.case_ids)  # some cases not sequenced: missing tokens


def test_the_reports_tests_are_computed_on_the_confirmation_runs(confirmed) -> None:
    study, code, output, _ = confirmed
    assert code == 0, output[-4000:]
    report = (study / "report" / "report.md").read_text()
    assert "## Confirmation" in report and "(confirmation stage)" in report and "(search stage, for reference)" in report
    spec, results, trials = load_study(study / "confirm")
    expected = compare_to_reference(spec, repetition_scores(spec, results, trials), "c_index", FoldDesign(FOLDS, 2)).iloc[0]
    assert f"Verdict on c_index over {FOLDS} folds" in output
    assert f"wsi+rna+mutations vs wsi+rna {expected['difference']:+.3f}" in output.split("Verdict on c_index", 1)[1]
    for figure in ("confirm_forest_c_index.png", "search_forest_c_index.png"):
        assert (study / "report" / figure).stat().st_size > 5000, figure


def test_resuming_a_confirmed_study_reruns_nothing(confirmed) -> None:
    """Resumed with `modaltune study`, the command form of sweeps/ablation.py that ran it."""
    study, code, output, spec = confirmed
    assert code == 0, output[-4000:]
    before = markers(study) | {f"confirm/{k}": v for k, v in markers(study / "confirm").items()}
    assert len(before) == 2 * 2 * FOLDS + 2 * FOLDS  # search: 2 cells x 2 trials x folds; confirmation: 2 cells x folds
    again, output = finish_study(start_study(spec, study.parent, "--resume", command="cli"), timeout=600)
    assert again == 0, output[-4000:]
    after = markers(study) | {f"confirm/{k}": v for k, v in markers(study / "confirm").items()}
    assert after == before


def test_mlflow_gets_every_trial_of_both_stages_its_params_per_epoch_metrics_and_the_report(confirmed) -> None:
    study, code, output, _ = confirmed
    assert code == 0, output[-4000:]
    client = MlflowClient(f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("confirmed")
    assert experiment is not None and experiment.artifact_location == (study / "mlflow-artifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    stages = {stage: [run for run in runs if run.data.tags.get("stage") == stage] for stage in ("search", "confirm")}
    assert len(stages["search"]) == 2 * 2 and len(stages["confirm"]) == 2
    for run in stages["search"] + stages["confirm"]:
        assert run.info.status == "FINISHED"
        assert run.data.params["cell"] in {"c000", "c001"} and 0.002 <= float(run.data.params["optim.lr"]) <= 0.008
        history = client.get_metric_history(run.info.run_id, "val_c_index")
        assert len(history) >= EPOCHS and all(0.0 <= point.value <= 1.0 for point in history)  # every epoch's value
    reports = [run for run in runs if run.info.run_name == "report"]  # one more for each resume that rewrote it
    assert reports and all("report.md" in [a.path for a in client.list_artifacts(run.info.run_id)] for run in reports)
