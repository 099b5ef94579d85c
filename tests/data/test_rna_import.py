"""``import-h5 --rna``: a table keyed by TCGA sample or aliquot barcodes, or in another letter case,
reaches its patients; one that matches almost no case is refused; the user's RNA and gene-group
files are checked before any slide is converted, and problems name them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort
from tests.feature_files import tcga_shaped


@pytest.fixture
def tcga(small_cohort: Path, tmp_path: Path) -> tuple[Cohort, Path, Path, pd.DataFrame, dict[str, str]]:
    """The source cohort as TCGA has it; its RNA keyed by the patients' barcodes (``rna``)."""
    source = Cohort(small_cohort)
    h5_dir, csv, ours = tcga_shaped(source, tmp_path)
    barcode = dict(zip(source.slides["case_id"], ours["case_id"], strict=True))
    rna = pd.read_parquet(source.layout.rna)
    rna["case_id"] = rna["case_id"].map(barcode)
    return source, h5_dir, csv, rna, barcode


def _import(h5_dir: Path, csv: Path, out: Path, rna: Path, groups: Path) -> int:
    return main(["import-h5", str(h5_dir), "--slides", str(csv), str(out), "--folds", "4", "--rna", str(rna), "--gene-groups", str(groups)])


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    return "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("importing"))


def test_sample_and_aliquot_barcodes_and_letter_case_reach_their_patients(
    tcga: tuple[Cohort, Path, Path, pd.DataFrame, dict[str, str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, h5_dir, csv, rna, barcode = tcga
    rna = rna.copy()
    rna["case_id"] = [
        f"{p}-01A" if i % 4 == 0 else f"{p}-01A-11R-A144-07" if i % 4 == 1 else f"{p}-01".lower() if i % 4 == 2 else p.lower()
        for i, p in enumerate(rna["case_id"])
    ]
    first = rna["case_id"].iloc[0]
    metastasis = rna.iloc[[0]].assign(case_id=first.replace("-01A", "-06A"))
    metastasis.iloc[0, 1:] = 99.0  # another sample of the same patient, not the primary tumour
    stranger = rna.iloc[[1]].assign(case_id="TCGA-ZZ-9999-01A")
    table = pd.concat([metastasis, rna, stranger], ignore_index=True)
    table.to_csv(tmp_path / "rna.csv", index=False)
    with caplog.at_level(logging.INFO):
        assert _import(h5_dir, csv, tmp_path / "out", tmp_path / "rna.csv", source.layout.gene_groups) == 0
    imported = Cohort(tmp_path / "out")
    for case in source.case_ids:
        np.testing.assert_array_equal(imported.modality_vector("rna", barcode[case]), source.modality_vector("rna", case))
    messages = [r.getMessage() for r in caplog.records]
    assert any("primary tumour" in m and first in m and "-06A" in m for m in messages), messages
    unknown = [m for m in messages if "TCGA-ZZ-9999-01A" in m]
    assert len(unknown) == 1 and "1 RNA row" in unknown[0] and "rna.csv" in unknown[0], unknown


def test_an_rna_table_that_matches_almost_no_case_is_refused(
    tcga: tuple[Cohort, Path, Path, pd.DataFrame, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, h5_dir, csv, rna, _ = tcga
    other = rna.assign(case_id=[f"PATIENT-{i:03d}" for i in range(len(rna))])
    other.loc[other.index[:3], "case_id"] = rna["case_id"].iloc[:3].to_numpy()  # three of 66 match
    other.to_parquet(tmp_path / "rna.parquet")
    assert _import(h5_dir, csv, tmp_path / "out", tmp_path / "rna.parquet", source.layout.gene_groups) == 2
    error = _error(capsys)
    assert "3 of its 66 row(s)" in error and "3 of the 66 cases" in error, error
    assert "PATIENT-003" in error and rna["case_id"].iloc[3] in error, error
    assert not (tmp_path / "out").exists()


def test_rna_and_gene_group_problems_are_found_before_any_slide_and_name_the_users_files(
    tcga: tuple[Cohort, Path, Path, pd.DataFrame, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, h5_dir, csv, rna, _ = tcga
    first = pd.read_csv(csv)["slide_id"].iloc[0]
    with h5py.File(h5_dir / f"{first}.h5", "a") as handle:  # found only when the slide is converted
        handle["features"][0, 0] = np.nan
    groups = json.loads(source.layout.gene_groups.read_text())
    name = next(iter(groups))
    groups[name] = [*groups[name], "NOT_A_GENE"]
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    bad = rna.copy()
    bad.iloc[2, 5] = np.nan
    bad.to_csv(tmp_path / "rna.csv", index=False)
    assert _import(h5_dir, csv, tmp_path / "out", tmp_path / "rna.csv", tmp_path / "groups.json") == 2
    error = _error(capsys)
    assert "NaN or Inf" not in error.split(str(tmp_path / "rna.csv"))[0], "a slide was converted before the RNA was checked"
    assert f"{tmp_path / 'groups.json'}" in error and "NOT_A_GENE" in error and "rna.csv" in error, error
    assert f"{tmp_path / 'rna.csv'}" in error and bad["case_id"].iloc[2] in error, error
    assert "rna.parquet" not in error and "(e.g. )" not in error, error
    assert first not in error, error

    rna.drop(columns=["case_id"]).to_csv(tmp_path / "no_ids.csv", index=False)
    assert _import(h5_dir, csv, tmp_path / "out", tmp_path / "no_ids.csv", source.layout.gene_groups) == 2
    error = _error(capsys)
    assert str(tmp_path / "no_ids.csv") in error and "case_id" in error and len(error.splitlines()) == 1, error
    assert _import(h5_dir, csv, tmp_path / "out", tmp_path / "missing.csv", source.layout.gene_groups) == 2
    assert f"{tmp_path / 'missing.csv'}: file not found" in _error(capsys)
    assert not (tmp_path / "out").exists()
