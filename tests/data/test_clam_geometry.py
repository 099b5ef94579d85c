"""CLAM's patching, from its ``coords`` attributes or from the slide table, puts 40x and 20x scans
on one tile grid where their magnification is known, and refuses a mix it cannot place."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort, validate_cohort
from tests.feature_files import write_clam_h5


@pytest.fixture
def source(small_cohort: Path) -> Cohort:
    return Cohort(small_cohort)


def _at_40x(source: Cohort) -> list[str]:
    return list(source.slides["slide_id"])[::3]


def _slides_csv(source: Cohort, path: Path, **columns: list) -> Path:
    source.slides.drop(columns=["fold"]).assign(**columns).to_csv(path, index=False)
    return path


def _magnification(source: Cohort) -> list[float]:
    return [40.0 if s in _at_40x(source) else 20.0 for s in source.slides["slide_id"]]


def _import(h5_dir: Path, slides: Path, out: Path, *extra: str) -> int:
    return main(["import-h5", str(h5_dir), "--slides", str(slides), str(out), "--folds", "4", *extra])


def _same_grid(source: Cohort, out: Path, tile: int = 256) -> None:
    imported = Cohort(out)
    assert imported.manifest.tile_size_px == tile
    for slide_id in source.slides["slide_id"]:
        np.testing.assert_array_equal(imported.slide_features(slide_id).coords, source.slide_features(slide_id).coords)
    assert validate_cohort(out).ok


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def test_clam_attributes_and_the_scans_magnification_put_40x_and_20x_on_one_grid(
    source: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """40x scans patched at level 0 with 512 px, 20x ones with 256 px: the same tissue per tile,
    which the slide table's magnification column says; without it the mix is refused, naming slides."""
    write_clam_h5(source, tmp_path / "h5", {s: 512 for s in _at_40x(source)})
    with_magnification = _slides_csv(source, tmp_path / "slides.csv", magnification=_magnification(source))
    assert _import(tmp_path / "h5", with_magnification, tmp_path / "out") == 0
    _same_grid(source, tmp_path / "out")

    without = _slides_csv(source, tmp_path / "plain.csv")
    assert _import(tmp_path / "h5", without, tmp_path / "refused") == 2
    error = _error(capsys)
    first_40x, first_20x = _at_40x(source)[0], source.slides["slide_id"][1]
    assert "27 slide(s) with 512-px level-0 patches" in error and "53 slide(s) with 256-px level-0 patches" in error, error
    assert first_40x in error and first_20x in error and "'magnification' column" in error, error
    assert not (tmp_path / "refused").exists()


def test_a_magnification_column_that_shows_different_tissue_per_tile_is_refused(
    source: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """256-px level-0 patches of 40x and of 20x scans cover a quarter and a whole of the same tissue."""
    write_clam_h5(source, tmp_path / "h5", {})
    slides = _slides_csv(source, tmp_path / "slides.csv", magnification=_magnification(source))
    assert _import(tmp_path / "h5", slides, tmp_path / "out") == 2
    error = _error(capsys)
    assert "256-px level-0 patches at 40x" in error and "256-px level-0 patches at 20x" in error, error
    assert _at_40x(source)[0] in error and source.slides["slide_id"][1] in error


def test_clam_patching_at_a_lower_level_is_read_in_level0_pixels(source: Cohort, tmp_path: Path) -> None:
    """patch_level 1 of a TCGA .svs (downsample about 4): 256-px patches are 1024 level-0 pixels."""
    write_clam_h5(source, tmp_path / "h5", {s: 1024 for s in source.slides["slide_id"]}, patch_level=1, downsample=4.0003)
    assert _import(tmp_path / "h5", _slides_csv(source, tmp_path / "slides.csv"), tmp_path / "out") == 0
    imported = Cohort(tmp_path / "out")
    assert imported.manifest.tile_size_px == 1024
    first = source.slides["slide_id"][0]
    np.testing.assert_array_equal(imported.slide_features(first).coords, source.slide_features(first).coords * 4)


def test_files_without_attributes_take_their_patch_size_from_the_slide_table(
    source: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CLAM's h5_files carry no attributes (extract_features_fp.py writes none): a tile_size_px
    column says each slide's level-0 patch, the magnification column what it covers."""
    level0 = {s: 512 for s in _at_40x(source)}
    write_clam_h5(source, tmp_path / "h5", level0, attrs=False)
    sizes = [level0.get(s, 256) for s in source.slides["slide_id"]]
    slides = _slides_csv(source, tmp_path / "slides.csv", tile_size_px=sizes, magnification=_magnification(source))
    assert _import(tmp_path / "h5", slides, tmp_path / "out") == 0
    _same_grid(source, tmp_path / "out")

    assert _import(tmp_path / "h5", _slides_csv(source, tmp_path / "sizes.csv", tile_size_px=sizes), tmp_path / "o2") == 2
    assert "'magnification' column" in _error(capsys)


def test_a_slide_table_that_contradicts_the_files_is_refused(source: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_clam_h5(source, tmp_path / "h5", {})
    first = source.slides["slide_id"][0]
    sizes = [512 if s == first else 256 for s in source.slides["slide_id"]]
    assert _import(tmp_path / "h5", _slides_csv(source, tmp_path / "slides.csv", tile_size_px=sizes), tmp_path / "out") == 2
    error = _error(capsys)
    assert first in error and "tile_size_px 512" in error and "256" in error, error

    bad = _slides_csv(source, tmp_path / "bad.csv", magnification=["forty"] + [20] * (len(sizes) - 1))
    assert _import(tmp_path / "h5", bad, tmp_path / "out") == 2
    error = _error(capsys)
    assert "magnification" in error and "'forty'" in error and first in error, error


def test_tile_size_is_for_files_without_attributes(source: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_clam_h5(source, tmp_path / "h5", {})
    slides = _slides_csv(source, tmp_path / "slides.csv")
    assert _import(tmp_path / "h5", slides, tmp_path / "out", "--tile-size", "512") == 2
    assert "--tile-size 512 but the files say" in _error(capsys)
    first = source.slides["slide_id"][0]
    with h5py.File(tmp_path / "h5" / f"{first}.h5", "a") as handle:
        handle["coords"].attrs.clear()
    assert _import(tmp_path / "h5", slides, tmp_path / "out") == 2
    error = _error(capsys)
    assert "79 slide(s)" in error and first in error and "tile_size_px" in error, error
    tile_sizes = [256 if s == first else None for s in source.slides["slide_id"]]
    pd.read_csv(slides).assign(tile_size_px=tile_sizes).to_csv(tmp_path / "one.csv", index=False)
    assert _import(tmp_path / "h5", tmp_path / "one.csv", tmp_path / "out") == 0
    _same_grid(source, tmp_path / "out")
