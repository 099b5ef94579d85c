"""Where each part of a cohort folder lives, and the cohort-wide manifest (``cohort.json``).

A cohort folder::

    cohort.json          format version, feature width, tile size, number of folds, labelled or not
    slides.parquet       one row per slide (see SLIDE_COLUMNS)
    labels.yaml          every label as text (modaltune.data.labels)
    features/<slide_id>.arrow   tile features + coordinates (modaltune.data.features)
    rna.parquet          optional: case_id + one column per gene
    gene_groups.json     with rna.parquet: pathway -> list of genes
    truth.json           synthetic cohorts only: the planted effects
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from modaltune.atomic import write_json_atomic
from modaltune.errors import InputError

FORMAT_VERSION = 1
# Cells per side of the SLFMs' tile position grid (GigaPath's, after LongNet's 2-D sin-cos table):
# coordinates // tile size must fall inside it, or the model cannot place the tile.
POSITION_GRID_SIZE = 1000

# Column -> what it holds; the validator and the Cohort reader both use this table.
SLIDE_COLUMNS: dict[str, str] = {
    "slide_id": "unique slide identifier, also the feature file name",
    "case_id": "patient identifier; a case may have several slides",
    "cohort": "cancer type (a key of labels.yaml cohorts)",
    "subtype": "subtype label (a key of labels.yaml cohorts.<cohort>.subtypes)",
    "time": "follow-up time in months, > 0",
    "event": "1 if death was observed, 0 if censored",
    "fold": "case-level cross-validation fold, 0..n_folds-1",
}
CASE_LEVEL_COLUMNS: tuple[str, ...] = ("cohort", "subtype", "time", "event", "fold")
# The outcome columns: required to train, optional (empty) in a cohort imported for prediction.
LABEL_COLUMNS: tuple[str, ...] = ("subtype", "time", "event")
# Optional per-case columns of slides.parquet: the tissue source site (site-preserved folds) and
# the AJCC stage as written ("Stage IIIA"; the model reads the four-level `stage`).
OPTIONAL_CASE_COLUMNS: tuple[str, ...] = ("site", "stage_detail")

SAFE_SLIDE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CohortManifest:
    """``labelled=False``: new patients imported for ``predict`` (``import-h5 --for-prediction``),
    whose subtype, time and event may be unknown; such a cohort cannot be trained on."""

    feature_dim: int
    tile_size_px: int = 256
    n_folds: int = 5
    format_version: int = FORMAT_VERSION
    labelled: bool = True


@dataclass(frozen=True)
class CohortLayout:
    """Paths of one cohort folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "cohort.json"

    @property
    def slides(self) -> Path:
        return self.root / "slides.parquet"

    @property
    def labels(self) -> Path:
        return self.root / "labels.yaml"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def rna(self) -> Path:
        return self.root / "rna.parquet"

    @property
    def gene_groups(self) -> Path:
        return self.root / "gene_groups.json"

    @property
    def truth(self) -> Path:
        return self.root / "truth.json"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    def feature_file(self, slide_id: str) -> Path:
        return self.features_dir / f"{slide_id}.arrow"


class ManifestError(InputError):
    """``cohort.json`` is missing or malformed."""


def write_manifest(layout: CohortLayout, manifest: CohortManifest) -> None:
    write_json_atomic(layout.manifest, asdict(manifest))


def read_manifest(layout: CohortLayout) -> CohortManifest:
    try:
        raw = json.loads(layout.manifest.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{layout.manifest}: file not found (is {layout.root} a cohort folder?)") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{layout.manifest}: not valid JSON: {exc}") from exc
    try:
        manifest = CohortManifest(**raw)
    except TypeError as exc:
        raise ManifestError(f"{layout.manifest}: {exc}") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ManifestError(
            f"{layout.manifest}: format_version {manifest.format_version} is not supported (expected {FORMAT_VERSION})"
        )
    for field in ("feature_dim", "tile_size_px", "n_folds"):
        value = getattr(manifest, field)
        if not isinstance(value, int) or value < 1:
            raise ManifestError(f"{layout.manifest}: {field} must be a positive integer, got {value!r}")
    if not isinstance(manifest.labelled, bool):
        raise ManifestError(f"{layout.manifest}: labelled must be true or false, got {manifest.labelled!r}")
    return manifest


def read_gene_groups(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Pathway -> genes, in file order (the order of the model's pathway tokens)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not all(
        isinstance(genes, list) and all(isinstance(g, str) for g in genes) for genes in raw.values()
    ):
        raise ManifestError(f"{path}: must map each group name to a list of gene names")
    return raw
