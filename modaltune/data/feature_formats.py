"""Tile-feature files as the extractors write them, read through one small interface.

A user points ``import-h5`` at a folder; its format is detected once (and named in one log
line) instead of every slide failing on its own:

- ``h5``: TRIDENT's ``features_<encoder>/`` and CLAM's ``h5_files/``: ``<slide_id>.h5`` with
  ``features`` (N x D, or 1 x N x D) and ``coords`` (N x 2 level-0 pixels; TRIDENT, and CLAM's
  patching step, put the patching in ``coords.attrs``: ``modaltune.data.tile_geometry``).
- ``clam-pt``: CLAM's ``pt_files/``: ``<slide_id>.pt``, a tensor N x D without coordinates;
  they are read from the ``h5_files/<slide_id>.h5`` that CLAM writes beside them.
- ``stamp``: STAMP's ``<slide_id>.h5`` with ``feats`` and ``coords`` in micrometres
  (``attrs['unit'] == 'um'``, ``tile_size_um``, ``tile_size_px`` on the file).

Each format checks a slide's file from its metadata alone (``inspect``) before anything is
converted, and reads it whole only when converting (``read``). A format is one class registered
in ``FEATURE_FORMATS`` under its name (``import-h5 --format`` offers the table's names); one with
options declares them (``Settings``), validated by ``detect_format`` for the format it picks.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import h5py
import numpy as np

from modaltune.data.tile_geometry import TileGeometry
from modaltune.errors import InputError
from modaltune.registry import EntrySettings, Registry

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


class SlideFileProblem(Exception):
    """One slide's file cannot be imported; the importer collects these and reports them all,
    each after the slide's file (``path_of``), so a message names any other file it concerns."""


@dataclass(frozen=True)
class SlideFileInfo:
    """What a slide's file holds, from its metadata: tile and coordinate counts, width, geometry."""

    n_tiles: int
    feature_dim: int
    n_coords: int
    geometry: TileGeometry


class FeatureFormat(ABC):
    """One extractor's file layout inside a folder of per-slide files."""

    name: ClassVar[str]
    description: ClassVar[str]
    Settings: ClassVar[type[EntrySettings]] = EntrySettings

    def __init__(self, folder: Path, settings: EntrySettings | None = None) -> None:
        self.folder = folder
        self.settings = settings if settings is not None else self.Settings()

    def inputs(self) -> dict[str, Path]:
        """Every folder the format reads, by how a message names it (``import-h5`` never writes there)."""
        return {"the feature folder": self.folder}

    @classmethod
    @abstractmethod
    def holds(cls, folder: Path, example: Path | None) -> bool:
        """Whether ``folder`` (whose first slide file is ``example``, if any) is in this format."""

    @abstractmethod
    def path_of(self, slide_id: str) -> Path:
        """The file that holds ``slide_id``'s features."""

    @abstractmethod
    def inspect(self, slide_id: str) -> SlideFileInfo:
        """Shapes and geometry from metadata only; raises ``SlideFileProblem`` naming what is wrong."""

    @abstractmethod
    def read(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, D) float32, coords (N, 2) float64 in the file's own unit)."""


FEATURE_FORMATS: Registry[type[FeatureFormat]] = Registry("feature format")


def register_format(cls: type[FeatureFormat]) -> type[FeatureFormat]:
    """Adds a format class to ``FEATURE_FORMATS`` under its ``name``."""
    return FEATURE_FORMATS.register(cls.name)(cls)


