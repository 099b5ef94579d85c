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

CLAM's create_patches_fp.py writes ``patch_level``, ``patch_size`` (pixels at that level) and
``downsample`` (the level's, x and y) on ``coords``: the patch is patch_size x downsample level-0
pixels, and the scan's magnification is not recorded (its extract_features_fp.py writes no
attributes into ``h5_files/`` at all). The slide table may say what a file does not
(``SLIDE_TABLE_COLUMNS``: ``tile_size_px``, ``magnification``). Where every scan's magnification
is known, each slide's patch is put in pixels at one reference magnification (TRIDENT's target,
else the lowest scan's), and slides whose patches then differ cover different tissue and are
refused; where it is not, the level-0 patch sizes must agree (the scans are taken to share one
magnification) or the import is refused, naming a slide of each kind.

STAMP stores coordinates in micrometres with the tile's size in micrometres and in pixels
(``tile_size_um``, ``tile_size_px``): they become pixels of the tile as it was fed to the tile
encoder (µm x tile_size_px / tile_size_um), so one tile is again one grid cell.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modaltune.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileGeometry:
    """One slide's patching, as its file or the slide table says (None: nothing says).
    ``patch_size`` is TRIDENT's patch at its target magnification; ``tile_size_um`` set: the
    coordinates are micrometres (STAMP) and ``patch_size`` is the tile in pixels. ``said_by``
    names where the level-0 patch size came from, for messages."""

    patch_size_level0: int | None = None
    patch_size: int | None = None
    level0_magnification: float | None = None
    target_magnification: float | None = None
    tile_size_um: float | None = None
    said_by: str | None = None

    @classmethod
    def from_attrs(cls, attrs: Any) -> TileGeometry:
        """TRIDENT's or CLAM's attributes of ``coords`` (see the module docstring); raises
        ``ValueError`` when CLAM's do not give the patch's size in level-0 pixels."""
        if "patch_level" in attrs and "patch_size_level0" not in attrs:
            return cls._from_clam(attrs)
        level0, size = _positive(attrs, "patch_size_level0"), _positive(attrs, "patch_size")
        return cls(
            patch_size_level0=None if level0 is None else int(level0),
            patch_size=None if size is None else int(size),
            level0_magnification=_positive(attrs, "level0_magnification"),
            target_magnification=_positive(attrs, "target_magnification"),
            said_by=None if level0 is None else "TRIDENT's coords attributes",
        )

    @classmethod
    def _from_clam(cls, attrs: Any) -> TileGeometry:
        size, level = _positive(attrs, "patch_size"), int(np.ravel(attrs["patch_level"])[0])
        if size is None:
            raise ValueError("CLAM's coords attributes have a patch_level but no patch_size")
        if "downsample" in attrs:
            downsample = float(np.ravel(attrs["downsample"])[0])
        elif level == 0:
            downsample = 1.0
        else:
            raise ValueError(f"CLAM's coords attributes have patch_level {level} but no downsample: its patches' level-0 size is unknown")
        return cls(patch_size_level0=round(size * downsample), said_by="CLAM's coords attributes")

    def completed_by(self, table: TileGeometry) -> TileGeometry:
        """This file's geometry with what only the slide table says; ``ValueError`` where they disagree."""
        if table.patch_size_level0 is not None and self.patch_size_level0 not in (None, table.patch_size_level0):
            raise ValueError(f"tile_size_px {table.patch_size_level0} but {self.said_by} say {self.patch_size_level0}-px level-0 patches")
        if table.level0_magnification is not None and self.level0_magnification not in (None, table.level0_magnification):
            raise ValueError(f"magnification {table.level0_magnification:g} but {self.said_by} say {self.level0_magnification:g}x")
        return replace(
            self,
            patch_size_level0=self.patch_size_level0 or table.patch_size_level0,
            level0_magnification=self.level0_magnification or table.level0_magnification,
            said_by=self.said_by or table.said_by,
        )

    def kind(self) -> str:
        """The patching, for messages that list the kinds of a cohort."""
        if self.patch_size is not None:
            return f"at {_magnification(self.target_magnification)} with {self.patch_size}-px patches"
        at = f" at {_magnification(self.level0_magnification)}" if self.level0_magnification else ""
        return f"with {self.patch_size_level0}-px level-0 patches{at}"


# Slide-table columns that say what a feature file may not (CLAM's h5_files carry no attributes).
SLIDE_TABLE_COLUMNS = {
    "tile_size_px": "the slide's patch in level-0 pixels (CLAM: patch_size x the patch level's downsample)",
    "magnification": "the scan's level-0 magnification, its objective power (e.g. 40 or 20; OpenSlide's openslide.objective-power)",
}


