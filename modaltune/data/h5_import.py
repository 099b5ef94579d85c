"""Import TRIDENT / CLAM / STAMP tile features into the cohort format.

Those extractors write one file per slide (``modaltune.data.feature_formats`` reads each
layout and detects which one a folder holds). The user brings a slide table (CSV) with the
labels; folds are assigned per case when the table has none.

Everything is checked before the first feature file is converted (the table's values with the
validator's own row checks, then every h5 file's metadata), and the cohort is written to a
hidden folder beside ``out_dir`` that is renamed into place at the end: a failed import leaves
nothing that looks like a cohort, and ``overwrite`` replaces an old cohort whole (its RNA too),
never a user's folder or an input (``modaltune.data.import_target``).
TCGA / cBioPortal values are mapped by ``modaltune.data.tcga_tables`` unless the dialect is
``strict``.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from modaltune.atomic import write_json_atomic, write_parquet_atomic
from modaltune.data.clinical import CLINICAL_COLUMNS
from modaltune.data.feature_formats import FeatureFormat, SlideFileProblem, detect_format
from modaltune.data.features import write_slide_features
from modaltune.data.folds import assign_case_folds
from modaltune.data.import_options import (
    CLINICAL_DIALECTS,
    FOLD_GROUPINGS,
    ZERO_TIME_EPSILON,
    ZERO_TIME_POLICIES,
    H5ImportOptions,
)
from modaltune.data.import_target import check_import_target, move_into_place
from modaltune.data.labels import LabelSpec, default_labels, load_labels, save_labels
from modaltune.data.layout import (
    LABEL_COLUMNS,
    OPTIONAL_CASE_COLUMNS,
    SAFE_SLIDE_ID,
    SLIDE_COLUMNS,
    CohortLayout,
    CohortManifest,
    write_manifest,
)
from modaltune.data.modalities import COHORT_MODALITIES, read_case_list, read_mutation_table
from modaltune.data.rna_import import RnaInput, read_rna_input
from modaltune.data.tcga_tables import missing_time_hint, normalise_tcga_table, rename_cbioportal_columns
from modaltune.data.tile_geometry import (
    CohortGeometry,
    TileGeometry,
    cohort_geometry,
    combine_geometries,
    rescale_coords,
    slide_table_geometry,
)
from modaltune.data.validate import fold_problems, slide_table_problems, summarise_problems, validate_cohort
from modaltune.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]


DEFAULT_TILE_SIZE = 256  # GigaPath's: 256-px tiles at 20x
SHARED_PROBLEM = 3  # slides with one problem listed one by one; more are one line with examples
WSI_SUFFIXES = ("svs", "ndpi", "tif", "tiff", "mrxs", "scn", "czi", "bif", "vms", "vmu", "qptiff", "svslide")  # OpenSlide's


class H5ImportError(InputError):
    """The import inputs are inconsistent; the message lists every problem found."""


def import_h5_cohort(
    h5_dir: str | os.PathLike[str],
    slides_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: H5ImportOptions | None = None,
    progress: Progress | None = None,
) -> CohortLayout:
    """Convert ``h5_dir/<slide_id>.h5`` for every row of ``slides_csv`` into a cohort at ``out_dir``.

    The table's values, the user's RNA and gene groups, where the cohort goes and every h5
    file's datasets and shapes are checked before the first feature file is converted, so a bad
    row, file or OUT_DIR is reported in seconds, not after hours.
    The written cohort is validated whole (NaN/Inf features included) before it is moved into
    place; its warnings are logged.
    """
    options = options or H5ImportOptions()
    h5_dir, out, slides_csv = Path(h5_dir), Path(out_dir), Path(slides_csv)
    for name, value, choices in (
        ("clinical dialect", options.clinical_dialect, CLINICAL_DIALECTS),
        ("zero-time policy", options.zero_time, ZERO_TIME_POLICIES),
        ("folds by", options.folds_by, FOLD_GROUPINGS),
    ):
        if value not in choices:
            raise H5ImportError(f"{name} {value!r}: choose from {list(choices)}")
    if (options.rna is None) != (options.gene_groups is None):
        raise H5ImportError("--rna and --gene-groups go together: give both or neither")
    if options.sequenced_cases is not None and options.mutations is None:
        raise H5ImportError("--sequenced-cases goes with --mutations (the MAF whose samples it lists)")
    mutations = (
        read_mutation_table(
            options.mutations, options.mutation_genes,
            sequenced=read_case_list(options.sequenced_cases) if options.sequenced_cases is not None else None,
        )
        if options.mutations is not None
        else None
    )
    slides = _read_slide_table(slides_csv, options)
    labels = load_labels(options.labels) if options.labels else default_labels(sorted(slides["cohort"].dropna().unique()))
    if options.for_prediction:
        slides["fold"] = 0  # one fold: nothing is split, nothing trained
        options = replace(options, n_folds=1)
    has_folds = "fold" in slides.columns
    if has_folds and not options.for_prediction:
        options = replace(options, n_folds=_table_fold_count(slides, options.n_folds, slides_csv))
    _check_slide_table(slides if has_folds else slides.assign(fold=0), slides_csv, labels, options)
    try:
        table_geometry = slide_table_geometry(slides, slides_csv)
        rna = (
            read_rna_input(options.rna, options.gene_groups, slides["case_id"], slides_csv)
            if options.rna is not None and options.gene_groups is not None
            else None
        )
    except InputError as exc:
        raise H5ImportError(str(exc)) from exc
    by_site = options.folds_by == "site"
    if by_site and "site" not in slides.columns:
        raise H5ImportError(f"{slides_csv}: --folds-by site needs a 'site' column, or TCGA barcodes as slide ids to derive it from")
    if by_site and has_folds:
        raise H5ImportError(f"{slides_csv}: has a fold column; --folds-by site assigns folds, so drop one of them")
    if not has_folds:
        columns = ["cohort", "subtype", "event", *(["site"] if by_site else [])]
        cases = slides.groupby("case_id", sort=True)[columns].first().reset_index()
        try:
            folds = assign_case_folds(cases, options.n_folds, options.seed, ["cohort", "subtype", "event"], "site" if by_site else None)
        except InputError as exc:
            raise H5ImportError(f"{slides_csv}: {exc}") from exc
        slides["fold"] = slides["case_id"].map(folds)
        logger.info(
            "assigned %d case-level folds (stratified by cohort, subtype, event%s)", options.n_folds,
            "; each site in one fold" if by_site else "",
        )
    if not options.for_prediction:
        _check_folds(slides, slides_csv, options.n_folds)
    try:
        source = detect_format(h5_dir, slides["slide_id"].tolist(), options.feature_format, _layout_hint)
        target = check_import_target(out, {**source.inputs(), "--slides": slides_csv, **_option_inputs(options)}, options.overwrite)
    except InputError as exc:
        raise H5ImportError(str(exc)) from exc
    feature_dim, geometries = _check_feature_files(source, slides["slide_id"].tolist())
    try:
        geometries = combine_geometries(geometries, table_geometry, slides_csv)
        geometry = cohort_geometry(geometries, options.tile_size_px, DEFAULT_TILE_SIZE)
    except InputError as exc:
        raise H5ImportError(f"cannot import {h5_dir}: {exc}") from exc

    staging = target.staging
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_cohort(CohortLayout(staging), source, slides, labels, feature_dim, geometry, options, rna, mutations, progress)
        report = validate_cohort(staging)
        if not report.ok:
            raise H5ImportError(
                f"cannot import: the converted cohort has {len(report.problems)} problem(s), nothing kept:\n  "
                + "\n  ".join(summarise_problems(report.problems))
            )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    move_into_place(staging, target)
    for warning in report.warnings:
        logger.warning("%s", warning)
    return CohortLayout(out)


def _write_cohort(
    layout: CohortLayout, source: FeatureFormat, slides: pd.DataFrame, labels: LabelSpec, feature_dim: int,
    geometry: CohortGeometry, options: H5ImportOptions, rna: RnaInput | None, mutations: pd.DataFrame | None,
    progress: Progress | None,
) -> None:
    """Convert every slide, then the tables. Values are scanned as each file is read (one read,
    not two); a slide with NaN/Inf features or an unreadable chunk is noted and the others
    still checked, so one failed import lists every bad slide."""
    layout.features_dir.mkdir(parents=True)
    problems: list[str] = []
    for slide_id in (progress or _identity)(slides["slide_id"].tolist()):
        where = f"{source.path_of(slide_id)}: slide {slide_id}"
        try:
            features, coords = source.read(slide_id)
        except (OSError, SlideFileProblem) as exc:  # e.g. a corrupt compressed chunk: h5py names no slide
            problems.append(f"{where}: cannot read its features ({exc})")
            continue
        non_finite = int(np.count_nonzero(~np.isfinite(features)))
        if non_finite:
            problems.append(f"{where}: {non_finite} of {features.size} feature values are NaN or Inf")
        if problems:
            continue
        scale = geometry.coordinate_scale.get(slide_id)
        coords = rescale_coords(coords, scale) if scale is not None else coords.astype(np.int64)
        write_slide_features(layout.feature_file(slide_id), features, coords, slide_id=slide_id)
    if problems:
        raise H5ImportError(f"cannot import: {len(problems)} slide(s) unusable, nothing kept:\n  " + "\n  ".join(problems))

    columns = [*SLIDE_COLUMNS, *[c for c in (*CLINICAL_COLUMNS, *OPTIONAL_CASE_COLUMNS) if c in slides.columns]]
    write_parquet_atomic(layout.slides, pa.Table.from_pandas(slides[columns], preserve_index=False))
    save_labels(layout.labels, labels)
    if rna is not None:
        write_parquet_atomic(layout.rna, pa.Table.from_pandas(rna.table, preserve_index=False))
        write_json_atomic(layout.gene_groups, rna.groups)
    if mutations is not None:
        write_parquet_atomic(COHORT_MODALITIES["mutations"].source(layout), pa.Table.from_pandas(mutations, preserve_index=False))
    write_manifest(layout, CohortManifest(
        feature_dim=feature_dim, tile_size_px=geometry.tile_size_px, n_folds=options.n_folds, labelled=not options.for_prediction,
    ))


def _option_inputs(options: H5ImportOptions) -> dict[str, Path]:
    """The input files given by option, by the option's name (messages name them so)."""
    given = {
        "--labels": options.labels, "--rna": options.rna, "--gene-groups": options.gene_groups,
        "--mutations": options.mutations, "--sequenced-cases": options.sequenced_cases,
    }
    return {option: path for option, path in given.items() if path is not None}


