"""Read access to a validated cohort: what a training worker reads, case by case.

Metadata (a few MB even for 10k slides) is held in memory; tile features are never loaded up
front — each slide is memory-mapped when asked for, and only the tiles a step samples are
copied. A Ray Train worker opens the cohort by path and reads its own shard of cases, so the
cohort never passes through the Ray object store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from modaltune.data.clinical import CLINICAL_COLUMNS
from modaltune.data.features import SlideFeatures, read_slide_features
from modaltune.data.labels import LabelSpec, load_labels
from modaltune.data.layout import CASE_LEVEL_COLUMNS, CohortLayout, CohortManifest, read_gene_groups, read_manifest
from modaltune.data.modalities import COHORT_MODALITIES
from modaltune.errors import InputError


@dataclass(frozen=True)
class CaseRecord:
    """The labels and clinical record of one case (patient). In a cohort imported for prediction
    the outcomes may be unknown: ``subtype`` and ``event`` None, ``time`` NaN."""

    case_id: str
    cohort: str
    subtype: str | None
    time: float
    event: int | None
    fold: int
    slide_ids: tuple[str, ...]
    clinical: dict[str, Any]


@dataclass(frozen=True)
class CaseSample:
    """One training example: a case's tiles (all its slides together) and other modalities."""

    record: CaseRecord
    features: np.ndarray  # (N, D) float16
    coords: np.ndarray  # (N, 2) int32
    modalities: dict[str, np.ndarray | None]  # name -> float32 vector (see COHORT_MODALITIES); None: the case lacks it
    all_tiles: bool = True  # False when a random cap chose some of the tiles


