"""A TCGA-shaped cohort as users bring it, through import -> validate -> a small study ->
predict for new patients (issue: real cohorts as they come).

The cohort: RCC (3 subtypes, one with 2 cases), GBMLGG with second slides for some patients,
BRCA with no deaths; about a fifth of cases without RNA; TRIDENT files with every third slide a
40x scan patched at 20x; a cBioPortal-style table (barcodes, no case_id, OS_MONTHS / OS_STATUS,
'[Not Available]', 'MALE', 'Stage IIIA', 'T1b', 'cM0 (i+)'). The same features written as CLAM
h5 and pt files and as STAMP files import to the same tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from modaltune.cli.main import main
from modaltune.data import Cohort, SynthConfig, generate_cohort, validate_cohort
from tests.feature_files import tcga_shaped, write_clam, write_stamp, write_trident
from tests.studyproc import REPO, finish_study, start_study, write_spec

pytestmark = pytest.mark.slow

SOURCE = SynthConfig(
    cohorts=("RCC", "GBMLGG", "BRCA"), slides_per_cohort=20, seed=3, feature_dim=16, min_tiles=8, max_tiles=24,
    n_genes=40, n_pathways=4, n_folds=2, rna_missing_fraction=0.2,
)


@dataclass(frozen=True)
class Bundle:
    """The files a user has: features (several layouts), a cBioPortal-style table, RNA, pathways."""

    root: Path
    source: Cohort
    slides_csv: Path
    rna_csv: Path
    gene_groups: Path
    slide_ids: dict[str, str]  # source slide id -> barcode
    case_ids: dict[str, str]  # source case id -> barcode

    def features(self, layout: str) -> Path:
        """The source's features renamed to barcodes, written as ``layout`` (once)."""
        folder = self.root / layout
        if folder.exists():
            return folder / "pt_files" if layout == "clam-pt" else folder
        renamed = _renamed(self.source, self.root / "renamed", self.slide_ids)
        if layout == "trident":
            write_trident(renamed, folder, {s: 2 for s in list(renamed.slides["slide_id"])[::3]})
        elif layout == "clam-pt":
            return write_clam(renamed, folder)
        elif layout == "stamp":
            write_stamp(renamed, folder, tile_size_um=128.0, tile_size_px=256)
        return folder

    def import_(self, layout: str, out: Path, *extra: str) -> int:
        return main([
            "import-h5", str(self.features(layout)), "--slides", str(self.slides_csv), str(out), "--folds", "2",
            "--rna", str(self.rna_csv), "--gene-groups", str(self.gene_groups), *extra,
        ])


def _renamed(source: Cohort, root: Path, slide_ids: dict[str, str]) -> Cohort:
    """The source cohort with barcode slide ids (feature files renamed), for the writers."""
    if not root.exists():
        root.mkdir()
        (root / "features").mkdir()
        for old, new in slide_ids.items():
            (root / "features" / f"{new}.arrow").symlink_to(source.layout.feature_file(old))
        for name in ("cohort.json", "labels.yaml"):
            (root / name).symlink_to(source.layout.root / name)
        source.slides.assign(slide_id=source.slides["slide_id"].map(slide_ids)).to_parquet(root / "slides.parquet", index=False)
    return Cohort(root)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("tcga")
    source = Cohort(generate_cohort(root / "source", SOURCE).root)
    _, csv, ours = tcga_shaped(source, root / "table")
    table = pd.read_csv(csv)
    kirp = ours.loc[ours["subtype"] == "KIRP", "case_id"].unique()
    table.loc[ours["case_id"].isin(kirp[2:]).to_numpy(), "subtype"] = "KIRC"  # a 2-case subtype
    table.loc[(ours["cohort"] == "BRCA").to_numpy(), "event"] = "0:LIVING"  # a cancer type with no deaths
    table.rename(columns={"time": "OS_MONTHS", "event": "OS_STATUS", "age": "AGE"}).to_csv(csv, index=False)
    case_ids = dict(zip(source.slides["case_id"], ours["case_id"], strict=True))
    rna = pd.read_parquet(source.layout.rna)
    rna.assign(case_id=rna["case_id"].map(case_ids)).to_csv(root / "rna.csv", index=False)
    return Bundle(root, source, csv, root / "rna.csv", source.layout.gene_groups,
                  dict(zip(source.slides["slide_id"], ours["slide_id"], strict=True)), case_ids)


