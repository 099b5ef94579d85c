"""Model selection, hyperparameter importance and the Pareto front on tables with known effects."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from analysis.cost import cost_table
from analysis.selection import candidate_scores, one_standard_error_rule
from analysis.tuning import param_importances, pareto_front
from sweeps.spec import StudySpec

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
    importance = dict(zip(table["parameter"], table["importance"]))
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
