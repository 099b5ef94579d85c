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
    """One slide's patching, as its file says (None: the file does not say)."""

    patch_size_level0: int | None = None
    patch_size: int | None = None
    level0_magnification: float | None = None
    target_magnification: float | None = None

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


def rescale_coords(coords: np.ndarray, scale: float) -> np.ndarray:
    """A slide's level-0 coordinates in pixels at the cohort's patching magnification."""
    return np.rint(coords * scale).astype(np.int64)
