"""Check a cohort folder before any expensive work, reporting every problem at once.

A study that dies on slide 9,000 of epoch 3 wastes a GPU-day; a validator that stops at the
first problem wastes the user's afternoon. So this reads only metadata, streams each feature
file through its memory map in row chunks (never holding the cohort in memory) and collects
every problem with the file, the slide or case, and the field it concerns.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modaltune.data.clinical import CLINICAL_COLUMNS, clinical_value_problem
from modaltune.data.features import FeatureFileError, read_slide_features
from modaltune.data.labels import LabelsFileError, LabelSpec, load_labels
from modaltune.data.layout import (
    CASE_LEVEL_COLUMNS,
    OPTIONAL_CASE_COLUMNS,
    POSITION_GRID_SIZE,
    SAFE_SLIDE_ID,
    SLIDE_COLUMNS,
    CohortLayout,
    CohortManifest,
    ManifestError,
    read_gene_groups,
    read_manifest,
)
from modaltune.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]

ROWS_PER_CHUNK = 4096


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or, as a warning, suspicious) in a cohort."""

    file: str
    where: str
    field: str
    message: str

    def __str__(self) -> str:
        location = ", ".join(part for part in (self.where, f"field '{self.field}'" if self.field else "") if part)
        return f"{self.file}: {location + ': ' if location else ''}{self.message}"


@dataclass
class ValidationReport:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    n_slides: int = 0
    n_cases: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class CohortInvalidError(InputError):
    """Raised by callers that refuse to start on an invalid cohort."""

    def __init__(self, report: ValidationReport) -> None:
        lines = "\n".join(f"  {p}" for p in report.problems)
        super().__init__(f"cohort {report.root} has {len(report.problems)} problem(s):\n{lines}")
        self.report = report


def validate_cohort(
    root: str | os.PathLike[str], progress: Progress | None = None, *, require_complete: bool = False
) -> ValidationReport:
    """Validate every file of the cohort folder at ``root``; see the module docstring.

    Cases without an RNA row are normal (about one in six in TCGA): the model gives them a
    learned missing-RNA token, so they are counted in a warning; ``require_complete`` makes
    each of them a problem instead, for users who want complete-case analyses.
    """
    layout = CohortLayout(Path(root))
    report = ValidationReport(root=layout.root)
    checker = _Checker(layout, report, require_complete)
    manifest = checker.manifest()
    labels = checker.labels()
    slides = checker.slides_table()
    if slides is not None:
        checker.slide_rows(slides, labels, manifest)
        checker.case_consistency(slides)
        checker.feature_files(slides, manifest, progress or _identity)
        report.n_slides = len(slides)
        report.n_cases = int(slides["case_id"].nunique())
    checker.rna(slides)
    return report


def slide_table_problems(slides: pd.DataFrame, source: Path, labels: LabelSpec, n_folds: int, labelled: bool = True) -> list[Problem]:
    """``validate``'s row and case checks on a slide table before anything is written (the
    importer's up-front check); problems name ``source``, the user's file."""
    report = ValidationReport(root=source.parent)
    checker = _Checker(CohortLayout(source.parent), report, slides_path=source)
    checker.slide_rows(slides, labels, CohortManifest(feature_dim=1, tile_size_px=1, n_folds=n_folds, labelled=labelled))
    checker.case_consistency(slides)
    return report.problems


