"""``import-h5 --overwrite`` replaces only a cohort (or an empty folder), never a user's folder
or an input, and says what it replaced; a read-only OUT_DIR is refused before converting."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort
from tests.feature_files import write_clam, write_trident


@pytest.fixture
def features(small_cohort: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A TRIDENT job folder (features and patches) and a slide table beside it."""
    source = Cohort(small_cohort)
    job = tmp_path / "trident_job"
    write_trident(source, job / "20x_256px_0px_overlap" / "features_uni", {})
    (job / "20x_256px_0px_overlap" / "patches").mkdir()
    (job / "20x_256px_0px_overlap" / "patches" / "coords.h5").write_bytes(b"patches")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    return job / "20x_256px_0px_overlap" / "features_uni", tmp_path / "slides.csv"


def _import(h5_dir: Path, slides: Path, out: Path, *extra: str) -> int:
    return main(["import-h5", str(h5_dir), "--slides", str(slides), str(out), "--folds", "4", *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_overwrite_never_replaces_an_input_or_a_folder_that_holds_one(
    features: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5_dir, slides = features
    job = h5_dir.parent.parent
    before = _snapshot(job)
    for out, relation in ((h5_dir, "is an input"), (job, "holds an input"), (h5_dir.parent, "holds an input")):
        assert _import(h5_dir, slides, out, "--overwrite") == 2
        line = _one_error_line(capsys)
        assert relation in line and str(h5_dir) in line, line
    assert _snapshot(job) == before

    # The slide table, as OUT_DIR's content, is an input as much as the features are.
    user = tmp_path / "project"
    user.mkdir()
    shutil.copy(slides, user / "slides.csv")
    assert _import(h5_dir, user / "slides.csv", user, "--overwrite") == 2
    assert "holds an input of this import, --slides" in _one_error_line(capsys)
    assert (user / "slides.csv").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_cohort_and_names_what_is_in_it(
    features: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5_dir, slides = features
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("four years")
    (thesis / "figures").mkdir()
    assert _import(h5_dir, slides, thesis, "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "not a cohort" in line and "thesis.txt" in line and "figures/" in line, line
    assert (thesis / "thesis.txt").read_text() == "four years"

    # A cohort the user has put a file of their own into is not replaced either.
    cohort = tmp_path / "cohort"
    assert _import(h5_dir, slides, cohort) == 0
    (cohort / "notes.md").write_text("mine")
    assert _import(h5_dir, slides, cohort, "--overwrite") == 2
    assert "notes.md" in _one_error_line(capsys)
    assert (cohort / "notes.md").read_text() == "mine"


def test_overwrite_replaces_a_cohort_or_an_empty_folder_and_says_so(
    features: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    h5_dir, slides = features
    cohort, empty = tmp_path / "cohort", tmp_path / "empty"
    empty.mkdir()
    assert _import(h5_dir, slides, cohort) == 0
    with caplog.at_level(logging.INFO):
        assert _import(h5_dir, slides, cohort, "--overwrite") == 0
        assert _import(h5_dir, slides, empty, "--overwrite") == 0
    replaced = [r.getMessage() for r in caplog.records if "replaced" in r.getMessage()]
    assert replaced == [
        f"{cohort}: replaced the cohort that was there (80 slide feature files, 4 folds) (--overwrite)",
        f"{empty}: replaced an empty folder (--overwrite)",
    ]
    assert len(Cohort(empty).slides) == 80


def test_a_cohort_whose_rna_is_an_input_is_not_overwritten(
    small_cohort: Path, features: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5_dir, slides = features
    cohort = tmp_path / "old"
    shutil.copytree(small_cohort, cohort)
    rna = ["--rna", str(cohort / "rna.parquet"), "--gene-groups", str(cohort / "gene_groups.json")]
    assert _import(h5_dir, slides, cohort, "--overwrite", *rna) == 2
    assert "holds an input of this import, --rna" in _one_error_line(capsys)
    assert (cohort / "rna.parquet").exists()


def test_clam_coordinates_beside_pt_files_are_an_input(small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = Cohort(small_cohort)
    pt_files = write_clam(source, tmp_path / "clam")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    h5_files = tmp_path / "clam" / "h5_files"
    assert _import(pt_files, tmp_path / "slides.csv", h5_files, "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "is an input" in line and "h5_files" in line, line
    assert len(list(h5_files.glob("*.h5"))) == 80


def test_a_new_cohort_inside_an_input_is_refused_before_anything_is_written(
    features: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    h5_dir, slides = features
    before = _snapshot(h5_dir)
    assert _import(h5_dir, slides, h5_dir / "cohort") == 2
    assert "lies inside an input of this import" in _one_error_line(capsys)
    assert _snapshot(h5_dir) == before and not list(h5_dir.glob(".cohort*"))


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of this test's own, remounted read-only (needs root and mount, as on CI machines)."""
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)]
    mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_read_only_out_dir_is_refused_in_one_line(
    features: tuple[Path, Path], read_only_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h5_dir, slides = features
    assert _import(h5_dir, slides, read_only_folder / "cohort") == 2
    line = _one_error_line(capsys)
    assert "not writable" in line and "read-only" in line and str(read_only_folder) in line, line
