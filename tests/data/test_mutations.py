"""A mutation panel as users bring it: a cBioPortal MAF imported with ``import-h5 --mutations``,
TCGA sample barcodes mapped to patients, invalid status values reported by ``validate``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort, validate_cohort
from modaltune.data.modalities import read_case_list, read_mutation_table
from tests.feature_files import write_h5

MAF_COLUMNS = ["Hugo_Symbol", "Entrez_Gene_Id", "Variant_Classification", "Tumor_Sample_Barcode"]


def _write_maf(path: Path, rows: list[tuple[str, str, str]]) -> None:
    """cBioPortal's ``data_mutations.txt``: a version comment, then tab-separated MAF columns."""
    frame = pd.DataFrame([(gene, 0, kind, sample) for gene, kind, sample in rows], columns=MAF_COLUMNS)
    path.write_text("#version 2.4\n" + frame.to_csv(sep="\t", index=False), encoding="utf-8")


def test_a_maf_is_imported_as_a_panel_and_cases_absent_from_it_lack_the_modality(small_cohort: Path, tmp_path: Path) -> None:
    source = Cohort(small_cohort)
    a, b, c = source.case_ids[:3]
    _write_maf(tmp_path / "data_mutations.txt", [
        ("TP53", "Missense_Mutation", a), ("KRAS", "Silent", a),
        ("TP53", "Nonsense_Mutation", b), ("EGFR", "Missense_Mutation", b), ("PIK3CA", "Missense_Mutation", c),
    ])
    write_h5(source, tmp_path / "h5")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    assert main([
        "import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out"),
        "--mutations", str(tmp_path / "data_mutations.txt"), "--mutation-genes", "TP53,KRAS,EGFR",
    ]) == 0
    imported = Cohort(tmp_path / "out")
    assert imported.modality_cases("mutations") == {a, b, c}
    np.testing.assert_array_equal(imported.modality_vector("mutations", a), [1, 0, 0])  # a silent KRAS change is wild-type
    np.testing.assert_array_equal(imported.modality_vector("mutations", b), [1, 0, 1])
    np.testing.assert_array_equal(imported.modality_vector("mutations", c), [0, 0, 0])
    assert imported.modality_vector("mutations", source.case_ids[3]) is None


def _write_case_list(path: Path, samples: list[str]) -> None:
    """cBioPortal's ``case_lists/cases_sequenced.txt``."""
    path.write_text(
        "cancer_study_identifier: demo_tcga\nstable_id: demo_tcga_sequenced\ncase_list_name: Samples with mutation data\n"
        "case_list_description: Samples with mutation data\ncase_list_ids: " + "\t".join(samples) + "\n",
        encoding="utf-8",
    )


def test_a_sequenced_case_without_mutations_is_wild_type_and_an_unlisted_case_is_not_sequenced(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    source = Cohort(small_cohort)
    a, b, quiet, unsequenced = source.case_ids[:4]
    _write_maf(tmp_path / "data_mutations.txt", [("TP53", "Missense_Mutation", a), ("KRAS", "Missense_Mutation", b)])
    _write_case_list(tmp_path / "cases_sequenced.txt", [a, b, quiet])
    write_h5(source, tmp_path / "h5")
    source.slides.to_csv(tmp_path / "slides.csv", index=False)
    command = [
        "import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out"),
        "--mutations", str(tmp_path / "data_mutations.txt"), "--mutation-genes", "TP53,KRAS",
        "--sequenced-cases", str(tmp_path / "cases_sequenced.txt"),
    ]
    assert main(command) == 0
    imported = Cohort(tmp_path / "out")
    assert imported.modality_cases("mutations") == {a, b, quiet}
    np.testing.assert_array_equal(imported.modality_vector("mutations", quiet), [0, 0])
    assert imported.modality_vector("mutations", unsequenced) is None

    _write_case_list(tmp_path / "cases_sequenced.txt", [a, quiet])  # b has a mutation but is not listed
    assert main([*command, "--overwrite"]) == 2
    assert f"1 case(s) with mutations are not in the list of sequenced cases ({b})" in capsys.readouterr().err


def test_tcga_sample_barcodes_become_patients_and_the_default_panel_is_the_frequent_genes(tmp_path: Path) -> None:
    maf = tmp_path / "data_mutations.txt"
    _write_maf(maf, [
        ("TP53", "Missense_Mutation", "TCGA-05-4244-01"), ("TP53", "Missense_Mutation", "TCGA-05-4249-01"),
        ("TTN", "Missense_Mutation", "TCGA-05-4249-01"), ("KRAS", "Missense_Mutation", "TCGA-05-4250-01"),
    ])
    table = read_mutation_table(maf, min_fraction=0.5)
    assert list(table["case_id"]) == ["TCGA-05-4244", "TCGA-05-4249", "TCGA-05-4250"]
    assert list(table.columns) == ["case_id", "TP53"] and list(table["TP53"]) == [1, 1, 0]
    # with the sequenced samples listed, the panel's frequency counts the wild-type ones too
    _write_case_list(
        tmp_path / "cases_sequenced.txt", ["TCGA-05-4244-01", "TCGA-05-4249-01", "TCGA-05-4250-01", "TCGA-05-4260-01", "TCGA-05-4262-01"]
    )
    table = read_mutation_table(maf, min_fraction=0.3, sequenced=read_case_list(tmp_path / "cases_sequenced.txt"))
    assert list(table["case_id"]) == ["TCGA-05-4244", "TCGA-05-4249", "TCGA-05-4250", "TCGA-05-4260", "TCGA-05-4262"]
    assert list(table.columns) == ["case_id", "TP53"] and list(table["TP53"]) == [1, 1, 0, 0, 0]


def test_a_status_other_than_0_or_1_is_a_problem_naming_case_and_gene(small_cohort: Path, tmp_path: Path) -> None:
    root = tmp_path / "cohort"
    shutil.copytree(small_cohort, root)
    cases = Cohort(root).case_ids
    table = pd.DataFrame({"case_id": cases, "TP53": [0] * len(cases), "KRAS": [1] * len(cases)})
    table.loc[1, "KRAS"] = 2
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), root / "mutations.parquet")
    report = validate_cohort(root)
    assert [str(p) for p in report.problems] == [
        f"mutations.parquet: case {cases[1]}, field 'KRAS': mutation status must be 0 or 1, not in 1 gene(s)"
    ]
