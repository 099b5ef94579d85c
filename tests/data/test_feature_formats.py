"""CLAM pt_files and STAMP files import like TRIDENT's: the format detected and named once,
the coordinates put on the same tile grid, each format's own mistakes named in one line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort, H5ImportError, H5ImportOptions, import_h5_cohort, validate_cohort
from tests.feature_files import write_clam, write_stamp


def _same_tiles(source: Cohort, imported: Cohort) -> None:
    for slide_id in source.slides["slide_id"]:
        a, b = source.slide_features(slide_id), imported.slide_features(slide_id)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)


def test_clam_pt_files_take_their_coordinates_from_h5_files(small_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = Cohort(small_cohort)
    pt_files = write_clam(source, tmp_path / "clam")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    with caplog.at_level(logging.INFO, logger="modaltune.data.feature_formats"):
        imported = Cohort(import_h5_cohort(pt_files, tmp_path / "slides.csv", tmp_path / "out", H5ImportOptions(n_folds=4)).root)
    detected = f"{pt_files}: CLAM pt_files/ (tensors), coordinates from the h5_files/ beside them"
    assert [r.message for r in caplog.records if "CLAM pt_files" in r.message] == [detected]
    _same_tiles(source, imported)

    (pt_files / f"{source.slides['slide_id'][3]}.pt").write_bytes(b"not a tensor")
    with pytest.raises(H5ImportError, match=rf"{source.slides['slide_id'][3]}: not a readable torch file"):
        import_h5_cohort(pt_files, tmp_path / "slides.csv", tmp_path / "bad", H5ImportOptions(n_folds=4))
    shutil.rmtree(tmp_path / "clam" / "h5_files")
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(pt_files, tmp_path / "slides.csv", tmp_path / "bad", H5ImportOptions(n_folds=4))
    assert len(str(error.value).splitlines()) == 1 and "hold no tile coordinates" in str(error.value)


def test_stamp_micrometre_coordinates_land_on_the_tile_grid(small_cohort: Path, tmp_path: Path) -> None:
    """256-px tiles of 128 um (0.5 um per pixel, 20x): coordinates / 0.5 are the pixels the
    cohort had; the features were stored in float16 by STAMP and come back unchanged."""
    source = Cohort(small_cohort)
    write_stamp(source, tmp_path / "stamp", tile_size_um=128.0, tile_size_px=256)
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    slides = str(tmp_path / "slides.csv")
    assert main(["import-h5", str(tmp_path / "stamp"), "--slides", slides, str(tmp_path / "out"), "--folds", "4"]) == 0
    imported = Cohort(tmp_path / "out")
    assert imported.manifest.tile_size_px == 256
    _same_tiles(source, imported)
    assert validate_cohort(tmp_path / "out").ok

    first = source.slides["slide_id"][0]
    with h5py.File(tmp_path / "stamp" / f"{first}.h5", "a") as handle:
        handle.attrs["tile_size_um"] = 256.0
    tilings = rf"\(79 slide\(s\) with 128-um tiles of 256 px \(e.g. [^)]+\), 1 slide\(s\) with 256-um tiles of 256 px \(e.g. {first}\)"
    with pytest.raises(H5ImportError, match=rf"tiled differently {tilings}"):
        import_h5_cohort(tmp_path / "stamp", tmp_path / "slides.csv", tmp_path / "mixed", H5ImportOptions(n_folds=4))
    with h5py.File(tmp_path / "stamp" / f"{first}.h5", "a") as handle:
        del handle.attrs["tile_size_um"]
    with pytest.raises(H5ImportError, match=rf"{first}: coordinates in micrometres but the file has no \['tile_size_um'\]"):
        import_h5_cohort(tmp_path / "stamp", tmp_path / "slides.csv", tmp_path / "mixed", H5ImportOptions(n_folds=4))
    assert not (tmp_path / "mixed").exists()


def test_a_forced_format_that_does_not_fit_says_once_which_format_the_files_look_like(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Cohort(small_cohort)
    write_stamp(source, tmp_path / "stamp", tile_size_um=128.0, tile_size_px=256)
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    slides = str(tmp_path / "slides.csv")
    assert main(["import-h5", str(tmp_path / "stamp"), "--slides", slides, str(tmp_path / "out"), "--format", "h5"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "--format h5" in errors[0] and "look like 'stamp'" in errors[0] and "--format stamp" in errors[0], errors
    with pytest.raises(H5ImportError, match=r"feature format 'clam': choose from \['clam-pt', 'h5', 'stamp'\]"):
        import_h5_cohort(tmp_path / "stamp", tmp_path / "slides.csv", tmp_path / "out", H5ImportOptions(feature_format="clam"))


def test_one_problem_of_every_slide_is_one_line(small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = Cohort(small_cohort)
    write_stamp(source, tmp_path / "stamp", tile_size_um=128.0, tile_size_px=256)
    for path in (tmp_path / "stamp").glob("*.h5"):
        with h5py.File(path, "a") as handle:
            del handle["coords"]
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    assert main(["import-h5", str(tmp_path / "stamp"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "80 slides: missing dataset(s) ['coords']" in lines[1], lines
    assert str(tmp_path / "stamp" / f"{source.slides['slide_id'][0]}.h5") in lines[1]
