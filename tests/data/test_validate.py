"""Each validation error, produced by corrupting a copy of a good synthetic cohort."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modaltune.cli.main import main
from modaltune.data import (
    Cohort,
    CohortLayout,
    SynthConfig,
    generate_cohort,
    read_slide_features,
    validate_cohort,
    write_slide_features,
)
from tests.feature_files import write_h5


def _first_slide(root: Path) -> str:
    return str(pd.read_parquet(CohortLayout(root).slides)["slide_id"].iloc[0])


def _edit_slides(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = CohortLayout(root).slides
    pq.write_table(pa.Table.from_pandas(edit(pd.read_parquet(path)), preserve_index=False), path)


def _edit_rna(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = CohortLayout(root).rna
    pq.write_table(pa.Table.from_pandas(edit(pd.read_parquet(path)), preserve_index=False), path)


def _rewrite_features(root: Path, transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> None:
    slide_id = _first_slide(root)
    path = CohortLayout(root).feature_file(slide_id)
    slide = read_slide_features(path)
    features, coords = transform(np.array(slide.features), np.array(slide.coords))
    write_slide_features(path, features, coords, slide_id=slide_id)


def _missing_feature_file(root: Path) -> None:
    CohortLayout(root).feature_file(_first_slide(root)).unlink()


def _garbage_feature_file(root: Path) -> None:
    CohortLayout(root).feature_file(_first_slide(root)).write_bytes(b"this is not arrow" * 10)


def _truncated_feature_file(root: Path) -> None:
    path = CohortLayout(root).feature_file(_first_slide(root))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_width(root: Path) -> None:
    _rewrite_features(root, lambda f, c: (np.concatenate([f, f[:, :1]], axis=1), c))


def _coords_shape_mismatch(root: Path) -> None:
    slide_id = _first_slide(root)
    path = CohortLayout(root).feature_file(slide_id)
    slide = read_slide_features(path)
    n = slide.n_tiles
    three_columns = np.concatenate([slide.coords, np.zeros((n, 1), np.int32)], axis=1)
    batch = pa.record_batch(
        [
            pa.FixedSizeListArray.from_arrays(pa.array(np.array(slide.features).reshape(-1)), slide.features.shape[1]),
            pa.FixedSizeListArray.from_arrays(pa.array(three_columns.reshape(-1)), 3),
        ],
        names=["features", "coords"],
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _empty_bag(root: Path) -> None:
    _rewrite_features(root, lambda f, c: (f[:0], c[:0]))


def _nan_features(root: Path) -> None:
    def poison(f: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f[3, 2] = np.nan
        f[5, 0] = np.inf
        return f, c

    _rewrite_features(root, poison)


def _nan_rna(root: Path) -> None:
    def poison(rna: pd.DataFrame) -> pd.DataFrame:
        rna.iloc[0, 3] = np.nan
        return rna

    _edit_rna(root, poison)


def _set_first(column: str, value: object) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        def edit(slides: pd.DataFrame) -> pd.DataFrame:
            slides[column] = slides[column].astype(object) if isinstance(value, str) else slides[column]
            slides.loc[0, column] = value
            return slides

        _edit_slides(root, edit)

    return corrupt


def _duplicate_slide(root: Path) -> None:
    _edit_slides(root, lambda s: pd.concat([s, s.iloc[[1]]], ignore_index=True))


def _case_in_two_folds(root: Path) -> None:
    def edit(slides: pd.DataFrame) -> pd.DataFrame:
        case = slides["case_id"][slides["case_id"].duplicated()].iloc[0]
        rows = slides.index[slides["case_id"] == case]
        slides.loc[rows[0], "fold"] = (slides.loc[rows[1], "fold"] + 1) % 4
        return slides

    _edit_slides(root, edit)


def _ungrouped_rna_gene(root: Path) -> None:
    _edit_rna(root, lambda rna: rna.assign(EXTRA_GENE=1.0))


def _group_gene_not_in_rna(root: Path) -> None:
    path = CohortLayout(root).gene_groups
    groups = json.loads(path.read_text())
    first = next(iter(groups))
    groups[first].append("GHOST_GENE")
    path.write_text(json.dumps(groups))


def _missing_column(root: Path) -> None:
    _edit_slides(root, lambda s: s.drop(columns=["event"]))


def _case_without_rna(root: Path) -> None:
    _edit_rna(root, lambda rna: rna.iloc[1:])


def _tiles_off_the_grid(root: Path) -> None:
    _rewrite_features(root, lambda f, c: (f, c * 2 + 256 * 1000))  # a 40x slide read as 256-px tiles, and then some


def _duplicate_tile(root: Path) -> None:
    _rewrite_features(root, lambda f, c: (f, np.concatenate([c[:1], c[:-1]])))


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str, str]] = {
    # name: (corrupt, file the message names, field or '', words the message contains)
    "missing feature file": (_missing_feature_file, "features/", "", "not found"),
    "unreadable feature file": (_garbage_feature_file, "features/", "", "not a readable Arrow IPC file"),
    "truncated feature file": (_truncated_feature_file, "features/", "", "not a readable Arrow IPC file"),
    "wrong feature width": (_wrong_width, "features/", "features", "feature width 25 != cohort feature_dim 24"),
    "coords shape mismatch": (_coords_shape_mismatch, "features/", "coords", "coords shape"),
    "empty bag": (_empty_bag, "features/", "features", "empty bag"),
    "NaN/Inf in features": (_nan_features, "features/", "features", "2 of"),
    "NaN in RNA": (_nan_rna, "rna.parquet", "GENE", "NaN or Inf expression"),
    "non-positive time": (_set_first("time", 0.0), "slides.parquet", "time", "> 0"),
    "event not 0/1": (_set_first("event", 2), "slides.parquet", "event", "0 (censored) or 1 (death)"),
    "unknown subtype": (_set_first("subtype", "MADEUP"), "slides.parquet", "subtype", "'MADEUP' is not a BRCA subtype"),
    "duplicate slide_id": (_duplicate_slide, "slides.parquet", "slide_id", "duplicate slide_id"),
    "case in two folds": (_case_in_two_folds, "slides.parquet", "fold", "several folds"),
    "RNA gene not in group map": (_ungrouped_rna_gene, "gene_groups.json", "EXTRA_GENE", "missing from the group map"),
    "group gene not in RNA": (_group_gene_not_in_rna, "gene_groups.json", "GHOST_GENE", "not columns of rna.parquet"),
    "missing column": (_missing_column, "slides.parquet", "event", "required column is missing"),
    "bad clinical value": (_set_first("stage", "Stage IX"), "slides.parquet", "stage", "must be one of"),
    "tiles off the position grid": (_tiles_off_the_grid, "features/", "coords", "position grid of 256-px tiles"),
}


def test_duplicate_tile_positions_are_a_warning(cohort_copy: Path) -> None:
    _duplicate_tile(cohort_copy)
    report = validate_cohort(cohort_copy)
    assert report.ok
    assert [w for w in report.warnings if w.field == "coords" and "1 tile(s) share a grid cell" in w.message]


def test_the_clean_cohort_is_valid(small_cohort: Path) -> None:
    report = validate_cohort(small_cohort)
    assert report.ok, report.problems
    assert report.n_slides == 80


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_reported_with_file_and_field(name: str, cohort_copy: Path) -> None:
    corrupt, file, field, words = CORRUPTIONS[name]
    corrupt(cohort_copy)
    report = validate_cohort(cohort_copy)
    assert not report.ok
    matching = [p for p in report.problems if p.file.startswith(file) and field in p.field and words in p.message]
    assert matching, f"no problem matches {file!r}/{field!r}/{words!r}; got: {[str(p) for p in report.problems]}"
    if file.startswith("features/"):
        assert _first_slide(cohort_copy) in matching[0].where


def test_cli_exits_2_and_prints_every_problem(cohort_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _nan_features(cohort_copy)
    _set_first("event", 2)(cohort_copy)
    _ungrouped_rna_gene(cohort_copy)
    assert main(["validate", str(cohort_copy)]) == 2
    err = capsys.readouterr().err
    assert "NaN or Inf" in err and "field 'event'" in err and "EXTRA_GENE" in err
    assert "3 problem(s)" in err


def test_cases_without_rna_are_counted_or_refused_on_request(cohort_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing RNA is normal in TCGA: a counted warning, not a problem, unless complete cases are required."""
    _case_without_rna(cohort_copy)
    report = validate_cohort(cohort_copy)
    assert report.ok, report.problems
    (warning,) = [w for w in report.warnings if w.file == "rna.parquet"]
    assert "1 of" in warning.where and "no RNA row" in warning.message
    assert main(["validate", str(cohort_copy)]) == 0
    assert "warning: rna.parquet" in capsys.readouterr().err
    assert main(["validate", "--require-complete", str(cohort_copy)]) == 2
    err = capsys.readouterr().err
    assert "no RNA row (complete cases required)" in err and "1 problem(s)" in err
    cohort = Cohort(cohort_copy)
    assert len(cohort.modality_cases("rna")) == len(cohort.case_ids) - 1


