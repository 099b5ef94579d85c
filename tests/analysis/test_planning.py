"""``modaltune plan`` on the shipped study specs, as a user runs it (the console script)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from modaltune.analysis.inference import FoldDesign, minimum_detectable_difference
from modaltune.analysis.planning import PilotTimes, forecast
from modaltune.cli.main import main
from modaltune.data import CohortLayout, SynthConfig, generate_cohort
from modaltune.errors import InputError
from modaltune.sweeps.plan import build_plan
from modaltune.sweeps.spec import load_study_spec

STUDIES = Path(__file__).resolve().parents[2] / "sweeps" / "studies"


def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("modaltune")), "plan", *args], capture_output=True, text=True, check=False)


def _mdd_column(output: str) -> list[float]:
    table = output.split("(per-fold difference SD", 1)[1].splitlines()[2:]
    return [float(line.split()[-1]) for line in table if line and not line.startswith("warning")]


def test_plan_of_the_paper_scale_study_counts_its_runs_and_what_it_can_detect() -> None:
    done = _plan(str(STUDIES / "tcga.yaml"), "--spread", "0.03", "--cohort-folds", "5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "16 cells x 12 trials = 192 trials" in out and "5 folds x 2 seeds = 10; runs: 1920" in out
    assert "15 comparisons, Holm" in out
    expected = minimum_detectable_difference(0.03, 5, FoldDesign(folds=5, cv_folds=5), 0.05 / 15)
    assert _mdd_column(out) == pytest.approx([expected] * 15, abs=5e-4)
    assert "seeds per fold are averaged" in out
    assert "confirm stage: 16 cells' chosen configurations x 5 folds x 1 fresh seeds = 80 runs" in out
    assert "optimistic by selection" not in out  # the confirm stage's runs are what the tests use


PAPER_METHODS = [
    "modaltune", "linear_probe[wsi]", "finetune[wsi]", "abmil[wsi]", "abmil[wsi+rna]", "transmil[wsi]", "transmil[wsi+rna]", "snn[rna]",
    "mcat[wsi+rna]", "survpath[wsi+rna]",
]


def test_the_paper_study_builds_every_method_on_every_cancer_type_at_its_own_size(tmp_path: Path) -> None:
    """paper.yaml against a small synthetic cohort of the four cancer types with GigaPath-sized
    features: every cell's run config is valid (build_plan checks them all) and sized by its method."""
    cohort = generate_cohort(tmp_path / "cohort", SynthConfig(
        cohorts=("BRCA", "NSCLC", "RCC", "GBMLGG"), slides_per_cohort=60, seed=3, feature_dim=1536, min_tiles=4, max_tiles=8,
        n_genes=40, n_pathways=4, n_folds=5,
    )).root
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load((STUDIES / "paper.yaml").read_text()) | {"cohort": str(cohort)}))
    plan = build_plan(load_study_spec(path), tmp_path / "study")
    assert len(plan.cells) == 10 * 5 and sorted({c.levels["method"] for c in plan.cells}) == sorted(PAPER_METHODS)
    sizes = {c.levels["method"]: plan.train_config(c, {}, plan.repetitions[0]).scaling for c in plan.cells}
    assert (sizes["finetune[wsi]"].num_workers, sizes["finetune[wsi]"].gpus_per_worker) == (4, 1.0)
    assert (sizes["modaltune"].num_workers, sizes["modaltune"].gpus_per_worker) == (1, 0.5)
    assert sizes["abmil[wsi]"].gpus_per_worker == 0.25 and sizes["snn[rna]"].gpus_per_worker == 0.125
    assert {c.model.encoder for c in (plan.train_config(cell, {}, plan.repetitions[0]) for cell in plan.cells)} == {"gigapath"}


def test_plan_of_the_paper_study_prices_each_method(tmp_path: Path) -> None:
    done = _plan(str(STUDIES / "paper.yaml"), "--spread", "0.03", "--cohort-folds", "5")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "50 cells x 8 trials = 400 trials" in out and "resources and cost per method" in out
    table = out.split("resources and cost per method", 1)[1].splitlines()[2:12]
    assert [line.split()[0] for line in table] == PAPER_METHODS
    assert all(line.split()[1:3] == ["5", "40"] for line in table)
    assert "4 x (8 CPU, 1 GPU)" in table[2] and "1 x (2 CPU, 0.25 GPU)" in table[3]
    priced = forecast(load_study_spec(STUDIES / "paper.yaml"), cohort_folds=5)
    priced.pilot = PilotTimes(tmp_path, epoch_s=60.0, start_s=120.0)
    costs = priced.costs().set_index("method")
    assert costs.loc["finetune[wsi]", "gpu_hours"] == pytest.approx(8 * costs.loc["modaltune", "gpu_hours"])
    assert costs.loc["abmil[wsi]", "gpu_hours"] == pytest.approx(costs.loc["modaltune", "gpu_hours"] / 2)
    assert costs["gpu_hours"].sum() == pytest.approx(priced.trial_seconds / 3600 / 50 * 5 * (0.5 + 0.25 + 4 + 6 * 0.25 + 0.125))
    assert "GPU-hours and" in priced.text()


METHODS_STUDY_METHODS = [
    "linear_probe[wsi]", "modaltune", "abmil[wsi](width=32,attention_dim=16)",
    'abmil[wsi+rna](width=32,attention_dim=16,cat={"width":32})', "transmil[wsi](width=32,heads=2,depth=1,dropout=0.5)",
    "snn[rna](width=32)", "survpath[wsi+rna](width=32)",
]


