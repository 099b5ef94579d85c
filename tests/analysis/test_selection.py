"""Model selection, hyperparameter importance and the Pareto front on tables with known effects."""

from __future__ import annotations

import itertools
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from modaltune.analysis.cost import cost_table
from modaltune.analysis.selection import candidate_scores, chance_level, one_standard_error_rule
from modaltune.analysis.tuning import param_importances, pareto_front
from modaltune.cli.main import main
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec
from modaltune.train.checkpoints import ADAPTER_FILE, CONFIG_FILE, STATE_FILE

FOLDS, SEEDS = 4, [0]


def _candidates(rows: list[tuple[str, float, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial_id", "mean", "se", "trainable_params"])


def test_one_se_rule_prefers_the_smaller_adapter_within_noise() -> None:
    table = _candidates([("deep", 0.700, 0.020, 90_000), ("shallow", 0.690, 0.010, 30_000), ("none", 0.600, 0.010, 2_000)])
    selection = one_standard_error_rule(table, "c_index", "max")
    assert selection.best_trial_id == "deep" and selection.trial_id == "shallow"
    assert selection.bar == pytest.approx(0.680)
    assert list(selection.candidates.loc[selection.candidates["within_1se"], "trial_id"]) == ["deep", "shallow"]


def test_one_se_rule_keeps_the_best_when_the_smaller_model_is_clearly_worse() -> None:
    table = _candidates([("deep", 0.700, 0.005, 90_000), ("shallow", 0.690, 0.004, 30_000)])
    assert one_standard_error_rule(table, "c_index", "max").trial_id == "deep"


def test_one_se_rule_for_a_metric_to_minimise() -> None:
    table = _candidates([("deep", 1.00, 0.05, 90_000), ("shallow", 1.04, 0.05, 30_000), ("none", 1.20, 0.05, 2_000)])
    selection = one_standard_error_rule(table, "loss", "min")
    assert selection.best_trial_id == "deep" and selection.trial_id == "shallow"


def _spec() -> StudySpec:
    return StudySpec.model_validate({
        "name": "known", "cohort": "/nowhere", "folds": FOLDS, "seeds": SEEDS,
        "factors": {"modalities": [["wsi"], ["wsi", "rna"]]},
        "search": {"trials_per_cell": 8, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
    })


def _study(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """16 trials; C-index rises with log(lr) (strongly) and not with modalities; balanced accuracy
    falls with lr, so the two metrics trade off along lr."""
    rng = np.random.default_rng(seed)
    results, trials = [], []
    for number, (modalities, lr) in enumerate(itertools.product(["wsi", "wsi+rna"], np.geomspace(1e-4, 1e-2, 8))):
        trial_id = f"t{number:02d}"
        position = math.log10(lr / 1e-4) / 2  # 0 .. 1
        for fold, seed_ in itertools.product(range(FOLDS), SEEDS):
            results.append({
                "trial_id": trial_id, "cell": modalities, "modalities": modalities, "optim.lr": lr, "fold": fold, "seed": seed_,
                "epoch": 0, "val_c_index": 0.55 + 0.2 * position + rng.normal(0, 0.005),
                "val_balanced_accuracy": 0.9 - 0.3 * position + rng.normal(0, 0.005),
                "num_workers": 2, "cpus_per_worker": 0.5,
            })
        trials.append({"trial_id": trial_id, "cell": modalities, "modalities": modalities, "optim.lr": lr,
                       "state": "stopped_early" if number == 15 else "finished", "time_total_s": 360.0})
    return pd.DataFrame(results), pd.DataFrame(trials)


def test_candidates_are_finished_trials_with_every_repetition() -> None:
    results, trials = _study()
    results = results[~((results["trial_id"] == "t00") & (results["fold"] == 0))]  # t00 lost a repetition
    table = candidate_scores(_spec(), results, trials, "c_index")
    assert set(table["trial_id"]) == {f"t{i:02d}" for i in range(1, 15)}
    assert (table["n"] == FOLDS).all() and (table["se"] > 0).all()


def test_a_seed_repeating_the_folds_does_not_shrink_the_standard_error() -> None:
    """Seeds share their fold's split: an exact copy as a second seed leaves mean, SE and n as they were."""
    results, trials = _study()
    one = results[results["seed"] == SEEDS[0]]
    copied = pd.concat([one, one.assign(seed=SEEDS[0] + 100)], ignore_index=True)
    spec = _spec().model_copy(update={"seeds": [SEEDS[0], SEEDS[0] + 100]})
    alone = candidate_scores(_spec().model_copy(update={"seeds": [SEEDS[0]]}), one, trials, "c_index").set_index("trial_id")
    twice = candidate_scores(spec, copied, trials, "c_index").set_index("trial_id")
    assert np.allclose(alone["se"], twice["se"]) and (twice["n"] == FOLDS).all()


def test_importance_finds_the_parameter_that_matters() -> None:
    results, trials = _study()
    table, note = param_importances(_spec(), results, trials, "c_index")
    importance = dict(zip(table["parameter"], table["importance"], strict=True))
    assert importance["optim.lr"] > 0.8 and importance["optim.lr"] > importance.get("modalities", 0.0), (importance, note)
    fanova, _ = param_importances(_spec(), results, trials, "c_index", evaluator="fanova")
    assert fanova.iloc[0]["parameter"] == "optim.lr"


def test_importance_says_why_when_there_are_too_few_trials() -> None:
    results, trials = _study()
    keep = trials["trial_id"].isin(["t00", "t01"])
    table, note = param_importances(_spec(), results, trials[keep], "c_index")
    assert table.empty and "too few" in note


def test_pareto_front_holds_exactly_the_non_dominated_trials() -> None:
    results, trials = _study()
    front = pareto_front(_spec(), results, trials)
    dominated = [
        any(o["c_index"] >= r["c_index"] and o["balanced_accuracy"] >= r["balanced_accuracy"] and o["trial_id"] != r["trial_id"]
            and (o["c_index"] > r["c_index"] or o["balanced_accuracy"] > r["balanced_accuracy"]) for o in front.to_dict("records"))
        for r in front.to_dict("records")
    ]
    assert list(front["pareto"]) == [not d for d in dominated]
    assert 2 <= front["pareto"].sum() < len(front)


def test_cost_counts_states_and_reserved_cpu_hours() -> None:
    results, trials = _study()
    table = cost_table(_spec(), results, trials).set_index("cell")
    assert table.loc["total", "trials"] == 16 and table.loc["total", "stopped_early"] == 1
    assert table.loc["wsi", "cpu_hours"] == pytest.approx(8 * 0.1 * 2 * 0.5)  # 8 trials x 6 min x 2 workers x 0.5 CPU


def _study_folder(root: Path, cohort: Path, means: dict[str, float]) -> Path:
    """A finished study's folder as the study writes it (spec, results, trials, each repetition's
    adapter-only checkpoint), two folds whose C-index differ by 0.378 around each trial's mean."""
    study = root / "below"
    layout = StudyLayout(study)
    study.mkdir(parents=True)
    spec = StudySpec.model_validate(
        {"name": "below", "cohort": str(cohort), "folds": 2, "seeds": [0], "factors": {"adapter_depth": [1, 2]}}
    )
    layout.spec.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    results, trials = [], []
    for depth, (trial, mean) in enumerate(means.items(), start=1):
        levels = {"trial_id": trial, "cell": f"c{depth}", "adapter_depth": str(depth)}
        for fold in (0, 1):
            results.append(levels | {
                "fold": fold, "seed": 0, "epoch": 0, "val_c_index": mean + (0.189 if fold else -0.189), "val_loss": 1.0,
                "val_balanced_accuracy": 0.5, "val_macro_auc": 0.5, "time_this_iter_s": 1.0, "time_total_s": 1.0,
                "num_workers": 1, "cpus_per_worker": 1.0,
            })
            checkpoint = layout.runs / trial / "train" / f"checkpoint_{fold:06d}"
            checkpoint.mkdir(parents=True)
            torch.save({"adapter.weight": torch.zeros(10 * depth)}, checkpoint / ADAPTER_FILE)
            (checkpoint / STATE_FILE).write_text(json.dumps({"epoch": 0}))
            (checkpoint / CONFIG_FILE).write_text(json.dumps({"train": {"fold": fold, "seed": 0}}))
        trials.append(levels | {"state": "finished", "time_total_s": 2.0, "cv_c_index": mean})
    pd.DataFrame(results).to_parquet(layout.results)
    pd.DataFrame(trials).to_parquet(layout.trials)
    return study


def test_a_selection_below_chance_is_warned_about_in_the_report_and_on_the_terminal(
    small_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's study: the 1-SE rule picked C-index 0.189 ± 0.189 and said nothing."""
    study = _study_folder(tmp_path, small_cohort, {"small": 0.189, "large": 0.2})
    with caplog.at_level(logging.WARNING, logger="modaltune.analysis.selection"):
        assert main(["analyze", str(study), "--bootstrap", "10"]) == 0
    expected = "the selected trial small scores c_index 0.1890 ± 0.1890 (SE, 2 folds) (the best, large, 0.2000), at or below chance (0.5)"
    assert any(expected in message for message in caplog.messages)
    assert f"> **Warning:** {expected}" in (study / "report" / "report.md").read_text()


def test_chance_is_the_metric_of_a_model_that_knows_nothing_over_the_study_cancer_types(small_cohort: Path) -> None:
    spec = StudySpec.model_validate({"name": "chance", "cohort": str(small_cohort)})
    assert chance_level(spec, "c_index") == 0.5
    assert chance_level(spec, "balanced_accuracy") == pytest.approx((1 / 2 + 1 / 3) / 2)  # BRCA: 2 subtypes, RCC: 3
    assert chance_level(spec.model_copy(update={"cohorts": ["BRCA"]}), "balanced_accuracy") == 0.5
    assert chance_level(spec, "loss") is None
    table = _candidates([("deep", 0.45, 0.02, 90_000), ("shallow", 0.44, 0.01, 30_000)]).assign(n=FOLDS)
    assert not one_standard_error_rule(table, "balanced_accuracy", "max", chance=0.4167).warnings
    (warning,) = one_standard_error_rule(table, "balanced_accuracy", "max", chance=0.5).warnings
    assert warning.startswith(
        "the selected trial shallow scores balanced_accuracy 0.4400 ± 0.0100 (SE, 4 folds) (the best, deep, 0.4500), "
        "at or below chance (0.5)"
    )


RAY_BLOCKED = """
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"{name}: Ray is not installed here")
sys.meta_path.insert(0, NoRay())
from modaltune.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_spec_loads_plans_and_is_analysed_on_a_machine_without_ray(small_cohort: Path, tmp_path: Path) -> None:
    """A login node or a laptop reads a cluster's study: ``plan`` and ``analyze`` import no Ray."""
    study = _study_folder(tmp_path, small_cohort, {"small": 0.7, "large": 0.72})
    spec = tmp_path / "plan.yaml"
    spec.write_text(yaml.safe_dump({"cohort": str(small_cohort), "folds": 2, "tasks": {"diagnosis": 1.0},
                                    "factors": {"adapter_depth": [1, 2]}, "scheduler": {"type": "asha", "grace_period": 1},
                                    "train": {"model": {"encoder": "tiny", "out_dim": 16, "n_rna_tokens": 1}}}))
    for command in (["plan", str(spec)], ["analyze", str(study), "--bootstrap", "10"]):
        done = subprocess.run([sys.executable, "-c", RAY_BLOCKED, *command], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
