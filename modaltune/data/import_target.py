"""Where ``import-h5`` may write its cohort, decided before anything is converted.

A user's folders are never replaced: ``--overwrite`` replaces only a cohort this project wrote
(a readable ``cohort.json`` beside nothing but a cohort's own files) or an empty folder, and
no cohort is written where it is, holds or lies inside one of the import's inputs (the feature
folder, the slide table, the RNA, ...). The cohort is written to a hidden staging folder beside
``OUT_DIR`` and renamed into place at the end (``move_into_place``), so the staging folder must
be writable too; a read-only location is refused here, in one line, not after the conversion.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modaltune.data.layout import CohortLayout, read_manifest
from modaltune.data.modalities import COHORT_MODALITIES
from modaltune.errors import InputError

logger = logging.getLogger(__name__)


class ImportTargetError(InputError):
    """``OUT_DIR`` cannot receive the cohort without destroying or mixing with a user's files."""


@dataclass(frozen=True)
class ImportTarget:
    """Where the cohort goes: ``staging`` is renamed onto ``out``; ``replaces`` says what an
    ``--overwrite`` replaces there (None: nothing is there)."""

    out: Path
    staging: Path
    replaces: str | None


def check_import_target(out: Path, inputs: Mapping[str, Path], overwrite: bool) -> ImportTarget:
    """The target for a cohort at ``out``, or ``ImportTargetError`` in one line.

    ``inputs`` maps how the user gave each input ("--rna") to its path.
    """
    _refuse_input_overlap(out, inputs)
    replaces = None
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ImportTargetError(f"{out} exists; --overwrite replaces it whole (features, tables, RNA and labels)")
        replaces = _replaceable(out)
    _require_writable(out, replacing=replaces is not None)
    return ImportTarget(out, out.with_name(f".{out.name}.importing-{os.getpid()}"), replaces)


def move_into_place(staging: Path, target: ImportTarget) -> None:
    """Rename the finished cohort onto ``target.out``; an old one is moved aside first, removed last."""
    out = target.out
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    if target.replaces is not None:
        os.replace(out, old)
    os.replace(staging, out)
    if target.replaces is not None:
        shutil.rmtree(old, ignore_errors=True)
        logger.info("%s: replaced %s (--overwrite)", out, target.replaces)


def _refuse_input_overlap(out: Path, inputs: Mapping[str, Path]) -> None:
    """A cohort written onto, around or into an input would destroy or mix with the user's files."""
    here = out.resolve()
    for given, path in inputs.items():
        there = path.resolve()
        if here == there:
            relation = "is"
        elif here in there.parents:
            relation = "holds"
        elif there in here.parents:
            relation = "lies inside"
        else:
            continue
        raise ImportTargetError(
            f"{out} {relation} an input of this import, {given} {path}: write the cohort to a new folder outside the inputs"
        )


def _replaceable(out: Path) -> str:
    """What ``--overwrite`` would replace at ``out``, or ``ImportTargetError`` if it is not ours."""
    if not out.is_dir() or out.is_symlink():
        raise ImportTargetError(f"{out} is not a folder: --overwrite replaces only a cohort folder or an empty folder; nothing replaced")
    entries = sorted(out.iterdir())
    if not entries:
        return "an empty folder"
    layout = CohortLayout(out)
    try:
        manifest = read_manifest(layout)
    except InputError:
        manifest = None
    foreign = [entry for entry in entries if not _own_entry(layout, entry)]
    if manifest is None or foreign:
        reason = "it has no readable cohort.json" if manifest is None else "it holds files that are not a cohort's"
        shown = foreign or entries
        names = ", ".join(str(e.relative_to(out)) + ("/" if e.is_dir() else "") for e in shown[:5])
        more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise ImportTargetError(
            f"{out} is not a cohort written by modaltune ({reason}: {names}{more}): --overwrite replaces only a cohort "
            "or an empty folder; nothing replaced, choose a new OUT_DIR"
        )
    n_slides = sum(1 for _ in layout.features_dir.glob("*.arrow"))
    return f"the cohort that was there ({n_slides} slide feature files, {manifest.n_folds} folds)"


def _own_entry(layout: CohortLayout, entry: Path) -> bool:
    """Whether ``entry`` (directly in the cohort folder) is a part of a cohort ``import-h5`` or
    ``synth`` writes, or a cache a run wrote into it; ``features/`` must hold feature files only."""
    if entry == layout.features_dir:
        return entry.is_dir() and all(f.suffix == ".arrow" and f.is_file() for f in entry.iterdir())
    own = {layout.manifest, layout.slides, layout.labels, layout.rna, layout.gene_groups, layout.truth, layout.cache_dir}
    return entry in own or entry in {modality.source(layout) for modality in COHORT_MODALITIES.values()}


def _require_writable(out: Path, replacing: bool) -> None:
    """The staging folder is made beside ``out`` (and missing parents created); an old cohort is
    renamed aside and removed."""
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    for folder in (parent, *([out] if replacing else [])):
        if not os.access(folder, os.W_OK | os.X_OK):
            read_only = hasattr(os, "ST_RDONLY") and os.statvfs(folder).f_flag & os.ST_RDONLY
            why = "on a read-only file system" if read_only else "no write permission"
            raise ImportTargetError(f"{folder} is not writable ({why}): cannot write the cohort {out}; nothing converted")
