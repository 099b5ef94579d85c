"""CLAM/Trident .h5 files round-trip into the cohort format bit for bit."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort, H5ImportError, H5ImportOptions, import_h5_cohort, validate_cohort
from tests.feature_files import tcga_shaped, write_h5, write_trident


def test_round_trip_without_folds_assigns_case_level_folds(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    write_h5(source, tmp_path / "h5", leading_batch_axis=True)
    csv = tmp_path / "slides.csv"
    source.slides.drop(columns=["fold"]).to_csv(csv, index=False)

    layout = import_h5_cohort(tmp_path / "h5", csv, tmp_path / "imported", H5ImportOptions(n_folds=4))
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
    write_h5(source, tmp_path / "h5")
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
    np.testing.assert_array_equal(imported.modality_vector("rna", case), source.modality_vector("rna", case))


def test_bad_h5_inputs_are_all_reported_before_converting(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    write_h5(source, tmp_path / "h5")
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


def test_a_tcga_table_imports_as_it_comes(small_cohort: Path, tmp_path: Path) -> None:
    """GDC / cBioPortal values and barcodes map onto the cohort's vocabulary; the strict
    dialect reports the same table by kind of problem, with counts, and writes nothing."""
    source = Cohort(small_cohort)
    h5_dir, csv, ours = tcga_shaped(source, tmp_path)
    out = tmp_path / "strict"
    assert main(["import-h5", str(h5_dir), "--slides", str(csv), str(out), "--clinical-dialect", "strict"]) == 2
    assert not out.exists() and not list(tmp_path.glob(".strict*"))
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(h5_dir, csv, out, H5ImportOptions(clinical_dialect="strict"))
    assert "missing column(s) ['case_id']" in str(error.value)
    pd.read_csv(csv).assign(case_id=ours["case_id"]).to_csv(tmp_path / "with_cases.csv", index=False)
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(h5_dir, tmp_path / "with_cases.csv", out, H5ImportOptions(clinical_dialect="strict"))
    lines = str(error.value).splitlines()
    assert "nothing written" in lines[0]
    sex_line = next(line for line in lines if "field 'sex'" in line and "'FEMALE'" in line)
    count, rest = sex_line.strip().split(" x ", 1)  # every 'FEMALE' counted on the line (with 'MALE' where kinds merge values)
    assert rest.startswith("with_cases.csv") and int((ours["sex"] == "female").sum()) <= int(count) <= int(ours["sex"].notna().sum())
    assert len(lines) <= 10  # summarised by kind, not one line per slide
    assert not out.exists()

    imported = Cohort(import_h5_cohort(h5_dir, csv, tmp_path / "tcga", H5ImportOptions(n_folds=4)).root)
    got = imported.slides.set_index("slide_id").loc[ours["slide_id"]]
    assert list(got["case_id"]) == list(ours["case_id"])
    for column in ("sex", "stage", "t_stage", "n_stage", "m_stage", "event"):
        assert list(got[column].fillna("-")) == list(ours[column].fillna("-")), column
    np.testing.assert_array_equal(got["age"].to_numpy(float), ours["age"].to_numpy(float))
    substage = got["stage_detail"].where(got["stage"].isin(["Stage II", "Stage III"]))
    assert set(substage.dropna()) == {"Stage IIA", "Stage IIIA"}  # the substage kept beside the model's four levels

    # cBioPortal's column names read as ours; TCGA-CDR's OS.time (days) is named, not guessed;
    # slide ids written as the scans' file names name the feature files without the suffix.
    cbioportal = pd.read_csv(csv).rename(
        columns={"time": "OS_MONTHS", "event": "OS_STATUS", "age": "AGE", "stage": "AJCC_PATHOLOGIC_TUMOR_STAGE"}
    )
    cbioportal["slide_id"] = cbioportal["slide_id"] + np.where(cbioportal.index % 2 == 0, ".svs", ".NDPI")
    cbioportal.to_csv(tmp_path / "cbioportal.csv", index=False)
    renamed = Cohort(import_h5_cohort(h5_dir, tmp_path / "cbioportal.csv", tmp_path / "cbio", H5ImportOptions(n_folds=4)).root)
    pd.testing.assert_frame_equal(renamed.slides[imported.slides.columns], imported.slides)
    cbioportal.rename(columns={"OS_MONTHS": "OS.time"}).to_csv(tmp_path / "cdr.csv", index=False)
    with pytest.raises(H5ImportError, match=r"OS.time is in days: add a time column in months \(OS.time / 30.4375\)"):
        import_h5_cohort(h5_dir, tmp_path / "cdr.csv", tmp_path / "cdr")


def test_zero_survival_times_need_an_explicit_choice(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    write_h5(source, tmp_path / "h5")
    table = source.slides.drop(columns=["fold"])
    table.loc[table.index[:2], "time"] = 0.0
    table.to_csv(tmp_path / "slides.csv", index=False)
    with pytest.raises(H5ImportError, match="--zero-time drop"):
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "refused")
    options = H5ImportOptions(zero_time="drop", n_folds=4)
    dropped = Cohort(import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "drop", options).root)
    assert len(dropped.slides) == len(table) - 2
    options = H5ImportOptions(zero_time="epsilon", n_folds=4)
    kept = Cohort(import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "eps", options).root)
    assert sorted(kept.slides["time"])[:2] == [0.01, 0.01]


def test_a_failed_import_leaves_nothing_and_a_reimport_replaces_the_cohort_whole(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    write_h5(source, tmp_path / "h5")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    rna = H5ImportOptions(rna=source.layout.rna, gene_groups=source.layout.gene_groups, n_folds=4)
    out = tmp_path / "out"
    import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", out, rna)
    assert (out / "rna.parquet").exists()
    with pytest.raises(H5ImportError, match="--overwrite"):
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", out, H5ImportOptions(n_folds=4))
    import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", out, H5ImportOptions(n_folds=4, overwrite=True))
    assert not (out / "rna.parquet").exists(), "a re-import without --rna kept the old RNA"

    first = source.slides["slide_id"][0]
    with h5py.File(tmp_path / "h5" / f"{first}.h5", "a") as handle:
        handle["features"][0, 0] = np.inf
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "poisoned", H5ImportOptions(n_folds=4))
    assert f"slide {first}: 1 of" in str(error.value) and "NaN or Inf" in str(error.value)
    assert not (tmp_path / "poisoned").exists() and not list(tmp_path.glob(".poisoned*"))


def test_trident_attributes_put_40x_and_20x_scans_on_one_tile_grid(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    at_40x = {s: 2 for s in list(source.slides["slide_id"])[::3]}
    write_trident(source, tmp_path / "h5", at_40x)
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    imported = Cohort(import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "out", H5ImportOptions(n_folds=4)).root)
    assert imported.manifest.tile_size_px == 256
    for slide_id in source.slides["slide_id"]:
        np.testing.assert_array_equal(imported.slide_features(slide_id).coords, source.slide_features(slide_id).coords)
    with pytest.raises(H5ImportError, match="--tile-size 512 but the files say their patches are 256 px"):
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "o2", H5ImportOptions(n_folds=4, tile_size_px=512))


def test_slides_patched_at_other_magnifications_are_refused(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    write_trident(source, tmp_path / "h5", {})
    first = source.slides["slide_id"][0]
    with h5py.File(tmp_path / "h5" / f"{first}.h5", "a") as handle:
        handle["coords"].attrs.update(target_magnification=10.0)
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    expected = (
        r"patched differently \(79 slide\(s\) at 20x with 256-px patches \(e.g. [^)]+\), "
        rf"1 slide\(s\) at 10x with 256-px patches \(e.g. {first}\)"
    )
    with pytest.raises(H5ImportError, match=expected):
        import_h5_cohort(tmp_path / "h5", tmp_path / "slides.csv", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_trident_job_folder_is_named_once_not_per_slide(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    job = tmp_path / "trident_job"
    (job / "20x_256px_0px_overlap").mkdir(parents=True)
    write_h5(source, job / "20x_256px_0px_overlap" / "features_conch_v15")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    with pytest.raises(H5ImportError) as error:
        import_h5_cohort(job, tmp_path / "slides.csv", tmp_path / "out")
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "none of the 80 slides" in message
    assert "TRIDENT job folder" in message and "20x_256px_0px_overlap/features_conch_v15" in message


def test_the_cohort_tile_size_reaches_the_model() -> None:
    from modaltune.train.config import load_train_config

    model = load_train_config(None, ["model.modalities=[wsi]"]).model
    assert model.build({}, 32, 512).encoder.tile_size == 512
    overridden = load_train_config(None, ["model.modalities=[wsi]", "model.encoder_overrides={tile_size: 256}"]).model
    assert overridden.build({}, 32, 512).encoder.tile_size == 256


def test_site_preserved_folds_from_tcga_barcodes(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    h5_dir, csv, ours = tcga_shaped(source, tmp_path)
    out = tmp_path / "by_site"
    assert main(["import-h5", str(h5_dir), "--slides", str(csv), str(out), "--folds-by", "site", "--folds", "4"]) == 0
    imported = Cohort(out)
    assert list(imported.slides.set_index("slide_id").loc[ours["slide_id"], "site"]) == [c[5:7] for c in ours["case_id"]]
    assert imported.slides.groupby("site")["fold"].nunique().max() == 1
    assert validate_cohort(out).ok
    plain = tmp_path / "plain.csv"
    pd.read_csv(csv).assign(slide_id=[f"S{i}" for i in range(len(ours))], case_id=ours["case_id"].to_numpy()).to_csv(plain, index=False)
    with pytest.raises(H5ImportError, match="--folds-by site needs a 'site' column"):
        import_h5_cohort(h5_dir, plain, tmp_path / "no_site", H5ImportOptions(folds_by="site"))


def test_new_patients_import_without_outcomes_and_cannot_be_trained_on(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Cohort(small_cohort)
    h5_dir, csv, ours = tcga_shaped(source, tmp_path)
    table = pd.read_csv(csv).drop(columns=["time", "event"])
    unknown = ours["case_id"].isin(ours["case_id"].unique()[::2]).to_numpy()
    table["subtype"] = table["subtype"].where(~unknown, "[Not Available]")  # known for some cases
    table.to_csv(tmp_path / "new.csv", index=False)
    assert main(["import-h5", str(h5_dir), "--slides", str(tmp_path / "new.csv"), str(tmp_path / "refused")]) == 2
    assert "--for-prediction" in capsys.readouterr().err

    assert main(["import-h5", str(h5_dir), "--slides", str(tmp_path / "new.csv"), str(tmp_path / "new"), "--for-prediction"]) == 0
    new = Cohort(tmp_path / "new")
    assert not new.labelled and validate_cohort(new.layout.root).ok
    records = [new.record(c) for c in new.case_ids]
    assert all(r.event is None and np.isnan(r.time) for r in records)
    assert {r.subtype is None for r in records} == {True, False}
    capsys.readouterr()
    assert main(["train", "--cohort", str(new.layout.root), "--output", str(tmp_path / "run")]) == 2
    assert "imported for prediction" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("content", "expected"), [("", "is empty"), ("slide_id,case_id,cohort,subtype,time,event\n", "no slides")])
def test_an_empty_or_header_only_slide_table_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    (tmp_path / "h5").mkdir()
    (tmp_path / "slides.csv").write_text(content)
    assert main(["import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "slides.csv") in err[0] and expected in err[0], err