def summarise_problems(problems: list[Problem], limit: int = 8) -> list[str]:
    """One line per distinct (file, field, message) with its count and first places, most
    frequent first: 264 problems of 7 kinds read as 7 lines, not 264."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for problem in problems:
        groups.setdefault((problem.file, problem.field, problem.message), []).append(problem.where)
    lines = [
        f"{len(places)} x {file}{f', field {field!r}' if field else ''}: {message} (e.g. {_preview(places, 3)})"
        for (file, field, message), places in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]
    return lines[:limit] + ([f"... and {len(lines) - limit} more kinds of problem"] if len(lines) > limit else [])


def _identity(items: Iterable[T]) -> Iterator[T]:
    yield from items


class _Checker:
    """The individual checks; each appends to the shared report and never raises."""

    def __init__(
        self, layout: CohortLayout, report: ValidationReport, require_complete: bool = False, slides_path: Path | None = None
    ) -> None:
        self.layout = layout
        self.report = report
        self.require_complete = require_complete
        self.slides_path = slides_path or layout.slides  # the importer checks the user's table before writing ours

    def _problem(self, path: Path, where: str, field_name: str, message: str) -> None:
        self.report.problems.append(Problem(self._relative(path), where, field_name, message))

    def _warning(self, path: Path, where: str, field_name: str, message: str) -> None:
        self.report.warnings.append(Problem(self._relative(path), where, field_name, message))

    def _relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.layout.root))
        except ValueError:
            return str(path)

    def manifest(self) -> CohortManifest | None:
        try:
            return read_manifest(self.layout)
        except ManifestError as exc:
            self._problem(self.layout.manifest, "", "", str(exc).split(": ", 1)[-1])
            return None

    def labels(self) -> LabelSpec | None:
        try:
            return load_labels(self.layout.labels)
        except LabelsFileError as exc:
            self._problem(self.layout.labels, "", "", str(exc).split(": ", 1)[-1])
            return None

    def slides_table(self) -> pd.DataFrame | None:
        path = self.slides_path
        if not path.is_file():
            self._problem(path, "", "", "file not found")
            return None
        try:
            table = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            self._problem(path, "", "", f"not a readable Parquet file ({exc})")
            return None
        missing = [c for c in SLIDE_COLUMNS if c not in table.columns]
        for column in missing:
            self._problem(path, "", column, f"required column is missing ({SLIDE_COLUMNS[column]})")
        return None if missing else table

    def slide_rows(self, slides: pd.DataFrame, labels: LabelSpec | None, manifest: CohortManifest | None) -> None:
        path = self.slides_path
        optional_labels = manifest is not None and not manifest.labelled  # new patients: outcomes may be unknown
        duplicated = slides["slide_id"][slides["slide_id"].duplicated(keep=False)]
        for slide_id in sorted(set(duplicated.astype(str))):
            self._problem(path, f"slide {slide_id}", "slide_id", f"duplicate slide_id ({int((duplicated.astype(str) == slide_id).sum())} rows)")
        for row in slides.itertuples(index=False):
            where = f"slide {row.slide_id}"
            if not isinstance(row.slide_id, str) or not SAFE_SLIDE_ID.match(row.slide_id):
                self._problem(path, where, "slide_id", "must be a non-empty name of letters, digits, '.', '_' or '-'")
            if not isinstance(row.case_id, str) or not row.case_id:
                self._problem(path, where, "case_id", f"must be a non-empty string, got {row.case_id!r}")
            self._label_fields(path, where, row, labels, optional_labels)
            self._survival_fields(path, where, row, optional_labels)
            if manifest is not None and not (_is_integer(row.fold) and 0 <= row.fold < manifest.n_folds):
                self._problem(path, where, "fold", f"must be an integer in 0..{manifest.n_folds - 1}, got {row.fold!r}")
            for column in CLINICAL_COLUMNS:
                if column in slides.columns:
                    message = clinical_value_problem(column, getattr(row, column))
                    if message:
                        self._problem(path, where, column, message)

    def _label_fields(self, path: Path, where: str, row: object, labels: LabelSpec | None, optional: bool) -> None:
        if labels is None:
            return
        cohort, subtype = row.cohort, row.subtype
        if cohort not in labels.cohorts:
            self._problem(path, where, "cohort", f"{cohort!r} is not a cohort of labels.yaml ({sorted(labels.cohorts)})")
        elif optional and _is_missing(subtype):
            return
        elif subtype not in labels.cohorts[cohort].subtypes:
            self._problem(
                path, where, "subtype", f"{subtype!r} is not a {cohort} subtype in labels.yaml ({labels.subtypes_of(cohort)})"
            )

    def _survival_fields(self, path: Path, where: str, row: object, optional: bool) -> None:
        time, event = row.time, row.event
        if optional and _is_missing(time) and _is_missing(event):
            return
        if not isinstance(time, (int, float, np.number)) or not math.isfinite(time) or time <= 0:
            self._problem(path, where, "time", f"survival time must be a finite number of months > 0, got {time!r}")
        if not (_is_integer(event) and event in (0, 1)):
            self._problem(path, where, "event", f"event must be 0 (censored) or 1 (death), got {event!r}")

    def case_consistency(self, slides: pd.DataFrame) -> None:
        """Case-level fields must agree across a case's slides; folds above all (leakage)."""
        path = self.slides_path
        for column in (*CASE_LEVEL_COLUMNS, *(c for c in OPTIONAL_CASE_COLUMNS if c in slides.columns)):
            values = slides.groupby("case_id", sort=True)[column].agg(lambda s: sorted(set(map(str, s))))
            for case_id, distinct in values.items():
                if len(distinct) > 1:
                    reason = (
                        "case appears in several folds (its slides would leak across splits)"
                        if column == "fold"
                        else "slides of one case disagree"
                    )
                    self._problem(path, f"case {case_id}", column, f"{reason}: {distinct}")

    def feature_files(self, slides: pd.DataFrame, manifest: CohortManifest | None, progress: Progress) -> None:
        known: set[str] = set()
        slide_ids = [s for s in slides["slide_id"] if isinstance(s, str) and SAFE_SLIDE_ID.match(s)]
        for slide_id in progress(slide_ids):
            known.add(slide_id)
            self._feature_file(slide_id, manifest)
        if self.layout.features_dir.is_dir():
            for path in sorted(self.layout.features_dir.glob("*.arrow")):
                if path.stem not in known:
                    self._warning(path, "", "", "feature file has no row in slides.parquet (ignored)")

    def _feature_file(self, slide_id: str, manifest: CohortManifest | None) -> None:
        path = self.layout.feature_file(slide_id)
        where = f"slide {slide_id}"
        try:
            slide = read_slide_features(path)
        except FeatureFileError as exc:
            self._problem(path, where, "", str(exc).split(": ", 1)[-1])
            return
        if slide.n_tiles == 0:
            self._problem(path, where, "features", "empty bag: the slide has no tiles")
            return
        if manifest is not None and slide.features.shape[1] != manifest.feature_dim:
            self._problem(
                path, where, "features", f"feature width {slide.features.shape[1]} != cohort feature_dim {manifest.feature_dim}"
            )
        if slide.coords.shape != (slide.n_tiles, 2):
            self._problem(path, where, "coords", f"coords shape {slide.coords.shape} != ({slide.n_tiles}, 2)")
            return
        bad_rows, negative = 0, False
        for start in range(0, slide.n_tiles, ROWS_PER_CHUNK):
            chunk = slide.features[start : start + ROWS_PER_CHUNK]
            bad_rows += int((~np.isfinite(chunk)).any(axis=1).sum())
            negative |= bool((slide.coords[start : start + ROWS_PER_CHUNK] < 0).any())
        if bad_rows:
            self._problem(path, where, "features", f"{bad_rows} of {slide.n_tiles} tiles contain NaN or Inf")
        if negative:
            self._problem(path, where, "coords", "negative tile coordinates")
        if manifest is not None:
            self._tile_grid(path, where, np.asarray(slide.coords), manifest.tile_size_px)

    def _tile_grid(self, path: Path, where: str, coords: np.ndarray, tile_size: int) -> None:
        """What training would crash on or silently get wrong: tiles outside the position grid, duplicates."""
        cells = coords // tile_size
        if int(cells.max(initial=0)) >= POSITION_GRID_SIZE:
            self._problem(
                path, where, "coords",
                f"tiles reach cell {int(cells.max())} of the {POSITION_GRID_SIZE} x {POSITION_GRID_SIZE} position grid of "
                f"{tile_size}-px tiles (coordinates up to {int(coords.max())} px): imported with the wrong tile size "
                "(a 40x scan with 512-px patches?); import-h5 reads TRIDENT's attributes, --tile-size sets it for other files",
            )
        duplicates = len(cells) - len(np.unique(cells, axis=0))
        if duplicates:
            self._warning(path, where, "coords", f"{duplicates} tile(s) share a grid cell with another (duplicated or overlapping tiles)")

    def rna(self, slides: pd.DataFrame | None) -> None:
        rna_path, groups_path = self.layout.rna, self.layout.gene_groups
        if not rna_path.exists():
            if groups_path.exists():
                self._warning(groups_path, "", "", "gene group map without rna.parquet (ignored)")
            return
        try:
            rna_file = pq.ParquetFile(rna_path)
        except (pa.ArrowInvalid, OSError) as exc:
            self._problem(rna_path, "", "", f"not a readable Parquet file ({exc})")
            return
        schema = rna_file.schema_arrow
        if "case_id" not in schema.names:
            self._problem(rna_path, "", "case_id", "required column is missing")
            return
        genes = [name for name in schema.names if name != "case_id"]
        for gene in genes:
            if not _is_numeric(schema.field(gene).type):
                self._problem(rna_path, "", gene, f"expression must be numeric, got {schema.field(gene).type}")
        rna_cases = self._rna_values(rna_file, genes)
        self._gene_groups(groups_path, genes)
        if slides is not None:
            cases = set(slides["case_id"].astype(str))
            without = sorted(cases - rna_cases)
            if self.require_complete:
                for case_id in without:
                    self._problem(rna_path, f"case {case_id}", "case_id", "case has slides but no RNA row (complete cases required)")
            elif without:
                self._warning(
                    rna_path, f"{len(without)} of {len(cases)} cases ({len(without) / len(cases):.0%})", "",
                    f"no RNA row (e.g. {_preview(without, 3)}): models with RNA give these cases a learned missing-RNA "
                    "token (validate --require-complete refuses them)",
                )

    def _rna_values(self, rna_file: pq.ParquetFile, genes: list[str]) -> set[str]:
        """Stream RNA in batches: NaN/Inf per case, duplicate cases. Returns the case ids."""
        path = self.layout.rna
        seen: set[str] = set()
        numeric = [g for g in genes if _is_numeric(rna_file.schema_arrow.field(g).type)]
        for batch in rna_file.iter_batches(batch_size=1024, columns=["case_id", *numeric]):
            case_ids = batch.column("case_id").to_pylist()
            values = np.column_stack(
                [np.zeros(len(case_ids))] + [batch.column(g).to_numpy(zero_copy_only=False).astype(np.float64) for g in numeric]
            )[:, 1:]
            bad = ~np.isfinite(values)
            for row, case_id in enumerate(case_ids):
                if case_id in seen:
                    self._problem(path, f"case {case_id}", "case_id", "duplicate RNA row for this case")
                seen.add(str(case_id))
                if bad[row].any():
                    bad_genes = [numeric[j] for j in np.flatnonzero(bad[row])]
                    self._problem(path, f"case {case_id}", _preview(bad_genes), f"NaN or Inf expression in {len(bad_genes)} gene(s)")
        return seen

    def _gene_groups(self, groups_path: Path, genes: list[str]) -> None:
        try:
            groups = read_gene_groups(groups_path)
        except ManifestError as exc:
            self._problem(groups_path, "", "", str(exc).split(": ", 1)[-1] + " (rna.parquet needs a gene group map)")
            return
        grouped = {gene for members in groups.values() for gene in members}
        ungrouped = [g for g in genes if g not in grouped]
        if ungrouped:
            self._problem(groups_path, "", _preview(ungrouped), f"{len(ungrouped)} RNA gene(s) of rna.parquet are missing from the group map")
        present = set(genes)
        for name, members in groups.items():
            absent = [g for g in members if g not in present]
            if not members:
                self._problem(groups_path, f"group {name}", "", "group has no genes")
            elif absent:
                self._problem(groups_path, f"group {name}", _preview(absent), f"{len(absent)} gene(s) of this group are not columns of rna.parquet")


def _preview(names: list[str], limit: int = 5) -> str:
    """The first few names of a long list, so one message stays one line."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_floating(dtype) or pa.types.is_integer(dtype)


def _is_integer(value: object) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()
