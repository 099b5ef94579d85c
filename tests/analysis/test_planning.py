"""``modaltune plan`` on the shipped study specs, as a user runs it (the console script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from analysis.inference import FoldDesign, minimum_detectable_difference

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