def test_cli_exits_0_on_a_valid_cohort(small_cohort: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(small_cohort)]) == 0
    assert "OK (80 slides" in capsys.readouterr().out


def test_missing_manifest_names_the_file(cohort_copy: Path) -> None:
    CohortLayout(cohort_copy).manifest.unlink()
    report = validate_cohort(cohort_copy)
    assert any(p.file == "cohort.json" and "not found" in p.message for p in report.problems)


def test_folds_that_cannot_be_scored_are_refused_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """44 cases in 5 case folds (the issue's walk-through): folds without deaths, or with one
    subtype, score nothing; validate names them and the fold count that would score."""
    config = SynthConfig(
        cohorts=("BRCA", "NSCLC", "RCC", "GBMLGG"), slides_per_cohort=13, seed=7, feature_dim=8, min_tiles=4, max_tiles=8,
        n_genes=40, n_pathways=4, n_folds=5, censored_fraction=0.5,
    )
    root = generate_cohort(tmp_path / "small", config).root
    assert main(["validate", str(root)]) == 2
    err = capsys.readouterr().err
    assert "fold 0, GBMLGG, field 'event': validation cases: fewer deaths than a C-index needs (2), got 0 among 1 case" in err
    assert "field 'subtype': validation cases: fewer subtypes than subtype metrics need (2), got 2 cases, all KIRC" in err
    assert "5 of 5 folds cannot be scored (folds [0, 1, 2, 3, 4]); fix: --folds 2 lets every fold be scored" in err


