"""CLAM/Trident .h5 files round-trip into the cohort format bit for bit."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from modaltune.cli import main
from modaltune.data import Cohort, H5ImportError, import_h5_cohort, validate_cohort


def _export_h5(cohort: Cohort, h5_dir: Path, *, leading_batch_axis: bool = False) -> None:
    h5_dir.mkdir()
    for slide_id in cohort.slides["slide_id"]:
        slide = cohort.slide_features(slide_id)
        features = slide.features.astype(np.float32)
        with h5py.File(h5_dir / f"{slide_id}.h5", "w") as handle:
            handle["features"] = features[None] if leading_batch_axis else features
            handle["coords"] = slide.coords.astype(np.int64)


def test_round_trip_without_folds_assigns_case_level_folds(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    _export_h5(source, tmp_path / "h5", leading_batch_axis=True)
    csv = tmp_path / "slides.csv"
    source.slides.drop(columns=["fold"]).to_csv(csv, index=False)

    layout = import_h5_cohort(tmp_path / "h5", csv, tmp_path / "imported")
    assert validate_cohort(layout.root).ok
    imported = Cohort(layout.root)
    for slide_id in source.slides["slide_id"]:
        a, b = source.slide_features(slide_id), imported.slide_features(slide_id)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
    assert imported.slides.groupby("case_id")["fold"].nunique().max() == 1
    assert imported.manifest.feature_dim == source.manifest.feature_dim
    pd.testing.assert_series_equal(
        imported.slides.set_index("slide_id")["stage"], source.slides.set_index("slide_id")["stage"]
    )


def test_cli_import_with_rna_and_existing_folds(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    _export_h5(source, tmp_path / "h5")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    code = main(
        [
            "import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out"),
            "--rna", str(source.layout.rna), "--gene-groups", str(source.layout.gene_groups),
            "--labels", str(source.layout.labels), "--folds", "4",
        ]
    )
    assert code == 0
    imported = Cohort(tmp_path / "out")
    assert (imported.slides["fold"].to_numpy() == source.slides["fold"].to_numpy()).all()
    case = source.case_ids[0]
    np.testing.assert_array_equal(imported.rna_vector(case), source.rna_vector(case))


def test_bad_h5_inputs_are_all_reported_before_converting(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    _export_h5(source, tmp_path / "h5")
    slide_ids = list(source.slides["slide_id"])
    with h5py.File(tmp_path / "h5" / f"{slide_ids[0]}.h5", "a") as handle:
        del handle["coords"]
    (tmp_path / "h5" / f"{slide_ids[1]}.h5").unlink()
    with h5py.File(tmp_path / "h5" / f"{slide_ids[2]}.h5", "a") as handle:
        del handle["coords"]
        handle["coords"] = np.zeros((3, 2), np.int64)
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "out")
    message = str(error.value)
    assert f"{slide_ids[0]}: missing dataset(s) ['coords']" in message
    assert f"{slide_ids[1]}: h5 file not found" in message
    assert f"{slide_ids[2]}: coords shape (3, 2)" in message
    assert not (tmp_path / "out" / "features").exists()


def test_missing_csv_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "h5").mkdir()
    pd.DataFrame({"slide_id": ["a"], "case_id": ["c"]}).to_csv(tmp_path / "s.csv", index=False)
    assert main(["import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "s.csv"), str(tmp_path / "o")]) == 2
