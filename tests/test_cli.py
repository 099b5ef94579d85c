"""The installed ``modaltune`` command: synth then validate, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from modaltune.cli import main


def test_synth_then_validate_through_the_console_script(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    command = [
        str(Path(sys.executable).with_name("modaltune")), "synth", str(out), "--cohorts", "BRCA,GBMLGG",
        "--slides-per-cohort", "12", "--feature-dim", "16", "--min-tiles", "10", "--max-tiles", "40",
        "--genes", "40", "--pathways", "6", "--folds", "3", "--seed", "11",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    slides = pd.read_parquet(out / "slides.parquet")
    assert len(slides) == 24 and set(slides["cohort"]) == {"BRCA", "GBMLGG"}
    assert slides["stage"][slides["cohort"] == "GBMLGG"].isna().all()  # TCGA has no AJCC stage for gliomas
    assert json.loads((out / "truth.json").read_text())["config"]["seed"] == 11
    validated = subprocess.run(
        [command[0], "validate", str(out)], capture_output=True, text=True, check=False
    )
    assert validated.returncode == 0, validated.stderr
    assert "OK (24 slides" in validated.stdout


def test_unknown_cohort_is_a_clear_input_error(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "x"), "--cohorts", "BRCA,MARS"]) == 2
    assert "unknown cohort(s) ['MARS']" in capsys.readouterr().err