def test_plan_of_the_methods_study_lists_every_method_on_a_cpu() -> None:
    """methods.yaml, the CPU-sized comparison of the methods (its cohort generated only when the
    study runs): one trial per method, each on the study's CPU size, tested against the linear probe."""
    done = _plan(str(STUDIES / "methods.yaml"), "--spread", "0.03")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "7 cells x 1 trials = 7 trials" in out and "5 folds x 1 seeds = 5; runs: 35" in out
    table = out.split("resources and cost per method", 1)[1].splitlines()[2:9]
    assert [line.split()[0] for line in table] == METHODS_STUDY_METHODS
    assert all(line.endswith("1 x (0.9 CPU)") for line in table)
    assert "6 comparisons, Holm" in out


def test_plan_warns_when_a_design_cannot_reach_significance(tmp_path: Path) -> None:
    """The demo on 2 folds x 2 seeds: two units, one degree of freedom, no intervals, and a
    detectable difference larger than any C-index difference can be."""
    spec = yaml.safe_load((STUDIES / "demo.yaml").read_text()) | {"folds": 2, "seeds": [0, 1]}
    path = tmp_path / "two_folds.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = _plan(str(path), "--spread", "0.03")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "2 folds x 2 seeds = 4" in out and "1 degrees of freedom" in out
    assert "warning: 2 folds: intervals are n/a" in out and "cannot reach significance for any plausible effect" in out
    assert "seeds per fold are averaged" in out
    shipped = _plan(str(STUDIES / "demo.yaml"), "--spread", "0.03")
    assert shipped.returncode == 0 and "cannot reach significance" not in shipped.stdout and "intervals are n/a" not in shipped.stdout


def test_plan_refuses_a_spread_that_is_not_a_standard_deviation() -> None:
    done = _plan(str(STUDIES / "tcga.yaml"), "--spread", "-1", "--cohort-folds", "5")
    assert done.returncode == 2 and "--spread: must be a positive standard deviation" in done.stderr


def _study(tmp_path: Path, cohort: Path, **edits: object) -> Path:
    """The tiny study on ``cohort``, with ``edits`` to its top-level keys."""
    spec = yaml.safe_load((STUDIES / "tiny.yaml").read_text()) | {"cohort": str(cohort), "synthetic": None, "folds": 5} | edits
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _edit_slides(cohort: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = CohortLayout(cohort).slides
    edit(pd.read_parquet(path)).to_parquet(path, index=False)


def _plan_in_process(capsys: pytest.CaptureFixture[str], study: Path) -> tuple[int, str, str]:
    """``modaltune plan STUDY --spread 0.03`` in this process (the console script takes seconds to start)."""
    code = main(["plan", str(study), "--spread", "0.03"])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_and_the_study_refuse_folds_that_cannot_be_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """44 cases in 5 folds, the issue's TCGA walk-through: folds without deaths or with one
    subtype. Refused by `modaltune plan` and by the study before Ray starts, with the fix."""
    config = SynthConfig(
        cohorts=("BRCA", "NSCLC", "RCC", "GBMLGG"), slides_per_cohort=13, seed=7, feature_dim=8, min_tiles=4, max_tiles=8,
        n_genes=40, n_pathways=4, n_folds=5, censored_fraction=0.5,
    )
    cohort = generate_cohort(tmp_path / "cohort", config).root
    path = _study(tmp_path, cohort)
    code, out, err = _plan_in_process(capsys, path)
    assert code == 2, out
    assert "study tiny: its folds [0, 1, 2, 3, 4] cannot all be scored" in err
    assert "fold 0: GBMLGG validation cases: fewer deaths than a C-index needs (2), got 0 among 1 case" in err
    assert "fix: --folds 2 lets every fold be scored" in err
    with pytest.raises(InputError, match="cannot all be scored"):
        build_plan(load_study_spec(path), tmp_path / "studies" / "tiny")


def test_plan_checks_the_folds_and_tasks_the_study_uses(small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ILC case in fold 0: no fold but 0 can score BRCA's subtypes, and fold 3 keeps one
    BRCA death. A survival study on folds 0-2 does not care; one that trains diagnosis is refused;
    a cancer type without deaths is a warning, and refused when it is the only one a C-index
    study has."""
    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    _edit_slides(cohort, lambda s: s.assign(fold=s["fold"].where(s["subtype"] != "ILC", 0)))
    code, _, err = _plan_in_process(capsys, _study(tmp_path, cohort, folds=3, tasks={"diagnosis": 0.0, "survival": 1.0}))
    assert code == 0, err
    code, _, err = _plan_in_process(capsys, _study(tmp_path, cohort, folds=3))
    assert code == 2 and "fold 1: BRCA validation cases: fewer subtypes than subtype metrics need (2)" in err
    assert "fold 0: BRCA training cases: a subtype to learn is missing, got no ILC case" in err

    _edit_slides(cohort, lambda s: s.assign(event=s["event"].where(s["cohort"] != "BRCA", 0)))
    code, out, err = _plan_in_process(capsys, _study(tmp_path, cohort, folds=4, tasks={"survival": 1.0}))
    assert code == 0, err
    assert "warning: BRCA: 0 death(s) in all: no split into 2 or more folds gives every fold" in out
    code, _, err = _plan_in_process(capsys, _study(tmp_path, cohort, folds=4, tasks={"survival": 1.0}, cohorts=["BRCA"]))
    assert code == 2 and "c_index: no cancer type of the study has what it needs in every fold" in err