def slide_table_geometry(slides: pd.DataFrame, table: Path) -> dict[str, TileGeometry]:
    """Each slide's patching as the slide table's ``SLIDE_TABLE_COLUMNS`` say (empty: unknown).

    Raises ``InputError`` naming the slides whose value is not a number > 0.
    """
    unknown = pd.Series(np.nan, index=slides.index)
    values = {column: _positive_column(slides, column, table) if column in slides.columns else unknown for column in SLIDE_TABLE_COLUMNS}
    return {
        slide: TileGeometry(
            patch_size_level0=None if pd.isna(size) else int(size),
            level0_magnification=None if pd.isna(magnification) else float(magnification),
            said_by=None if pd.isna(size) else f"the tile_size_px column of {table.name}",
        )
        for slide, size, magnification in zip(slides["slide_id"], values["tile_size_px"], values["magnification"], strict=True)
    }


def _positive_column(slides: pd.DataFrame, column: str, table: Path) -> pd.Series:
    raw = slides[column]
    numbers = pd.to_numeric(raw, errors="coerce")
    whole = column == "tile_size_px"
    bad = raw.notna() & ~((numbers > 0) & (numbers % 1 == 0 if whole else True))
    if bad.any():
        shown = ", ".join(f"{value!r} (slide {slide})" for slide, value in zip(slides.loc[bad, "slide_id"], raw[bad], strict=True))
        raise InputError(
            f"{table}: {column} must be {'a whole' if whole else 'a'} number > 0, {SLIDE_TABLE_COLUMNS[column]}; got {_clip(shown)}"
        )
    return numbers


def combine_geometries(files: dict[str, TileGeometry], table: dict[str, TileGeometry], table_path: Path) -> dict[str, TileGeometry]:
    """Each slide's file geometry completed by the slide table; ``InputError`` naming every slide
    whose table row contradicts its file."""
    combined, problems = {}, []
    for slide, geometry in files.items():
        try:
            combined[slide] = geometry.completed_by(table.get(slide, TileGeometry()))
        except ValueError as exc:
            problems.append(f"slide {slide}: {exc}")
    if problems:
        raise InputError(f"{table_path} contradicts the feature files: {_clip('; '.join(problems))}")
    return combined


@dataclass(frozen=True)
class CohortGeometry:
    """The cohort's tile size (pixels of the stored coordinates) and each slide's coordinate scale onto it."""

    tile_size_px: int
    coordinate_scale: dict[str, float]


def cohort_geometry(geometries: dict[str, TileGeometry], tile_size_px: int | None, default_tile_size: int) -> CohortGeometry:
    """One tile size for the cohort, from the files' attributes and the slide table, else the
    user's ``tile_size_px`` (for files that say nothing), else ``default_tile_size``.

    Raises ``InputError`` when the slides disagree in a way no rescaling fixes, when whether they
    cover the same tissue per tile cannot be known, or when ``tile_size_px`` contradicts the files.
    """
    if any(g.tile_size_um is not None for g in geometries.values()):
        return _micrometre_geometry(geometries, tile_size_px)
    silent = [slide for slide, g in geometries.items() if g.patch_size_level0 is None]
    if silent and len(silent) < len(geometries) and tile_size_px is None:
        said = [slide for slide in geometries if slide not in silent]
        raise InputError(
            f"{len(said)} slide(s) say their patch size (e.g. {_examples(said)}) and {len(silent)} do not (e.g. {_examples(silent)}): "
            "features from different extractors? import them separately, or give the others a tile_size_px column in the slide table"
        )
    fill = tile_size_px or default_tile_size
    level0 = {s: fill if g.patch_size_level0 is None else g.patch_size_level0 for s, g in geometries.items()}
    geometries = {s: replace(g, patch_size_level0=level0[s]) for s, g in geometries.items()}
    trident = Counter((g.target_magnification, g.patch_size) for g in geometries.values() if g.patch_size is not None)
    if len(trident) > 1:
        raise InputError(f"slides were patched differently ({_kinds(geometries)}): one tile must cover the same tissue in a cohort")
    tiles = [t for t in _tiles(geometries).values() if t is not None]  # the slides whose magnification is known
    sizes = set(level0.values())
    if len(tiles) == len(geometries):
        if len({round(t) for t in tiles}) > 1:
            raise InputError(
                f"slides cover different tissue per tile ({_kinds(geometries)}): one tile must cover the same tissue in a cohort; "
                "import them separately"
            )
        tile = round(tiles[0])
    elif len(sizes) == 1 and {round(t) for t in tiles} <= sizes:
        (tile,) = sizes  # the scans' magnification unknown: taken to be one
        logger.info("%d-px level-0 patches, the scans' magnification not recorded: taken to be the same for every slide", tile)
    else:
        raise InputError(
            f"cannot tell whether the slides cover the same tissue per tile ({_kinds(geometries)}): the files do not say the scans' "
            "magnification (CLAM's never do); add a 'magnification' column to the slide table (each scan's objective power, e.g. 40 "
            "or 20), or import them separately"
        )
    if tile_size_px is not None and not silent and tile_size_px != tile:
        sources = sorted({g.said_by for g in geometries.values() if g.said_by})
        raise InputError(
            f"--tile-size {tile_size_px} but the files say their patches are {tile} px ({', '.join(sources)}); leave --tile-size out"
        )
    scale = {slide: tile / size for slide, size in level0.items() if size != tile}
    if scale:
        scans = Counter(level0[s] for s in scale)
        logger.warning(
            "%d slide(s) have level-0 patches of %s px for %d-px tiles (scans at a higher magnification than the "
            "patching): their coordinates are rescaled to pixels of the %d-px tiles",
            len(scale), ", ".join(map(str, scans)), tile, tile,
        )
    return CohortGeometry(tile, scale)