@register_format
class H5Features(FeatureFormat):
    name = "h5"
    description = "TRIDENT / CLAM .h5 ('features' and 'coords' in level-0 pixels)"
    features_dataset: ClassVar[str] = "features"

    @classmethod
    def holds(cls, folder: Path, example: Path | None) -> bool:
        return example is not None and example.suffix == ".h5" and _h5_has(example, cls.features_dataset)

    def path_of(self, slide_id: str) -> Path:
        return self.folder / f"{slide_id}.h5"

    def inspect(self, slide_id: str) -> SlideFileInfo:
        with _open_h5(self.path_of(slide_id)) as handle:
            _require(handle, (self.features_dataset, "coords"))
            n_tiles, dim = _matrix_shape(handle[self.features_dataset].shape, self.features_dataset)
            n_coords, _ = _coords_shape(handle["coords"].shape)
            return SlideFileInfo(n_tiles, dim, n_coords, self._geometry(handle))

    def read(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        with _open_h5(self.path_of(slide_id)) as handle:
            return _as_matrix(handle[self.features_dataset][()]), _as_coords(handle["coords"][()])

    def _geometry(self, handle: h5py.File) -> TileGeometry:
        """TRIDENT's or CLAM's patching, from ``coords.attrs`` (CLAM's h5_files/ have none)."""
        return _coords_geometry(handle["coords"])


@register_format
class ClamPtFeatures(FeatureFormat):
    name = "clam-pt"
    description = "CLAM pt_files/ (tensors), coordinates from the h5_files/ beside them"

    def __init__(self, folder: Path, settings: EntrySettings | None = None) -> None:
        super().__init__(folder, settings)
        self.coords_folder = folder.parent / "h5_files"
        if not self.coords_folder.is_dir():
            raise InputError(
                f"{folder}: CLAM .pt files hold no tile coordinates, which the slide encoder needs, and there is no "
                f"{self.coords_folder} beside them to read them from; pass CLAM's h5_files/ folder instead"
            )

    def inputs(self) -> dict[str, Path]:
        return {**super().inputs(), "CLAM's h5_files/ (the coordinates of its .pt files)": self.coords_folder}

    @classmethod
    def holds(cls, folder: Path, example: Path | None) -> bool:
        return example is not None and example.suffix == ".pt"

    def path_of(self, slide_id: str) -> Path:
        return self.folder / f"{slide_id}.pt"

    def inspect(self, slide_id: str) -> SlideFileInfo:
        n_tiles, dim = _matrix_shape(tuple(self._tensor(slide_id, mmap=True).shape), "tensor")
        n_coords, geometry = self._coordinates(slide_id, lambda d: (_coords_shape(d.shape)[0], _coords_geometry(d)))
        return SlideFileInfo(n_tiles, dim, n_coords, geometry)

    def read(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        features = self._tensor(slide_id, mmap=False).float().numpy()
        return _as_matrix(features), self._coordinates(slide_id, lambda d: _as_coords(d[()]))

    def _coordinates(self, slide_id: str, use: Callable[[h5py.Dataset], T]) -> T:
        path = self.coords_folder / f"{slide_id}.h5"
        try:
            with _open_h5(path) as handle:
                _require(handle, ("coords",))
                return use(handle["coords"])
        except SlideFileProblem as exc:
            raise SlideFileProblem(f"its coordinates, {path}: {exc}") from exc

    def _tensor(self, slide_id: str, mmap: bool) -> torch.Tensor:
        import torch  # only CLAM's .pt files need it: the command line's parser does not pay its import

        path = self.path_of(slide_id)
        if not path.is_file():
            raise SlideFileProblem(".pt file not found")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except (RuntimeError, OSError, EOFError) as exc:
            raise SlideFileProblem(f"not a readable torch file ({exc})") from exc
        if not isinstance(loaded, torch.Tensor):
            raise SlideFileProblem(f"holds a {type(loaded).__name__}, CLAM writes one tensor of tile features")
        return loaded


@register_format
class StampFeatures(H5Features):
    name = "stamp"
    description = "STAMP .h5 ('feats', coordinates in micrometres)"
    features_dataset = "feats"

    def _geometry(self, handle: h5py.File) -> TileGeometry:
        """STAMP >= 2 says ``unit='um'`` with the tile's size in micrometres and pixels; older
        files say nothing and hold pixels."""
        attrs = handle.attrs
        unit = attrs.get("unit")
        if unit is None:
            return TileGeometry()
        unit = unit.decode() if isinstance(unit, bytes) else str(unit)
        if unit != "um":
            raise SlideFileProblem(f"coordinates in unit {unit!r}: STAMP files say 'um' (micrometres)")
        missing = [key for key in ("tile_size_um", "tile_size_px") if key not in attrs]
        if missing:
            raise SlideFileProblem(f"coordinates in micrometres but the file has no {missing} attribute(s) to place tiles with")
        return TileGeometry(patch_size=int(attrs["tile_size_px"]), tile_size_um=float(attrs["tile_size_um"]))


def detect_format(
    folder: Path,
    slide_ids: Sequence[str],
    name: str | None = None,
    hint: Callable[[Path], str] = lambda _: "",
    settings: Mapping[str, Any] | None = None,
) -> FeatureFormat:
    """The format of ``folder`` (``name`` forces one), from the first slide file found in it,
    with ``settings`` (the format's own, validated by it; default: its defaults).

    Raises ``InputError`` in one line when no slide has a file there, with ``hint(folder)``
    saying what the folder looks like instead, when a forced format does not fit files that
    another format does, or when a setting is not the format's or has a bad value.
    """
    if name is not None and name not in FEATURE_FORMATS:
        raise InputError(f"feature format {name!r}: choose from {sorted(FEATURE_FORMATS)}")
    examples = next(
        (files for s in slide_ids if (files := [path for suffix in (".h5", ".pt") if (path := folder / f"{s}{suffix}").is_file()])),
        [],
    )
    if name is not None:
        forced = FEATURE_FORMATS[name]
        fits = _fitting(folder, examples)
        if fits and forced not in fits:
            example, fit = next(iter(fits.values())), next(iter(fits))
            raise InputError(
                f"--format {name}: {example} is not {forced.description}; the files look like {fit.name!r} ({fit.description}): "
                f"pass --format {fit.name} or leave --format out"
            )
        return forced(folder, FEATURE_FORMATS.settings(name, settings))
    if not examples:
        raise InputError(f"none of the {len(slide_ids)} slides has a <slide_id>.h5 or .pt file in {folder}{hint(folder)}")
    fits = _fitting(folder, examples)
    if not fits:
        raise InputError(
            f"{examples[0]}: not a feature file of a known format (looked for {'; '.join(c.description for c in FEATURE_FORMATS.values())})"
        )
    cls = next(iter(fits))
    logger.info("%s: %s", folder, cls.description)
    return cls(folder, FEATURE_FORMATS.settings(cls.name, settings))


def _fitting(folder: Path, examples: list[Path]) -> dict[type[FeatureFormat], Path]:
    """The formats that hold one of a slide's files, each with the file, in registry order."""
    return {cls: example for cls in FEATURE_FORMATS.values() for example in examples if cls.holds(folder, example)}


def _coords_geometry(coords: h5py.Dataset) -> TileGeometry:
    try:
        return TileGeometry.from_attrs(coords.attrs)
    except ValueError as exc:
        raise SlideFileProblem(str(exc)) from exc


def _h5_has(path: Path, dataset: str) -> bool:
    try:
        with h5py.File(path, "r") as handle:
            return dataset in handle
    except OSError:
        return False


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise SlideFileProblem("h5 file not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise SlideFileProblem(f"not a readable HDF5 file ({exc})") from exc


def _require(handle: h5py.File, names: tuple[str, ...]) -> None:
    missing = [name for name in names if name not in handle]
    if missing:
        raise SlideFileProblem(f"missing dataset(s) {missing}")


def _matrix_shape(shape: tuple[int, ...], name: str) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise SlideFileProblem(f"'{name}' must be 2-D (or 1 x N x D), got shape {shape}")
    return int(shape[0]), int(shape[1])


def _coords_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    n, width = _matrix_shape(shape, "coords")
    if width != 2:
        raise SlideFileProblem(f"'coords' must have 2 columns (x, y), got shape {shape}")
    return n, width


def _as_matrix(values: Any) -> np.ndarray:
    values = np.asarray(values)
    return values.reshape(-1, values.shape[-1]).astype(np.float32, copy=False)


def _as_coords(values: Any) -> np.ndarray:
    return np.asarray(values).reshape(-1, 2).astype(np.float64)
