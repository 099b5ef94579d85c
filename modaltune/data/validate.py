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
from typing import Any, TypeGuard, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modaltune.data.clinical import CLINICAL_COLUMNS, clinical_value_problem
from modaltune.data.features import FeatureFileError, read_slide_features
from modaltune.data.fold_checks import case_table, fold_shortfalls, unscorable_folds
from modaltune.data.folds import fold_fix, site_preserved
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
    read_manifest,
)
from modaltune.data.modalities import COHORT_MODALITIES, preview
from modaltune.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]

ROWS_PER_CHUNK = 4096
SHORTFALL_FIELDS = {"": "cohort", "survival": "event", "diagnosis": "subtype"}  # the slide-table column a shortfall is about


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
    root: str | os.PathLike[str], progress: Progress | None = None, *, require_complete: bool = False, check_folds: bool = True
) -> ValidationReport:
    """Validate every file of the cohort folder at ``root``; see the module docstring.

    Cases without an RNA row are normal (about one in six in TCGA): the model gives them a
    learned missing-RNA token, so they are counted in a warning; ``require_complete`` makes
    each of them a problem instead, for users who want complete-case analyses. With
    ``check_folds`` (a labelled cohort whose slide table is valid), every fold must hold what it
    needs to be scored, for every task and cancer type (``modaltune.data.fold_checks``); a study
    checks only its own folds and tasks instead.
    """
    layout = CohortLayout(Path(root))
    report = ValidationReport(root=layout.root)
    checker = _Checker(layout, report, require_complete)
    manifest = checker.manifest()
    labels = checker.labels()
    slides = checker.slides_table()
    if slides is not None:
        before = len(report.problems)
        checker.slide_rows(slides, labels, manifest)
        checker.case_consistency(slides)
        if check_folds and manifest is not None and manifest.labelled and labels is not None and len(report.problems) == before:
            checker.folds(slides, manifest.n_folds)
        checker.feature_files(slides, manifest, progress or _identity)
        report.n_slides = len(slides)
        report.n_cases = int(slides["case_id"].nunique())
    case_ids = set(slides["case_id"].astype(str)) if slides is not None else None
    for modality in COHORT_MODALITIES.values():
        modality.validate(layout, case_ids, checker)
    return report


def slide_table_problems(slides: pd.DataFrame, source: Path, labels: LabelSpec, n_folds: int, labelled: bool = True) -> list[Problem]:
    """``validate``'s row and case checks on a slide table before anything is written (the
    importer's up-front check); problems name ``source``, the user's file."""
    report = ValidationReport(root=source.parent)
    checker = _Checker(CohortLayout(source.parent), report, slides_path=source)
    checker.slide_rows(slides, labels, CohortManifest(feature_dim=1, tile_size_px=1, n_folds=n_folds, labelled=labelled))
    checker.case_consistency(slides)
    return report.problems


def fold_problems(slides: pd.DataFrame, source: Path, n_folds: int) -> list[Problem]:
    """``validate``'s fold checks on a slide table whose folds are set, before anything is
    written (the importer's check); problems name ``source``, the user's file."""
    report = ValidationReport(root=source.parent)
    _Checker(CohortLayout(source.parent), report, slides_path=source).folds(slides, n_folds)
    return report.problems


