"""The installed ``modaltune`` command: synth then validate, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from modaltune.cli.main import main


def test_synth_then_validate_through_the_console_script(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    command = [
        str(Path(sys.executable).with_name("modaltune")), "synth", str(out), "--cohorts", "BRCA,GBMLGG",
        "--slides-per-cohort", "12", "--feature-dim", "16", "--min-tiles", "10", "--max-tiles", "40",
        "--genes", "40", "--pathways", "6", "--folds", "2", "--seed", "11",
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


def test_train_refuses_bad_input_before_starting_ray(cohort_copy: Path, tmp_path: Path, capsys) -> None:
    (cohort_copy / "features" / min(p.name for p in (cohort_copy / "features").iterdir())).write_bytes(b"junk")
    output = tmp_path / "run"
    assert main(["train", "--cohort", str(cohort_copy), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "not a readable Arrow IPC file" in err and not output.exists()
    assert main(["train", "--cohort", str(cohort_copy), "--output", str(output), "--set", "optim.lrr=1"]) == 2
    assert "optim.lrr: Extra inputs are not permitted" in capsys.readouterr().err


def test_train_checks_the_config_against_the_cohort(small_cohort: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", "--cohort", str(small_cohort), "--output", str(tmp_path / "r"), "--set", "fold=9"]) == 2
    assert "fold: 9 but the cohort has folds 0..3" in capsys.readouterr().err
    assert main(["train", "--cohort", str(small_cohort), "--output", str(tmp_path / "r"), "--set", "cohorts=[LUAD]"]) == 2
    assert "cohorts: ['LUAD'] are not in the cohort" in capsys.readouterr().err


def test_train_with_rna_refuses_a_fold_whose_training_cases_all_lack_rna(cohort_copy: Path, tmp_path: Path, capsys) -> None:
    slides = pd.read_parquet(cohort_copy / "slides.parquet")
    validation_cases = set(slides.loc[slides["fold"] == 0, "case_id"])
    rna = pd.read_parquet(cohort_copy / "rna.parquet")
    rna[rna["case_id"].isin(validation_cases)].to_parquet(cohort_copy / "rna.parquet", index=False)
    output = tmp_path / "r"
    overrides = ["--set", "fold=0", "--set", "model.modalities=[wsi, rna]"]
    assert main(["train", "--cohort", str(cohort_copy), "--output", str(output), *overrides]) == 2
    assert "no training case of fold 0 has a row in" in capsys.readouterr().err and not output.exists()


def test_analysis_commands_name_what_is_not_a_study_or_a_model(tmp_path: Path, capsys) -> None:
    assert main(["analyze", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a study folder" in capsys.readouterr().err
    assert main(["select", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a study folder" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--cohort", str(tmp_path), "--out", str(tmp_path / "p.parquet")]) == 2
    assert f"{tmp_path / 'model.json'}: not found" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


def test_help_imports_no_heavy_package() -> None:
    """``modaltune --help`` (and building the parser of every command) must start in about a
    second: each command imports torch, scikit-learn, Ray, ... only when it runs."""
    heavy = ("torch", "sklearn", "ray", "scipy", "lifelines", "transformers", "deepspeed", "optuna")
    probe = "import sys; from cli.main import build_parser; build_parser(); print(' '.join(sorted(set(sys.modules))))"
    loaded = set(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split())
    assert not [name for name in heavy if name in loaded]
    help_text = subprocess.run([str(Path(sys.executable).with_name("modaltune")), "--help"], check=True, capture_output=True, text=True)
    assert "import-h5" in help_text.stdout and "predict" in help_text.stdout


def test_study_is_the_command_form_of_sweeps_ablation(tmp_path: Path) -> None:
    """`modaltune study` takes sweeps/ablation.py's options and gives its exit codes: a spec with
    an unknown key is bad input (2), refused before Ray starts, and nothing is written."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ncohort: nowhere\nepochz: 3\n", encoding="utf-8")
    console = Path(sys.executable).with_name("modaltune")
    done = subprocess.run(
        [str(console), "study", "--study", str(spec), "--storage", str(tmp_path / "studies")],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "epochz" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "studies" / "bad").exists()
