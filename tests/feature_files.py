"""Tile-feature files in the layouts the extractors write (TRIDENT, CLAM h5 and pt, STAMP) and
slide tables as TCGA users have them, made from a cohort's own features so an import can be
compared with its source. Written with the libraries those tools use (h5py, torch.save)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from modaltune.data import Cohort


def write_h5(cohort: Cohort, h5_dir: Path, *, leading_batch_axis: bool = False, slide_ids: dict[str, str] | None = None) -> None:
    """CLAM's h5_files/ (no attributes): ``features`` and ``coords``; ``slide_ids`` renames files."""
    h5_dir.mkdir(parents=True)
    for slide_id in cohort.slides["slide_id"]:
        slide = cohort.slide_features(slide_id)
        features = slide.features.astype(np.float32)
        with h5py.File(h5_dir / f"{(slide_ids or {}).get(slide_id, slide_id)}.h5", "w") as handle:
            handle["features"] = features[None] if leading_batch_axis else features
            handle["coords"] = slide.coords.astype(np.int64)


def write_trident(cohort: Cohort, h5_dir: Path, level0_scale: dict[str, int], patch_size: int = 256, target: float = 20.0) -> None:
    """TRIDENT's layout: coords in level-0 pixels with the patching in coords.attrs; a slide with
    scale 2 is a 40x scan patched at 20x (512-px level-0 patches)."""
    h5_dir.mkdir(parents=True)
    for slide_id in cohort.slides["slide_id"]:
        slide, scale = cohort.slide_features(slide_id), level0_scale.get(slide_id, 1)
        with h5py.File(h5_dir / f"{slide_id}.h5", "w") as handle:
            handle["features"] = slide.features.astype(np.float32)
            handle["coords"] = slide.coords.astype(np.int64) * scale
            handle["coords"].attrs.update(
                patch_size=patch_size, patch_size_level0=patch_size * scale,
                level0_magnification=target * scale, target_magnification=target,
            )


def write_clam_h5(
    cohort: Cohort, h5_dir: Path, level0_patch: dict[str, int], *, patch_level: int = 0, downsample: float = 1.0, attrs: bool = True,
) -> None:
    """CLAM's files with the patching on ``coords.attrs`` as create_patches_fp.py writes it
    (``patch_size`` in pixels of ``patch_level``, whose ``downsample`` is (x, y); coords in level-0
    pixels); ``attrs=False``: extract_features_fp.py's h5_files, which carry none. A slide's
    patch is ``level0_patch`` level-0 pixels (default 256): 512 for a 40x scan patched like a
    20x one at 256 px. The cohort's coordinates are pixels of 256-px tiles."""
    h5_dir.mkdir(parents=True)
    for slide_id in cohort.slides["slide_id"]:
        slide, level0 = cohort.slide_features(slide_id), level0_patch.get(slide_id, 256)
        with h5py.File(h5_dir / f"{slide_id}.h5", "w") as handle:
            handle["features"] = slide.features.astype(np.float32)
            handle["coords"] = (slide.coords.astype(np.int64) * level0 // 256).astype(np.int32)
            if attrs:
                size = (100_000, 80_000)
                handle["coords"].attrs.update(
                    patch_size=round(level0 / downsample), patch_level=patch_level, downsample=(downsample, downsample),
                    downsampled_level_dim=tuple(round(d / downsample) for d in size), level_dim=size, name=slide_id, save_path="patches",
                )


def write_clam(cohort: Cohort, root: Path) -> Path:
    """CLAM's extract_features output: h5_files/ (features + coords) and pt_files/ (the
    features alone, ``torch.save`` of a tensor). Returns the pt_files folder."""
    write_h5(cohort, root / "h5_files")
    (root / "pt_files").mkdir()
    for slide_id in cohort.slides["slide_id"]:
        torch.save(torch.from_numpy(cohort.slide_features(slide_id).features.astype(np.float32)), root / "pt_files" / f"{slide_id}.pt")
    return root / "pt_files"


def write_stamp(cohort: Cohort, h5_dir: Path, tile_size_um: float, tile_size_px: int) -> None:
    """STAMP >= 2: ``feats`` (float16) and ``coords`` in micrometres, the tiling on the file's attrs.
    The cohort's coordinates are pixels of ``tile_size_px`` tiles."""
    h5_dir.mkdir(parents=True)
    for slide_id in cohort.slides["slide_id"]:
        slide = cohort.slide_features(slide_id)
        with h5py.File(h5_dir / f"{slide_id}.h5", "w") as handle:
            handle["coords"] = slide.coords.astype(np.float64) * tile_size_um / tile_size_px
            handle["feats"] = slide.features.astype(np.float16)
            handle.attrs.update(unit="um", tile_size_um=tile_size_um, tile_size_px=tile_size_px, extractor="synthetic", feat_type="tile")


def tcga_shaped(source: Cohort, root: Path) -> tuple[Path, Path, pd.DataFrame]:
    """The source cohort as a TCGA user has it: barcode slide ids, no case_id column, GDC /
    cBioPortal values. Returns (h5 folder, slides.csv, the table as our vocabulary has it)."""
    barcode = {case: f"TCGA-{i % 90 + 10:02d}-{i:04d}" for i, case in enumerate(source.case_ids)}
    ours = source.slides.assign(
        case_id=source.slides["case_id"].map(barcode),
        slide_id=[f"{barcode[c]}-01Z-00-DX{s[-1]}" for c, s in zip(source.slides["case_id"], source.slides["slide_id"], strict=True)],
    )
    h5_dir = root / "h5"
    write_h5(source, h5_dir, slide_ids=dict(zip(source.slides["slide_id"], ours["slide_id"], strict=True)))
    theirs = ours.drop(columns=["case_id", "fold"]).astype({"age": object})
    theirs["sex"] = theirs["sex"].str.upper()
    theirs["stage"] = theirs["stage"].map(lambda s: f"{s}A" if s in ("Stage II", "Stage III") else s)
    theirs["t_stage"] = theirs["t_stage"].map(lambda t: f"{t}b" if isinstance(t, str) and t != "TX" else t)
    theirs["m_stage"] = theirs["m_stage"].map(lambda m: "cM0 (i+)" if m == "M0" else m)
    theirs["event"] = theirs["event"].map({1: "1:DECEASED", 0: "0:LIVING"})
    theirs.loc[theirs.index[0], "age"] = "[Not Available]"
    theirs.loc[theirs["stage"].isna(), "stage"] = "[Not Applicable]"
    ours.loc[ours.index[0], "age"] = np.nan
    csv = root / "slides.csv"
    theirs.to_csv(csv, index=False)
    return h5_dir, csv, ours
