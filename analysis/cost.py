"""What a study cost: trials run, stopped early and failed, and CPU/GPU-hours per cell; what
the frozen-prefix cache saved.

Hours are reserved resources x wall time (what a cluster bills): each trial's Tune wall time
(``time_total_s``) times its Train workers' CPUs and GPUs (``num_workers x cpus_per_worker``),
each trial at its own cell's size.
"""

from __future__ import annotations

import pandas as pd

from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.resources import ResourcesSpec
from modaltune.sweeps.spec import StudySpec
from modaltune.units import bytes_text, duration_text


def cost_table(spec: StudySpec, results: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and a ``total`` row: trial counts by state, wall hours, CPU- and GPU-hours.

    Each trial is billed at its own size: as its result rows record it, else its cell's resources
    (a method level's own over the study's), else the study's."""
    frame = trials.copy()
    wall_h = frame["time_total_s"].fillna(0.0) / 3600.0
    sizes = frame["cell"].map(cell_resources(spec)).map(lambda size: spec.resources if pd.isna(size) else size)
    workers = _per_trial(results, frame, "num_workers", sizes.map(lambda size: size.num_workers))
    cpus = _per_trial(results, frame, "cpus_per_worker", sizes.map(lambda size: size.cpus_per_worker))
    gpus = _per_trial(results, frame, "gpus_per_worker", sizes.map(lambda size: size.gpus_per_worker))
    frame = frame.assign(wall_hours=wall_h, cpu_hours=wall_h * workers * cpus, gpu_hours=wall_h * workers * gpus)
    for state in ("finished", "stopped_early", "error", "interrupted"):
        frame[state] = frame["state"] == state
    columns = ["finished", "stopped_early", "error", "interrupted", "wall_hours", "cpu_hours", "gpu_hours"]
    table = frame.groupby("cell", sort=True).agg(trials=("trial_id", "count"), **{c: (c, "sum") for c in columns})
    levels = frame.groupby("cell", sort=True)[list(spec.factors)].first()
    table = levels.join(table).reset_index()
    total = table[["trials", *columns]].sum().to_frame().T.assign(cell="total", **{f: "" for f in spec.factors})
    counts = ["trials", "finished", "stopped_early", "error", "interrupted"]
    return pd.concat([table, total], ignore_index=True).astype({c: int for c in counts})


def cell_resources(spec: StudySpec) -> dict[str, ResourcesSpec]:
    """Cell id -> what each of its trials reserves (its levels' resources over the study's)."""
    return {cell.id: cell.resources_in(spec.resources) for cell in design_cells(spec.factors, spec.design)}


def _per_trial(results: pd.DataFrame, trials: pd.DataFrame, column: str, default: pd.Series) -> pd.Series:
    """A resource each trial ran with, as recorded in its result rows; ``default`` where none are."""
    if column not in results.columns:
        return default.astype(float)
    return trials["trial_id"].map(results.groupby("trial_id")[column].first()).fillna(default).astype(float)


CACHE_COUNTS = ("prefix_cache_hits", "prefix_cache_misses", "prefix_cache_unstored", "prefix_cache_compute_s")


def prefix_cache_line(results: pd.DataFrame) -> str:
    """One sentence on the frozen-prefix cache: hits, computed, not kept, time saved, what it holds.

    Each epoch row carries that epoch's counts summed over the run's ranks, so the sum over
    the (deduplicated) rows is the study's; the time saved is the hits times the measured
    mean time to compute one prefix. Empty when no run used the cache.
    """
    if "prefix_cache_hits" not in results.columns or results["prefix_cache_hits"].isna().all():
        return ""
    hits, misses, unstored, compute_s = (float(results[c].fillna(0).sum()) for c in CACHE_COUNTS)
    if hits + misses == 0:
        return "Frozen-prefix cache: no prefix was reusable, every case's tiles being sampled at random (`max_tiles` below its tile count)."
    latest = results.dropna(subset=["prefix_cache_bytes"]).sort_values("epoch_started_at").iloc[-1]
    saved = f"about {duration_text(hits * compute_s / misses)} of frozen-layer compute" if misses else "every frozen-layer pass"
    passes = hits + misses
    not_kept = f"; {unstored:,.0f} computed but not kept, the budget being full" if unstored else ""
    return (
        f"Frozen-prefix cache: {hits:,.0f} of {passes:,.0f} frozen-prefix passes read from the cache ({hits / passes:.0%}), "
        f"{misses:,.0f} computed{not_kept}, saving {saved}; "
        f"it holds {bytes_text(latest['prefix_cache_bytes'])} of its {bytes_text(latest['prefix_cache_budget_bytes'])} budget."
    )