def test_a_subtype_in_one_fold_only_is_never_learned_when_that_fold_validates(cohort_copy: Path) -> None:
    _edit_slides(cohort_copy, lambda s: s.assign(fold=s["fold"].where(s["subtype"] != "ILC", 0)))
    report = validate_cohort(cohort_copy)
    (training,) = [p for p in report.problems if p.message.startswith("training cases")]
    assert training.where == "fold 0, BRCA" and training.message == "training cases: a subtype to learn is missing, got no ILC case"
    assert {p.where for p in report.problems if "all IDC" in p.message} == {"fold 1, BRCA", "fold 2, BRCA", "fold 3, BRCA"}
    assert "fix: --folds 3 lets every fold be scored" in report.problems[-1].message


def test_what_no_split_of_the_cohort_can_give_is_a_warning(cohort_copy: Path) -> None:
    """A cancer type without deaths has no C-index in any fold whatever the folds; the others still score."""
    _edit_slides(cohort_copy, lambda s: s.assign(event=s["event"].where(s["cohort"] != "BRCA", 0)))
    report = validate_cohort(cohort_copy)
    assert report.ok, report.problems
    (warning,) = [w for w in report.warnings if w.field == "event"]
    assert warning.where == "cancer type BRCA" and warning.message.startswith("0 death(s) in all: no split into 2 or more folds")


def test_problems_of_one_kind_are_one_line_whatever_their_values(
    small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Survival times written "4.76 months": one line with the count and a few values, not one per value."""
    source = Cohort(small_cohort)
    write_h5(source, tmp_path / "h5")
    slides = source.slides.drop(columns=["fold"]).astype({"time": object})
    slides["time"] = [f"{t:.2f} months" for t in source.slides["time"]]
    slides.to_csv(tmp_path / "slides.csv", index=False)
    assert main(["import-h5", str(tmp_path / "h5"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "field 'time'" in line]
    assert len(lines) == 1, lines
    first = source.slides.iloc[0]
    assert lines[0].strip().startswith("80 x slides.csv, field 'time': survival time must be a finite number of months > 0 (e.g. ")
    assert f"slide {first['slide_id']}: '{first['time']:.2f} months'" in lines[0]