def _check_slide_table(slides: pd.DataFrame, path: Path, labels: LabelSpec, options: H5ImportOptions) -> None:
    """The validator's row and case checks, summarised by kind, before any file is written."""
    problems = slide_table_problems(slides, path, labels, options.n_folds, labelled=not options.for_prediction)
    if not problems:
        return
    lines = summarise_problems(problems)
    if pd.to_numeric(slides["time"], errors="coerce").eq(0).any():
        lines.append(
            "time = 0 (TCGA's OS.time = 0: death or censoring on the day of diagnosis): choose --zero-time drop "
            f"(leave those slides out) or --zero-time epsilon ({ZERO_TIME_EPSILON} months)"
        )
    raise H5ImportError(f"cannot import {path}: {len(problems)} problem(s), nothing written:\n  " + "\n  ".join(lines))


def _table_fold_count(slides: pd.DataFrame, n_folds: int, path: Path) -> int:
    """A slide table's own fold column sets the number of folds (``--folds`` is for assigning them)."""
    folds = pd.to_numeric(slides["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds % 1 != 0).any():
        return n_folds  # the row checks name the bad values
    count = int(folds.max()) + 1
    if count != n_folds:
        logger.info(
            "%s: its fold column holds %d folds (0-%d); --folds %d is for assigning folds, not used", path, count, count - 1, n_folds
        )
    return count


def _check_folds(slides: pd.DataFrame, path: Path, n_folds: int) -> None:
    """Folds that cannot be scored are refused before any feature file is converted (the
    validator's fold checks; the converted cohort is checked again as a whole)."""
    problems = fold_problems(slides, path, n_folds)
    if problems:
        raise H5ImportError(
            f"cannot import {path}: {len(problems)} problem(s) with its folds, nothing written:\n  "
            + "\n  ".join(summarise_problems(problems))
        )


def _identity(items: Iterable[T]) -> Iterator[T]:
    yield from items


def _read_slide_table(path: Path, options: H5ImportOptions) -> pd.DataFrame:
    try:
        slides = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    except FileNotFoundError as exc:
        raise H5ImportError(f"{path}: file not found") from exc
    except pd.errors.EmptyDataError as exc:
        raise H5ImportError(f"{path}: the slide table is empty (no header, no rows)") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise H5ImportError(f"{path}: not a readable CSV slide table ({exc})") from exc
    if slides.empty:
        raise H5ImportError(f"{path}: the slide table has no slides (a header, no rows)")
    tcga = options.clinical_dialect == "tcga"
    if tcga:
        slides, renamed = rename_cbioportal_columns(slides)
        if renamed:
            logger.info("%s: cBioPortal columns read as %s", path, ", ".join(f"{a} -> {b}" for a, b in renamed.items()))
    optional = {"fold", *(["case_id"] if tcga else []), *(LABEL_COLUMNS if options.for_prediction else [])}
    required = [c for c in SLIDE_COLUMNS if c not in optional]
    missing = [c for c in required if c not in slides.columns]
    if missing:
        hint = missing_time_hint(slides.columns) if "time" in missing else ""
        hint += "; new patients without outcomes: --for-prediction" if set(missing) <= set(LABEL_COLUMNS) else ""
        raise H5ImportError(
            f"{path}: missing column(s) {missing}; needs {required} (+ optional fold, {list(CLINICAL_COLUMNS)}){hint}"
        )
    for column in LABEL_COLUMNS:
        if column not in slides.columns:  # --for-prediction: the outcome is unknown
            slides[column] = None if column == "subtype" else np.nan
    slides["slide_id"] = _without_slide_suffix(slides["slide_id"], path)
    unsafe = [s for s in slides["slide_id"] if not isinstance(s, str) or not SAFE_SLIDE_ID.match(s)]
    if unsafe:
        raise H5ImportError(f"{path}: slide_id must be letters, digits, '.', '_' or '-': {unsafe[:5]}")
    if tcga:
        derive = "case_id" not in slides.columns
        slides = normalise_tcga_table(slides)
        if derive and slides["case_id"].isna().any():
            strays = slides.loc[slides["case_id"].isna(), "slide_id"].tolist()
            raise H5ImportError(
                f"{path}: no case_id column, and {len(strays)} slide_id(s) are not TCGA barcodes to derive it from: {strays[:5]}"
            )
    for column in (*CLINICAL_COLUMNS, "subtype"):
        if column in slides.columns and column != "age":
            # None, not NaN, for a missing value; pandas-stubs' ``where`` leaves None out of ``other``.
            slides[column] = slides[column].astype(object).where(slides[column].notna(), None)  # type: ignore[call-overload]
    return _apply_zero_time(slides, path, options.zero_time)


def _without_slide_suffix(slide_ids: pd.Series, path: Path) -> pd.Series:
    """Slide ids as file names of the scans (``TCGA-...-DX1.<uuid>.svs``) name the feature files
    without the scan's suffix, as TRIDENT, CLAM and STAMP write them."""
    pattern = r"\.(?:" + "|".join(WSI_SUFFIXES) + r")$"
    stripped = slide_ids.str.replace(pattern, "", case=False, regex=True)
    changed = int((stripped != slide_ids).sum())
    if changed:
        logger.info("%s: %d slide id(s) named with a scan suffix (%s): read without it", path, changed, ", ".join(WSI_SUFFIXES))
    return stripped


def _apply_zero_time(slides: pd.DataFrame, path: Path, policy: str) -> pd.DataFrame:
    zero = pd.to_numeric(slides["time"], errors="coerce").eq(0)
    if not zero.any() or policy == "refuse":
        return slides
    if policy == "drop":
        logger.warning("%s: leaving out %d slide(s) with time = 0 (--zero-time drop)", path, int(zero.sum()))
        return slides[~zero].reset_index(drop=True)
    logger.warning("%s: time = 0 set to %s months for %d slide(s) (--zero-time epsilon)", path, ZERO_TIME_EPSILON, int(zero.sum()))
    return slides.assign(time=pd.to_numeric(slides["time"], errors="coerce").mask(zero, ZERO_TIME_EPSILON))


def _check_feature_files(source: FeatureFormat, slide_ids: list[str]) -> tuple[int, dict[str, TileGeometry]]:
    """Check every slide's file (metadata only); return the common feature width and each
    slide's tile geometry. A problem many slides share is one line, not one per slide."""
    problems: dict[str, list[str]] = {}  # message -> where (file and slide)
    widths: dict[int, str] = {}
    geometries: dict[str, TileGeometry] = {}
    for slide_id in slide_ids:
        where = f"{source.path_of(slide_id)}: slide {slide_id}"
        try:
            info = source.inspect(slide_id)
        except SlideFileProblem as exc:
            problems.setdefault(str(exc), []).append(where)
            continue
        if info.n_tiles == 0:
            problems.setdefault("empty bag (no tiles)", []).append(where)
        if info.n_coords != info.n_tiles:
            problems.setdefault(f"coords shape ({info.n_coords}, 2) != ({info.n_tiles}, 2)", []).append(where)
        widths.setdefault(info.feature_dim, slide_id)
        geometries[slide_id] = info.geometry
    lines = [
        line
        for message, places in problems.items()
        for line in (
            [f"{p}: {message}" for p in places]
            if len(places) <= SHARED_PROBLEM
            else [f"{len(places)} slides: {message} (e.g. {'; '.join(places[:2])}; ...)"]
        )
    ]
    if len(widths) > 1:
        lines.append(f"{source.folder}: slides disagree on feature width: {', '.join(f'{d} (e.g. {s})' for d, s in widths.items())}")
    if lines:
        raise H5ImportError("cannot import:\n  " + "\n  ".join(lines))
    return next(iter(widths)), geometries


def _layout_hint(h5_dir: Path) -> str:
    """What the folder looks like instead: a TRIDENT job folder, CLAM's output, .pt files."""
    if not h5_dir.is_dir():
        return " (the folder does not exist)"
    trident = sorted(str(p.relative_to(h5_dir)) for p in h5_dir.glob("**/features_*") if p.is_dir())
    if trident:
        return f"; it looks like a TRIDENT job folder: pass one of its feature folders, e.g. {h5_dir / trident[0]}"
    if (h5_dir / "h5_files").is_dir():
        return f"; it looks like CLAM's output: pass {h5_dir / 'h5_files'} (or its pt_files/)"
    return ""