def _tiles(geometries: dict[str, TileGeometry]) -> dict[str, float | None]:
    """Each slide's tile in pixels at one reference magnification (TRIDENT's target, else the
    lowest scan's), or None where the scan's magnification is unknown."""
    reference = next((g.target_magnification for g in geometries.values() if g.patch_size is not None), None) or min(
        (g.level0_magnification for g in geometries.values() if g.level0_magnification), default=None
    )

    def tile(g: TileGeometry) -> float | None:
        if g.patch_size is not None:
            return float(g.patch_size)
        if g.level0_magnification is None or reference is None or g.patch_size_level0 is None:
            return None
        return g.patch_size_level0 * reference / g.level0_magnification

    return {slide: tile(g) for slide, g in geometries.items()}


def _kinds(geometries: dict[str, TileGeometry]) -> str:
    """"27 slide(s) with 512-px level-0 patches (e.g. a, b), 53 slide(s) ...": every kind, with examples."""
    kinds: dict[str, list[str]] = {}
    for slide, g in geometries.items():
        kinds.setdefault(g.kind(), []).append(slide)
    return ", ".join(
        f"{len(slides)} slide(s) {kind} (e.g. {_examples(slides)})" for kind, slides in sorted(kinds.items(), key=lambda k: -len(k[1]))
    )


def _micrometre_geometry(geometries: dict[str, TileGeometry], tile_size_px: int | None) -> CohortGeometry:
    """STAMP's micrometre coordinates onto a grid of its tiles (see the module docstring)."""
    tilings: dict[tuple[float | None, int | None], list[str]] = {}
    for slide, g in geometries.items():
        tilings.setdefault((g.tile_size_um, g.patch_size), []).append(slide)
    if len(tilings) > 1:
        described = ", ".join(
            f"{len(slides)} slide(s) with {'pixel coordinates' if um is None else f'{um:g}-um tiles of {px} px'} (e.g. {_examples(slides)})"
            for (um, px), slides in sorted(tilings.items(), key=lambda k: -len(k[1]))
        )
        raise InputError(f"slides were tiled differently ({described}): one tile must cover the same tissue in a cohort")
    ((tile_um, tile_px),) = tilings
    assert tile_um is not None and tile_px is not None
    if tile_size_px is not None and tile_size_px != tile_px:
        raise InputError(
            f"--tile-size {tile_size_px} but the files say their tiles are {tile_px} px (STAMP's tile_size_px); leave --tile-size out"
        )
    logger.info("coordinates in micrometres: %g-um tiles of %d px, one grid cell each", tile_um, tile_px)
    return CohortGeometry(tile_px, {slide: tile_px / tile_um for slide in geometries})


def rescale_coords(coords: np.ndarray, scale: float) -> np.ndarray:
    """A slide's level-0 coordinates in pixels at the cohort's patching magnification."""
    return np.rint(coords * scale).astype(np.int64)


def _positive(attrs: Any, key: str) -> float | None:
    value = attrs.get(key)
    return None if value is None or float(np.ravel(value)[0]) <= 0 else float(np.ravel(value)[0])


def _magnification(value: float | None) -> str:
    return "?x" if value is None else f"{value:g}x"


def _examples(slides: list[str], limit: int = 2) -> str:
    return ", ".join(slides[:limit]) + (", ..." if len(slides) > limit else "")


def _clip(text: str, limit: int = 400) -> str:
    """One message stays one readable line however many slides it concerns."""
    return text if len(text) <= limit else text[:limit] + " ..."
