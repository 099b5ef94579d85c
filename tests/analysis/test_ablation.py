"""Ablation tables and paired tests on synthetic study tables with known effects."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from modaltune.analysis.ablation import (
    compare_to_reference,
    level_table,
    one_sentence_verdict,
    repetition_scores,
    verdict,
)
from modaltune.analysis.inference import FoldDesign, bounded_interval, corrected_t_test
from modaltune.analysis.summary import cell_summary
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.spec import StudySpec

FOLDS, SEEDS, EPOCHS = 5, [0, 1], 3
RNA_EFFECT = 0.08  # planted: RNA adds 0.08 C-index; adapter depth does nothing
DESIGN = FoldDesign(folds=FOLDS, cv_folds=FOLDS)


def _spec(design: str) -> StudySpec:
    return StudySpec.model_validate(
        {
            "name": "known", "cohort": "/nowhere", "folds": FOLDS, "seeds": SEEDS, "design": design,
            "factors": {"modalities": [["wsi"], ["wsi", "rna"]], "adapter_depth": [1, 2]},
            "search": {"trials_per_cell": 2, "params": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}},
        }
    )


def _tables(spec: StudySpec, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per cell two trials: a good finished one and a worse one (stopped early in half the cells)."""
    rng = np.random.default_rng(seed)
    results, trials = [], []
    fold_effect = {f: rng.normal(0, 0.03) for f in range(FOLDS)}  # shared by every cell: pairing removes it
    for number, cell in enumerate(design_cells(spec.factors, spec.design)):
        rna = RNA_EFFECT if cell.levels["modalities"] == "wsi+rna" else 0.0
        for k, penalty in enumerate((0.0, 0.05)):
            trial_id = f"{cell.id}_{k}"
            state = "stopped_early" if k == 1 and number % 2 else "finished"
            values = []
            for fold, run_seed in itertools.product(range(FOLDS), SEEDS):
                value = 0.60 + rna - penalty + fold_effect[fold] + rng.normal(0, 0.01)
                values.append(value)
                for epoch in range(EPOCHS):
                    late = epoch == EPOCHS - 1
                    results.append(
                        {
                            "trial_id": trial_id, "cell": cell.id, **cell.levels, "fold": fold, "seed": run_seed, "epoch": epoch,
                            "val_c_index": value if late else 0.5, "val_BRCA/c_index": value + 0.01 if late else 0.5,
                            "val_balanced_accuracy": 0.8,
                        }
                    )
            trials.append({"trial_id": trial_id, "cell": cell.id, **cell.levels, "state": state, "cv_c_index": float(np.mean(values))})
    return pd.DataFrame(results), pd.DataFrame(trials)


def test_scores_use_each_cells_best_finished_trial_and_its_last_epoch() -> None:
    spec = _spec("crossed")
    results, trials = _tables(spec)
    scores = repetition_scores(spec, results, trials)
    assert set(scores["trial_id"]) == {f"c00{i}_0" for i in range(4)}
    assert len(scores) == 4 * FOLDS * len(SEEDS) and (scores["epoch"] == EPOCHS - 1).all()
    summary = cell_summary(spec, results, trials).set_index("cell")
    assert summary.loc["c000", "best_trial"] == "c000_0" and summary.loc["c001", "stopped"] == 1


@pytest.mark.parametrize("design", ["crossed", "one_at_a_time"])
def test_planted_effect_is_found_and_the_null_factor_is_not(design: str) -> None:
    spec = _spec(design)
    results, trials = _tables(spec)
    scores = repetition_scores(spec, results, trials)

    table = level_table(spec, scores, "c_index", DESIGN).set_index(["factor", "level"])
    rna, wsi = table.loc[("modalities", "wsi+rna")], table.loc[("modalities", "wsi")]
    assert rna["overall_mean"] - wsi["overall_mean"] == pytest.approx(RNA_EFFECT, abs=0.01)
    assert rna["overall_n"] == FOLDS and rna["overall_ci_low"] < rna["overall_mean"] < rna["overall_ci_high"]
    assert rna["BRCA_mean"] == pytest.approx(rna["overall_mean"] + 0.01)

    tests = compare_to_reference(spec, scores, "c_index", DESIGN).set_index("factor")
    assert tests.loc["modalities", "difference"] == pytest.approx(RNA_EFFECT, abs=0.01)
    assert tests.loc["modalities", "p_holm"] < 0.01 and tests.loc["modalities", "agreeing"] == f"{FOLDS}/{FOLDS}"
    assert tests.loc["modalities", "ci_low"] < RNA_EFFECT < tests.loc["modalities", "ci_high"]
    assert tests.loc["adapter_depth", "p_holm"] > 0.05
    # The null comparison's detectable difference is what its spread allows: a few times the seed noise.
    assert 0.005 < tests.loc["adapter_depth", "mdd"] < 0.05
    assert (tests["folds"] == FOLDS).all()  # the unit is a fold: seeds (and, crossed, other cells) averaged within it
    said = verdict(tests.reset_index(), "c_index").splitlines()
    assert "significant after Holm" in said[0] and "not significant" in said[1] and "detects a true difference of" in said[1]


