"""Tile size and magnification of imported slides, read from the feature files' own attributes.

TRIDENT writes them on the ``coords`` dataset: ``patch_size`` (pixels at the target
magnification), ``patch_size_level0`` (the same patch in level-0 pixels) and
``level0_magnification`` / ``target_magnification``. A 40x scan patched at 20x has 512-px
level-0 patches, a 20x scan 256-px ones, for the same tissue per tile. The importer stores every
slide's coordinates in pixels at the target magnification (level-0 pixels x patch_size /
patch_size_level0), so one tile size, ``patch_size``, holds for the whole cohort and the SLFM's
position grid (GigaPath: one cell per 256-px tile at 20x, 1000 x 1000 cells) sees 40x and 20x
scans alike. Slides patched at different target magnifications or patch sizes cover different
tissue per tile and are refused.

STAMP stores coordinates in micrometres with the tile's size in micrometres and in pixels
(``tile_size_um``, ``tile_size_px``): they become pixels of the tile as it was fed to the tile
encoder (µm x tile_size_px / tile_size_um), so one tile is again one grid cell.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from modaltune.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileGeometry:
    """One slide's patching, as its file says (None: the file does not say). ``tile_size_um``
    set: the coordinates are micrometres (STAMP) and ``patch_size`` is the tile in pixels."""

    patch_size_level0: int | None = None
    patch_size: int | None = None
    level0_magnification: float | None = None
    target_magnification: float | None = None
    tile_size_um: float | None = None

    @classmethod
    def from_attrs(cls, attrs: Any) -> TileGeometry:
        def number(key: str) -> float | None:
            value = attrs.get(key)
            return None if value is None or float(value) <= 0 else float(value)

        level0, size = number("patch_size_level0"), number("patch_size")
        return cls(
            patch_size_level0=None if level0 is None else int(level0),
            patch_size=None if size is None else int(size),
            level0_magnification=number("level0_magnification"),
            target_magnification=number("target_magnification"),
        )


@dataclass(frozen=True)
class CohortGeometry:
    """The cohort's tile size (pixels of the stored coordinates) and each slide's coordinate scale onto it."""

    tile_size_px: int
    coordinate_scale: dict[str, float]


def cohort_geometry(geometries: dict[str, TileGeometry], tile_size_px: int | None, default_tile_size: int) -> CohortGeometry:
    """One tile size for the cohort, from the files' attributes or the user's ``tile_size_px``.

    Raises ``InputError`` when the files disagree in a way no rescaling fixes, or disagree with
    the user's tile size.
    """
    if any(g.tile_size_um is not None for g in geometries.values()):
        return _micrometre_geometry(geometries, tile_size_px)
    known = {slide: g for slide, g in geometries.items() if g.patch_size_level0 is not None}
    if not known:
        return CohortGeometry(tile_size_px or default_tile_size, {})
    if len(known) < len(geometries):
        unknown = sorted(set(geometries) - set(known))
        raise InputError(
            f"{len(known)} slide(s) say their patch size (TRIDENT's coords.attrs['patch_size_level0']) and "
            f"{len(unknown)} do not (e.g. {unknown[:3]}): features from different extractors; import them separately"
        )
    patching = Counter((g.target_magnification, g.patch_size) for g in known.values())
    if len(patching) > 1:
        described = ", ".join(f"{n} slide(s) at {mag or '?'}x with {size or '?'}-px patches" for (mag, size), n in patching.most_common())
        raise InputError(f"slides were patched differently ({described}): one tile must cover the same tissue in a cohort")
    (_, patch_size), = patching
    tile = patch_size or Counter(g.patch_size_level0 for g in known.values()).most_common(1)[0][0]
    if tile_size_px is not None and tile_size_px != tile:
        raise InputError(
            f"--tile-size {tile_size_px} but the files say their patches are {tile} px "
            "(TRIDENT's coords.attrs['patch_size']); leave --tile-size out"
        )
    scale = {slide: tile / g.patch_size_level0 for slide, g in known.items() if g.patch_size_level0 != tile}
    if scale:
        scans = Counter(known[s].patch_size_level0 for s in scale)
        logger.warning(
            "%d slide(s) have level-0 patches of %s px for %d-px tiles (scans at a higher resolution than the "
            "patching): their coordinates are rescaled to pixels at the patching magnification",
            len(scale), ", ".join(map(str, scans)), tile,
        )
    return CohortGeometry(tile, scale)


def _micrometre_geometry(geometries: dict[str, TileGeometry], tile_size_px: int | None) -> CohortGeometry:
    """STAMP's micrometre coordinates onto a grid of its tiles (see the module docstring)."""
    tilings = Counter((g.tile_size_um, g.patch_size) for g in geometries.values())
    if len(tilings) > 1:
        described = ", ".join(
            f"{n} slide(s) with {'pixel coordinates' if um is None else f'{um:g}-um tiles of {px} px'}"
            for (um, px), n in tilings.most_common()
        )
        raise InputError(f"slides were tiled differently ({described}): one tile must cover the same tissue in a cohort")
    ((tile_um, tile_px),) = tilings
    assert tile_um is not None and tile_px is not None
    if tile_size_px is not None and tile_size_px != tile_px:
        raise InputError(f"--tile-size {tile_size_px} but the files say their tiles are {tile_px} px (STAMP's tile_size_px); leave --tile-size out")
    logger.info("coordinates in micrometres: %g-um tiles of %d px, one grid cell each", tile_um, tile_px)
    return CohortGeometry(tile_px, {slide: tile_px / tile_um for slide in geometries})


def rescale_coords(coords: np.ndarray, scale: float) -> np.ndarray:
    """A slide's level-0 coordinates in pixels at the cohort's patching magnification."""
    return np.rint(coords * scale).astype(np.int64)