class Cohort:
    """A cohort folder opened for reading; see ``modaltune.data.layout`` for the files."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.layout = CohortLayout(Path(root))
        self.manifest: CohortManifest = read_manifest(self.layout)
        self.labels: LabelSpec = load_labels(self.layout.labels)
        self.slides: pd.DataFrame = pq.read_table(self.layout.slides).to_pandas()
        self._cases = self._case_table(self.slides)
        self._case_tables: dict[Path, tuple[dict[str, int], np.ndarray]] = {}

    @staticmethod
    def _case_table(slides: pd.DataFrame) -> pd.DataFrame:
        clinical = [c for c in CLINICAL_COLUMNS if c in slides.columns]
        grouped = slides.groupby("case_id", sort=True)
        cases = grouped[[*CASE_LEVEL_COLUMNS, *clinical]].first()
        cases["slide_ids"] = grouped["slide_id"].agg(tuple)
        return cases

    @property
    def case_ids(self) -> list[str]:
        return list(self._cases.index)

    @property
    def cohort_names(self) -> list[str]:
        return sorted(self._cases["cohort"].unique())

    @property
    def labelled(self) -> bool:
        """False for new patients imported for prediction: nothing to train on."""
        return self.manifest.labelled

    def cases(self, folds: Iterable[int] | None = None, cohorts: Iterable[str] | None = None) -> list[str]:
        """Case ids, optionally restricted to some folds and/or cancer types, in sorted order."""
        mask = pd.Series(True, index=self._cases.index)
        if folds is not None:
            mask &= self._cases["fold"].isin(list(folds))
        if cohorts is not None:
            mask &= self._cases["cohort"].isin(list(cohorts))
        return list(self._cases.index[mask])

    def split(
        self, validation_fold: int, cohorts: Iterable[str] | None = None, test_fold: int | None = None
    ) -> tuple[list[str], list[str]]:
        """(training cases, validation cases) for one cross-validation fold.

        ``test_fold`` is held out of every split (a test set no model selection has seen).
        """
        for name, fold in (("validation_fold", validation_fold), ("test_fold", test_fold)):
            if fold is not None and not 0 <= fold < self.manifest.n_folds:
                raise InputError(f"{name} must be in 0..{self.manifest.n_folds - 1}, got {fold}")
        if test_fold == validation_fold:
            raise InputError(f"test_fold {test_fold} is also the validation fold")
        training = [f for f in range(self.manifest.n_folds) if f not in (validation_fold, test_fold)]
        return self.cases(training, cohorts), self.cases([validation_fold], cohorts)

    def test_cases(self, test_fold: int | None, cohorts: Iterable[str] | None = None) -> list[str]:
        """The held-out test fold's cases; none without a test fold."""
        return [] if test_fold is None else self.cases([test_fold], cohorts)

    def record(self, case_id: str) -> CaseRecord:
        try:
            row = self._cases.loc[case_id]
        except KeyError as exc:
            raise KeyError(f"case {case_id!r} is not in {self.layout.slides}") from exc
        return CaseRecord(
            case_id=case_id,
            cohort=str(row["cohort"]),
            subtype=None if pd.isna(row["subtype"]) else row["subtype"],
            time=math.nan if pd.isna(row["time"]) else float(row["time"]),
            event=None if pd.isna(row["event"]) else int(row["event"]),
            fold=int(row["fold"]),
            slide_ids=tuple(row["slide_ids"]),
            clinical={c: row[c] for c in CLINICAL_COLUMNS if c in row.index},
        )

    def slide_features(self, slide_id: str) -> SlideFeatures:
        """Zero-copy, read-only memory-mapped tiles of one slide."""
        return read_slide_features(self.layout.feature_file(slide_id))

    def sample(
        self, case_id: str, max_tiles: int | None = None, rng: np.random.Generator | None = None, modalities: Sequence[str] = ()
    ) -> CaseSample:
        """A case's tiles from all its slides, randomly capped at ``max_tiles`` (the paper: 25,000),
        and its vectors of ``modalities`` (names of ``COHORT_MODALITIES``).

        Without a cap, or when the case has fewer tiles, every tile is returned in slide order.
        """
        record = self.record(case_id)
        slides = [self.slide_features(s) for s in record.slide_ids]
        features, coords = _concatenate_capped(slides, max_tiles, rng or np.random.default_rng())
        return CaseSample(
            record=record,
            features=features,
            coords=coords,
            modalities={name: COHORT_MODALITIES[name].vector(self, case_id) for name in modalities},
            all_tiles=max_tiles is None or sum(s.n_tiles for s in slides) <= max_tiles,
        )

    @cached_property
    def gene_groups(self) -> dict[str, list[str]]:
        return read_gene_groups(self.layout.gene_groups)

    def case_table(self, path: Path, columns: Callable[[], list[str]]) -> tuple[dict[str, int], np.ndarray]:
        """(case -> row, cases x ``columns()`` float32) of a case table such as ``rna.parquet``,
        read once per cohort (a column may repeat: a gene in two pathways)."""
        if path not in self._case_tables:
            order = columns()
            table = pq.read_table(path, columns=["case_id", *dict.fromkeys(order)]).to_pandas()
            self._case_tables[path] = {case: i for i, case in enumerate(table["case_id"])}, table[order].to_numpy(dtype=np.float32)
        return self._case_tables[path]

    def modality_cases(self, name: str) -> frozenset[str]:
        """The cases that have modality ``name`` (a name of ``COHORT_MODALITIES``)."""
        return COHORT_MODALITIES[name].cases(self)

    def modality_vector(self, name: str, case_id: str) -> np.ndarray | None:
        """The case's vector of modality ``name``; None when the case lacks it."""
        return COHORT_MODALITIES[name].vector(self, case_id)

    def modality_matrix(self, name: str, case_ids: Sequence[str]) -> np.ndarray:
        """The vectors of those ``case_ids`` that have modality ``name`` (e.g. to normalise on a training split)."""
        modality = COHORT_MODALITIES[name]
        vectors = [modality.vector(self, c) for c in case_ids]
        present = [v for v in vectors if v is not None]
        if not present:
            raise InputError(f"none of the {len(case_ids)} case(s) has a row in {modality.source(self.layout)}")
        return np.stack(present)


def _concatenate_capped(
    slides: list[SlideFeatures], max_tiles: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    total = sum(s.n_tiles for s in slides)
    if max_tiles is None or total <= max_tiles:
        return (
            np.concatenate([s.features for s in slides]),
            np.concatenate([s.coords for s in slides]),
        )
    chosen = np.sort(rng.choice(total, size=max_tiles, replace=False))
    offsets = np.cumsum([0] + [s.n_tiles for s in slides])
    features, coords = [], []
    for i, slide in enumerate(slides):
        local = chosen[(chosen >= offsets[i]) & (chosen < offsets[i + 1])] - offsets[i]
        features.append(slide.features[local])
        coords.append(slide.coords[local])
    return np.concatenate(features), np.concatenate(coords)