def test_every_feature_layout_imports_to_the_same_cohort(bundle: Bundle, tmp_path: Path) -> None:
    assert bundle.import_("trident", tmp_path / "trident") == 0
    reference = Cohort(tmp_path / "trident")
    report = validate_cohort(reference.layout.root)
    assert report.ok and any("no RNA row" in str(w) for w in report.warnings), report.warnings
    assert len(report.warnings) == 2 and any("BRCA" in str(w) and "death" in str(w) for w in report.warnings)  # no BRCA deaths, by design
    assert len(reference.case_ids) - len(reference.modality_cases("rna")) >= 0.15 * len(reference.case_ids)
    assert reference.slides.groupby("case_id").size().max() > 1
    assert reference.slides.groupby("subtype")["case_id"].nunique()["KIRP"] == 2
    assert reference.slides.loc[reference.slides["cohort"] == "BRCA", "event"].eq(0).all()
    for old, new in bundle.slide_ids.items():  # 40x scans rescaled onto the 20x grid
        np.testing.assert_array_equal(reference.slide_features(new).coords, bundle.source.slide_features(old).coords)
    for layout in ("clam-pt", "stamp"):
        assert bundle.import_(layout, tmp_path / layout) == 0, layout
        imported = Cohort(tmp_path / layout)
        assert validate_cohort(imported.layout.root).ok
        pd.testing.assert_frame_equal(imported.slides, reference.slides)
        for slide_id in reference.slides["slide_id"]:
            a, b = reference.slide_features(slide_id), imported.slide_features(slide_id)
            np.testing.assert_array_equal(a.features, b.features)
            np.testing.assert_array_equal(a.coords, b.coords)


def test_a_study_on_it_compares_cells_on_the_same_cases_and_its_model_scores_new_patients(bundle: Bundle, tmp_path: Path) -> None:
    cohort_dir = tmp_path / "cohort"
    assert bundle.import_("trident", cohort_dir) == 0
    smoke = yaml.safe_load((REPO / "sweeps" / "studies" / "smoke.yaml").read_text())
    spec = write_spec(tmp_path / "tcga_shaped.yaml", "smoke", {
        "cohort": str(cohort_dir), "synthetic": None,
        "factors": {"modalities": [["wsi"], ["wsi", "rna"], ["wsi", "rna", "clinical"]]},
        "train": smoke["train"] | {"optim": {"lr": 0.004, "epochs": 2, "warmup_epochs": 1}},
    })
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=900)
    assert code == 0, output[-4000:]
    study = tmp_path / "studies" / "tcga_shaped"
    results = pd.read_parquet(study / "results.parquet")
    assert results["val_BRCA/c_index"].isna().all() and results["val_RCC/c_index"].notna().all()
    predictions = pd.concat(
        pd.read_parquet(p, columns=["case_id", "fold", "cell", "risk"]) for p in (study / "predictions").glob("*/*/epoch_*.parquet")
    )
    per_cell = predictions.groupby(["fold", "cell"])["case_id"].agg(frozenset)
    assert per_cell.groupby(level="fold").nunique().eq(1).all() and predictions["risk"].notna().all()
    assert set(predictions["case_id"]) == set(Cohort(cohort_dir).case_ids)

    # New patients: the same slides as CLAM pt files, without outcomes; RNA for those that have it.
    new = tmp_path / "new"
    pd.read_csv(bundle.slides_csv).drop(columns=["subtype", "OS_MONTHS", "OS_STATUS"]).to_csv(tmp_path / "new.csv", index=False)
    assert main(["import-h5", str(bundle.features("clam-pt")), "--slides", str(tmp_path / "new.csv"), str(new), "--for-prediction",
                 "--rna", str(bundle.rna_csv), "--gene-groups", str(bundle.gene_groups)]) == 0
    assert main(["predict", str(study / "best"), "--cohort", str(new), "--out", str(tmp_path / "new.parquet")]) == 0
    scored = pd.read_parquet(tmp_path / "new.parquet")
    assert sorted(scored["case_id"]) == sorted(bundle.case_ids.values()) and scored["risk"].notna().all()