def test_seeds_repeating_a_fold_add_no_units() -> None:
    """The issue's reproduction: five fold scores copied unchanged as a second seed must not move p."""
    spec = _spec("one_at_a_time")
    results, trials = _tables(spec)
    one_seed = repetition_scores(spec, results[results["seed"] == 0], trials)
    copied = pd.concat([one_seed, one_seed.assign(seed=1)], ignore_index=True)
    alone = compare_to_reference(spec, one_seed, "c_index", DESIGN)
    twice = compare_to_reference(spec, copied, "c_index", DESIGN)
    assert np.allclose(alone["p"], twice["p"]) and (twice["folds"] == FOLDS).all()


def test_corrected_t_test_is_wider_than_the_plain_paired_t_test() -> None:
    differences = np.array([0.02, 0.03, 0.01, 0.04, 0.02, 0.03, 0.02, 0.01, 0.03, 0.02])
    plain = stats.ttest_1samp(differences, 0.0).pvalue
    corrected = corrected_t_test(differences, FoldDesign(folds=10, cv_folds=10))
    assert plain < corrected.p < 1
    low, high = stats.t.interval(0.95, 9, loc=differences.mean(), scale=stats.sem(differences))
    assert corrected.ci_low < low < high < corrected.ci_high
    assert corrected.agreeing == 10
    one = corrected_t_test(np.array([0.1]), FoldDesign(folds=1, cv_folds=5))
    assert math.isnan(one.p) and "at least 2" in one.note
    flat = corrected_t_test(np.array([0.02, 0.02, 0.02]), FoldDesign(folds=3, cv_folds=5))
    assert math.isnan(flat.p) and "same in every fold" in flat.note


def test_intervals_of_bounded_metrics_stay_in_the_unit_interval() -> None:
    """The issue's RCC case: three scattered fold C-indices whose t-interval ran to [-0.332, 1.328]."""
    design = FoldDesign(folds=3, cv_folds=3)
    interval = bounded_interval(np.array([0.15, 0.5, 0.85]), design)
    assert 0 < interval.low < 0.5 < interval.high < 1
    near_one = bounded_interval(np.array([0.97, 0.99, 0.995, 0.98]), FoldDesign(folds=4, cv_folds=4))
    assert near_one.low < near_one.mean < near_one.high < 1
    two = bounded_interval(np.array([0.6, 0.7]), design)
    assert math.isnan(two.low) and "at least 3" in two.note


def test_untestable_comparisons_are_missing_with_a_reason() -> None:
    spec = _spec("one_at_a_time")
    results, trials = _tables(spec)
    one_repetition = results[(results["fold"] == 0) & (results["seed"] == 0)]
    tests = compare_to_reference(spec, repetition_scores(spec, one_repetition, trials), "c_index", DESIGN)
    assert tests["p"].isna().all() and tests["p_holm"].isna().all() and tests["mdd"].isna().all()
    assert (tests["note"] != "").all()
    assert all("not testable" in line for line in verdict(tests, "c_index").splitlines())
    sentence = one_sentence_verdict(tests, "c_index", 1)
    assert "not testable:" in sentence and "not significant" not in sentence


def test_a_missing_cell_in_a_crossed_design_does_not_pass_for_an_effect() -> None:
    """Crossed 2 x 2, modalities without effect, adapter depth 0 better by 0.1, and the cell
    (wsi, depth 0) missing: modalities compared within depth 1 only, where both levels exist."""
    spec = _spec("crossed")
    rng = np.random.default_rng(5)
    rows = [
        {
            "cell": cell.id, **cell.levels, "fold": fold, "seed": 0,
            "val_c_index": 0.6 + (0.1 if cell.levels["adapter_depth"] == "2" else 0.0) + rng.normal(0, 0.005),
        }
        for cell in design_cells(spec.factors, spec.design) if cell.levels != {"modalities": "wsi+rna", "adapter_depth": "2"}
        for fold in range(FOLDS)
    ]
    tests = compare_to_reference(spec, pd.DataFrame(rows), "c_index", DESIGN).set_index("factor")
    assert abs(tests.loc["modalities", "difference"]) < 0.01 and tests.loc["modalities", "p_holm"] > 0.05
    assert tests.loc["adapter_depth", "difference"] == pytest.approx(0.1, abs=0.01)
