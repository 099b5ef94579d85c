"""Import CLAM/Trident-style ``.h5`` tile features into the cohort format.

Those extractors write one ``<slide_id>.h5`` per slide with a ``features`` dataset (N x D, or
1 x N x D) and a ``coords`` dataset (N x 2 level-0 pixels). The user brings a slide table
(CSV) with the labels; folds are assigned per case when the table has none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa

from modaltune.atomic import write_json_atomic, write_parquet_atomic
from modaltune.data.clinical import CLINICAL_COLUMNS
from modaltune.data.features import write_slide_features
from modaltune.data.folds import assign_case_folds
from modaltune.data.labels import default_labels, load_labels, save_labels
from modaltune.errors import InputError
from modaltune.data.layout import SAFE_SLIDE_ID, SLIDE_COLUMNS, CohortLayout, CohortManifest, read_gene_groups, write_manifest

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]


@dataclass(frozen=True)
class H5ImportOptions:
    labels: Path | None = None
    rna: Path | None = None
    gene_groups: Path | None = None
    n_folds: int = 5
    seed: int = 0
    tile_size_px: int = 256


class H5ImportError(InputError):
    """The import inputs are inconsistent; the message lists every problem found."""


def import_h5_cohort(
    h5_dir: str | os.PathLike[str],
    slides_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: H5ImportOptions = H5ImportOptions(),
    progress: Progress | None = None,
) -> CohortLayout:
    """Convert ``h5_dir/<slide_id>.h5`` for every row of ``slides_csv`` into a cohort at ``out_dir``.

    All inputs are checked (table columns, every h5 file's datasets and shapes) before the
    first feature file is converted, so a bad file is reported in seconds, not after hours.
    """
    h5_dir, layout = Path(h5_dir), CohortLayout(Path(out_dir))
    slides = _read_slide_table(Path(slides_csv))
    feature_dim = _check_h5_files(h5_dir, slides["slide_id"].tolist())
    if (options.rna is None) != (options.gene_groups is None):
        raise H5ImportError("--rna and --gene-groups go together: give both or neither")
    labels = load_labels(options.labels) if options.labels else default_labels(sorted(slides["cohort"].unique()))

    if "fold" not in slides.columns:
        cases = slides.groupby("case_id", sort=True)[["cohort", "subtype", "event"]].first().reset_index()
        folds = assign_case_folds(cases, options.n_folds, options.seed, ["cohort", "subtype", "event"])
        slides["fold"] = slides["case_id"].map(folds)
        logger.info("assigned %d case-level folds (stratified by cohort, subtype, event)", options.n_folds)

    layout.features_dir.mkdir(parents=True, exist_ok=True)
    for slide_id in (progress or _identity)(slides["slide_id"].tolist()):
        features, coords = _read_h5(h5_dir / f"{slide_id}.h5")
        write_slide_features(layout.feature_file(slide_id), features, coords, slide_id=slide_id)

    columns = [*SLIDE_COLUMNS, *[c for c in CLINICAL_COLUMNS if c in slides.columns]]
    write_parquet_atomic(layout.slides, pa.Table.from_pandas(slides[columns], preserve_index=False))
    save_labels(layout.labels, labels)
    if options.rna is not None and options.gene_groups is not None:
        rna = pd.read_csv(options.rna) if options.rna.suffix == ".csv" else pd.read_parquet(options.rna)
        write_parquet_atomic(layout.rna, pa.Table.from_pandas(rna, preserve_index=False))
        write_json_atomic(layout.gene_groups, read_gene_groups(options.gene_groups))
    write_manifest(layout, CohortManifest(feature_dim=feature_dim, tile_size_px=options.tile_size_px, n_folds=options.n_folds))
    return layout


def _identity(items: Iterable[T]) -> Iterator[T]:
    yield from items


def _read_slide_table(path: Path) -> pd.DataFrame:
    try:
        slides = pd.read_csv(path, dtype={"slide_id": str, "case_id": str})
    except FileNotFoundError as exc:
        raise H5ImportError(f"{path}: file not found") from exc
    required = [c for c in SLIDE_COLUMNS if c != "fold"]
    missing = [c for c in required if c not in slides.columns]
    if missing:
        raise H5ImportError(f"{path}: missing column(s) {missing}; needs {required} (+ optional fold, {list(CLINICAL_COLUMNS)})")
    unsafe = [s for s in slides["slide_id"] if not isinstance(s, str) or not SAFE_SLIDE_ID.match(s)]
    if unsafe:
        raise H5ImportError(f"{path}: slide_id must be letters, digits, '.', '_' or '-': {unsafe[:5]}")
    for column in CLINICAL_COLUMNS:
        if column in slides.columns and column != "age":
            slides[column] = slides[column].astype(object).where(slides[column].notna(), None)
    return slides


def _check_h5_files(h5_dir: Path, slide_ids: list[str]) -> int:
    """Check every file's datasets and shapes (metadata only); return the common feature width."""
    problems: list[str] = []
    widths: dict[int, str] = {}
    for slide_id in slide_ids:
        path = h5_dir / f"{slide_id}.h5"
        try:
            with h5py.File(path, "r") as handle:
                missing = [name for name in ("features", "coords") if name not in handle]
                if missing:
                    problems.append(f"{path}: slide {slide_id}: missing dataset(s) {missing}")
                    continue
                n_features, dim = _squeezed_shape(handle["features"].shape, path, "features", problems)
                n_coords, coord_dim = _squeezed_shape(handle["coords"].shape, path, "coords", problems)
        except FileNotFoundError:
            problems.append(f"{path}: slide {slide_id}: h5 file not found")
            continue
        except OSError as exc:
            problems.append(f"{path}: slide {slide_id}: not a readable HDF5 file ({exc})")
            continue
        if n_features == 0:
            problems.append(f"{path}: slide {slide_id}: empty bag (no tiles)")
        if (n_coords, coord_dim) != (n_features, 2):
            problems.append(f"{path}: slide {slide_id}: coords shape ({n_coords}, {coord_dim}) != ({n_features}, 2)")
        widths.setdefault(dim, slide_id)
    if len(widths) > 1:
        problems.append(f"{h5_dir}: slides disagree on feature width: {', '.join(f'{d} (e.g. {s})' for d, s in widths.items())}")
    if problems:
        raise H5ImportError("cannot import:\n  " + "\n  ".join(problems))
    return next(iter(widths))


def _squeezed_shape(shape: tuple[int, ...], path: Path, name: str, problems: list[str]) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        problems.append(f"{path}: dataset '{name}' must be 2-D (or 1 x N x D), got shape {shape}")
        return (-1, -1)
    return (int(shape[0]), int(shape[1]))


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as handle:
        features = np.asarray(handle["features"][()])
        coords = np.asarray(handle["coords"][()])
    return features.reshape(-1, features.shape[-1]), coords.reshape(-1, 2).astype(np.int64)