def summarise_problems(problems: list[Problem], limit: int = 8) -> list[str]:
    """One line per kind of problem (file, field, and message up to its ", got <value>") with
    its count and first places and values, most frequent first: 264 problems of 7 kinds read as
    7 lines, not 264, and 43 survival times written "4.76 months" as one line, not 43."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for problem in problems:
        kind, place = _kind_and_place(problem)
        groups.setdefault((problem.file, problem.field, kind), []).append(place)
    lines = []
    for (file, field_name, kind), places in sorted(groups.items(), key=lambda item: -len(item[1])):
        named = [place for place in places if place]
        examples = f" (e.g. {preview(named, 3)})" if named else ""
        lines.append(f"{len(places)} x {file}{f', field {field_name!r}' if field_name else ''}: {kind}{examples}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more kinds of problem"] if len(lines) > limit else [])


def _kind_and_place(problem: Problem) -> tuple[str, str]:
    """"time must be ..., got '4.76 months'" at slide A -> ("time must be ...", "slide A: '4.76 months'")."""
    kind, got, value = problem.message.rpartition(", got ")
    if not got:
        return problem.message, problem.where
    return kind, f"{problem.where}: {value}" if problem.where else value


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

    def problem(self, path: Path, where: str, field_name: str, message: str) -> None:
        self.report.problems.append(Problem(self._relative(path), where, field_name, message))

    def warning(self, path: Path, where: str, field_name: str, message: str) -> None:
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
            self.problem(self.layout.manifest, "", "", str(exc).split(": ", 1)[-1])
            return None

    def labels(self) -> LabelSpec | None:
        try:
            return load_labels(self.layout.labels)
        except LabelsFileError as exc:
            self.problem(self.layout.labels, "", "", str(exc).split(": ", 1)[-1])
            return None

    def slides_table(self) -> pd.DataFrame | None:
        path = self.slides_path
        if not path.is_file():
            self.problem(path, "", "", "file not found")
            return None
        try:
            table = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            self.problem(path, "", "", f"not a readable Parquet file ({exc})")
            return None
        missing = [c for c in SLIDE_COLUMNS if c not in table.columns]
        for column in missing:
            self.problem(path, "", column, f"required column is missing ({SLIDE_COLUMNS[column]})")
        return None if missing else table

    def slide_rows(self, slides: pd.DataFrame, labels: LabelSpec | None, manifest: CohortManifest | None) -> None:
        path = self.slides_path
        optional_labels = manifest is not None and not manifest.labelled  # new patients: outcomes may be unknown
        duplicated = slides["slide_id"][slides["slide_id"].duplicated(keep=False)]
        for slide_id in sorted(set(duplicated.astype(str))):
            n_rows = int((duplicated.astype(str) == slide_id).sum())
            self.problem(path, f"slide {slide_id}", "slide_id", f"duplicate slide_id ({n_rows} rows)")
        for row in slides.itertuples(index=False):
            where = f"slide {row.slide_id}"
            if not isinstance(row.slide_id, str) or not SAFE_SLIDE_ID.match(row.slide_id):
                self.problem(path, where, "slide_id", "must be a non-empty name of letters, digits, '.', '_' or '-'")
            if not isinstance(row.case_id, str) or not row.case_id:
                self.problem(path, where, "case_id", f"must be a non-empty string, got {row.case_id!r}")
            self._label_fields(path, where, row, labels, optional_labels)
            self._survival_fields(path, where, row, optional_labels)
            if manifest is not None and not (_is_integer(row.fold) and 0 <= row.fold < manifest.n_folds):
                self.problem(path, where, "fold", f"must be an integer in 0..{manifest.n_folds - 1}, got {row.fold!r}")
            for column in CLINICAL_COLUMNS:
                if column in slides.columns:
                    message = clinical_value_problem(column, getattr(row, column))
                    if message:
                        self.problem(path, where, column, message)

    def _label_fields(self, path: Path, where: str, row: Any, labels: LabelSpec | None, optional: bool) -> None:
        """``row``: the slide table's named tuple (``itertuples``), its fields the table's columns."""
        if labels is None:
            return
        cohort, subtype = row.cohort, row.subtype
        if cohort not in labels.cohorts:
            self.problem(path, where, "cohort", f"{cohort!r} is not a cohort of labels.yaml ({sorted(labels.cohorts)})")
        elif optional and _is_missing(subtype):
            return
        elif subtype not in labels.cohorts[cohort].subtypes:
            self.problem(
                path, where, "subtype", f"{subtype!r} is not a {cohort} subtype in labels.yaml ({labels.subtypes_of(cohort)})"
            )

    def _survival_fields(self, path: Path, where: str, row: Any, optional: bool) -> None:
        time, event = row.time, row.event
        if optional and _is_missing(time) and _is_missing(event):
            return
        if not isinstance(time, (int, float, np.number)) or not math.isfinite(time) or time <= 0:
            self.problem(path, where, "time", f"survival time must be a finite number of months > 0, got {time!r}")
        if not (_is_integer(event) and event in (0, 1)):
            self.problem(path, where, "event", f"event must be 0 (censored) or 1 (death), got {event!r}")

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
                    self.problem(path, f"case {case_id}", column, f"{reason}: {distinct}")

    def folds(self, slides: pd.DataFrame, n_folds: int) -> None:
        """Every fold scorable for every task and cancer type; what no split can give, a warning."""
        cases = case_table(slides)
        shortfalls = fold_shortfalls(cases, range(n_folds))
        for shortfall in shortfalls:
            field_name = SHORTFALL_FIELDS[shortfall.task]
            if shortfall.fold is None:
                self.warning(self.slides_path, f"cancer type {shortfall.cohort}", field_name, shortfall.reason)
            else:
                where = f"fold {shortfall.fold}, {shortfall.cohort}"
                self.problem(self.slides_path, where, field_name, f"{shortfall.side} cases: {shortfall.reason}")
        failing = unscorable_folds(shortfalls)
        if failing:
            self.problem(
                self.slides_path, "", "fold",
                f"{len(failing)} of {n_folds} folds cannot be scored (folds {failing}); {fold_fix(cases, n_folds, site_preserved(slides))}",
            )

    def feature_files(self, slides: pd.DataFrame, manifest: CohortManifest | None, progress: Progress) -> None:
        known: set[str] = set()
        slide_ids = [s for s in slides["slide_id"] if isinstance(s, str) and SAFE_SLIDE_ID.match(s)]
        for slide_id in progress(slide_ids):
            known.add(slide_id)
            self._feature_file(slide_id, manifest)
        if self.layout.features_dir.is_dir():
            for path in sorted(self.layout.features_dir.glob("*.arrow")):
                if path.stem not in known:
                    self.warning(path, "", "", "feature file has no row in slides.parquet (ignored)")

    def _feature_file(self, slide_id: str, manifest: CohortManifest | None) -> None:
        path = self.layout.feature_file(slide_id)
        where = f"slide {slide_id}"
        try:
            slide = read_slide_features(path)
        except FeatureFileError as exc:
            self.problem(path, where, "", str(exc).split(": ", 1)[-1])
            return
        if slide.n_tiles == 0:
            self.problem(path, where, "features", "empty bag: the slide has no tiles")
            return
        if manifest is not None and slide.features.shape[1] != manifest.feature_dim:
            self.problem(
                path, where, "features", f"feature width {slide.features.shape[1]} != cohort feature_dim {manifest.feature_dim}"
            )
        if slide.coords.shape != (slide.n_tiles, 2):
            self.problem(path, where, "coords", f"coords shape {slide.coords.shape} != ({slide.n_tiles}, 2)")
            return
        bad_rows, negative = 0, False
        for start in range(0, slide.n_tiles, ROWS_PER_CHUNK):
            chunk = slide.features[start : start + ROWS_PER_CHUNK]
            bad_rows += int((~np.isfinite(chunk)).any(axis=1).sum())
            negative |= bool((slide.coords[start : start + ROWS_PER_CHUNK] < 0).any())
        if bad_rows:
            self.problem(path, where, "features", f"{bad_rows} of {slide.n_tiles} tiles contain NaN or Inf")
        if negative:
            self.problem(path, where, "coords", "negative tile coordinates")
        if manifest is not None:
            self._tile_grid(path, where, np.asarray(slide.coords), manifest.tile_size_px)

    def _tile_grid(self, path: Path, where: str, coords: np.ndarray, tile_size: int) -> None:
        """What training would crash on or silently get wrong: tiles outside the position grid, duplicates."""
        cells = coords // tile_size
        if int(cells.max(initial=0)) >= POSITION_GRID_SIZE:
            self.problem(
                path, where, "coords",
                f"tiles reach cell {int(cells.max())} of the {POSITION_GRID_SIZE} x {POSITION_GRID_SIZE} position grid of "
                f"{tile_size}-px tiles (coordinates up to {int(coords.max())} px): imported with the wrong tile size "
                "(a 40x scan with 512-px patches?); import-h5 reads TRIDENT's attributes, --tile-size sets it for other files",
            )
        duplicates = len(cells) - len(np.unique(cells, axis=0))
        if duplicates:
            self.warning(path, where, "coords", f"{duplicates} tile(s) share a grid cell with another (duplicated or overlapping tiles)")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _is_integer(value: object) -> TypeGuard[int | float | np.integer | np.floating]:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()
