"""Per-slide tile features as Arrow IPC files, read zero-copy through a memory map.

One uncompressed Arrow IPC file per slide with a single record batch of two fixed-size-list
columns: ``features`` (N x D float16) and ``coords`` (N x 2 int32, level-0 pixels of each
tile's top-left corner). Uncompressed + single batch means the reader's numpy arrays point
straight into the page cache: opening a 5,000-tile slide costs no copy, and a Ray Train
worker only pages in the tiles it samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from modaltune.atomic import atomic_path
from modaltune.errors import InputError

FEATURES_COLUMN = "features"
COORDS_COLUMN = "coords"
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class SlideFeatures:
    """Read-only views of one slide's tiles: ``features`` (N, D) float16, ``coords`` (N, 2) int32."""

    features: np.ndarray
    coords: np.ndarray

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])


class FeatureFileError(InputError):
    """A feature file is missing, unreadable or not shaped as the format requires."""


def write_slide_features(
    path: str | os.PathLike[str], features: np.ndarray, coords: np.ndarray, *, slide_id: str
) -> None:
    """Write one slide atomically; features are stored as float16 (checked for overflow)."""
    features = np.asarray(features)
    coords = np.asarray(coords)
    if features.ndim != 2 or coords.shape != (features.shape[0], 2):
        raise FeatureFileError(
            f"slide {slide_id}: features must be (N, D) and coords (N, 2); got {features.shape} and {coords.shape}"
        )
    if features.dtype != np.float16:
        if np.abs(features).max(initial=0.0) > FLOAT16_MAX:
            raise FeatureFileError(f"slide {slide_id}: feature values exceed the float16 range ({FLOAT16_MAX})")
        features = features.astype(np.float16)
    if np.abs(coords).max(initial=0) > np.iinfo(np.int32).max:
        raise FeatureFileError(f"slide {slide_id}: coordinates exceed the int32 range")
    n_tiles, dim = features.shape
    batch = pa.record_batch(
        [
            pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(features).reshape(-1)), dim),
            pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(coords, dtype=np.int32).reshape(-1)), 2),
        ],
        names=[FEATURES_COLUMN, COORDS_COLUMN],
    )
    schema = batch.schema.with_metadata({"slide_id": slide_id, "n_tiles": str(n_tiles), "feature_dim": str(dim)})
    with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_batch(batch)


def read_slide_features(path: str | os.PathLike[str]) -> SlideFeatures:
    """Memory-map one slide's feature file; the returned arrays are zero-copy and read-only."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: feature file not found")
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        if reader.num_record_batches != 1:
            raise FeatureFileError(f"{path}: expected one record batch, found {reader.num_record_batches}")
        batch = reader.get_batch(0)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise FeatureFileError(f"{path}: not a readable Arrow IPC file ({exc})") from exc
    names = batch.schema.names
    if FEATURES_COLUMN not in names or COORDS_COLUMN not in names:
        raise FeatureFileError(f"{path}: needs columns '{FEATURES_COLUMN}' and '{COORDS_COLUMN}', found {names}")
    return SlideFeatures(
        features=_fixed_size_matrix(path, batch.column(FEATURES_COLUMN), FEATURES_COLUMN, np.float16),
        coords=_fixed_size_matrix(path, batch.column(COORDS_COLUMN), COORDS_COLUMN, np.int32),
    )


def _fixed_size_matrix(path: Path, column: pa.Array, name: str, dtype: type[np.generic]) -> np.ndarray:
    if not isinstance(column, pa.FixedSizeListArray):
        raise FeatureFileError(f"{path}: column '{name}' must be a fixed-size list, got {column.type}")
    width = column.type.list_size
    values = column.values
    if values.type != pa.from_numpy_dtype(np.dtype(dtype)):
        raise FeatureFileError(f"{path}: column '{name}' must hold {np.dtype(dtype).name}, got {values.type}")
    if column.null_count or values.null_count:
        raise FeatureFileError(f"{path}: column '{name}' has null entries")
    flat = values.to_numpy(zero_copy_only=True)[column.offset * width : (column.offset + len(column)) * width]
    return flat.reshape(len(column), width)
