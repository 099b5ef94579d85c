"""Frozen-prefix cache: the slide encoder's output before the first adapter, computed once per case.

The patch projection, positional embedding and every frozen layer before the first Modal
Adapter see no trainable input (``ModalTuneModel.encode_prefix``), so for a case whose tile set
is fixed their output is the same in every epoch, every evaluation and every trial that uses
the same frozen encoder. It is kept on disk in the cohort's cache folder under a key of the
encoder's config, the frozen weights' hash, the prefix depth and the dtype, so trials of a
study (and later studies) share it; files are written atomically, so concurrent trials can
fill it at once.

It is only correct when a case's tiles are the same every time: a case capped at random
(``max_tiles`` below its tile count) is never cached. Each entry also stores a checksum of the
tiles it was computed from, so a cohort whose features changed is recomputed, not reused.
ZeRO-3 partitions the frozen weights and gathers them collectively in every forward, so a
rank that skipped the prefix would hang the others: the cache is off there.

At cohort scale the cache is large (TCGA: ~11,000 slides of up to 25,000 tiles x 768 in bf16 is
hundreds of GB per prefix depth), so it has a size budget (``prefix_cache_max_gb``) over the
whole cache folder, every encoder, depth and dtype together. The eviction rule: when an entry
does not fit, whole folders of fingerprints that no run has used for an hour go, least recently
used first (an old encoder, depth or dtype); folders in use (this run's, and those of other
depths that the same study's concurrent trials are filling) are never evicted, and share the
budget first come, first served.
Training reads every case once an epoch in a new order, a cyclic scan under which evicting one
entry to admit another (LRU) only trades which cases hit, and with a budget below the cohort
it would keep evicting each entry before its reuse; keeping the first cases that fitted and
computing the rest every time gives ``budget / cohort size`` of the hits, the best a scan can.
Entries are stored in the training precision (bf16 runs store bf16, half of fp32).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import torch

from modaltune.atomic import atomic_path
from modaltune.models import ModalTuneModel, TaskModel
from modaltune.objectives import CaseBatch

logger = logging.getLogger(__name__)


def encoder_fingerprint(model: ModalTuneModel, dtype: torch.dtype) -> str:
    """What a prefix depends on besides the tiles: encoder config, frozen weights, depth, dtype.
    The weights ``finetune`` trains (the layers after the prefix) are left out: they change as it
    trains and the prefix never reads them, so a resumed run finds its entries."""
    digest = hashlib.sha256(f"{model.config.encoder!r}|{model.prefix_depth}|{dtype}".encode())
    trained = {name for name, param in model.encoder.named_parameters() if param.requires_grad}
    for name, tensor in sorted(model.encoder.state_dict().items()):
        if name in trained:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def tiles_checksum(batch: CaseBatch) -> torch.Tensor:
    """A cheap fingerprint of the tiles a prefix was computed from."""
    n_tiles = torch.tensor(float(batch.features.shape[1]), dtype=torch.float64)
    return torch.stack([batch.features.double().sum(), batch.coords.double().sum(), n_tiles]).cpu()


GB = 1e9
LAST_USED = ".last_used"  # touched in a fingerprint folder while runs read or write it: the eviction order
IN_USE_S = 3600.0  # a folder used more recently than this is some run's working set: never evicted
TOUCH_EVERY_S = 60.0


@dataclass
class CacheCounts:
    """What a run's cache did since the counts were last taken (reported per epoch)."""

    hits: int = 0
    misses: int = 0
    unstored: int = 0  # computed but not kept: the budget was full
    compute_s: float = 0.0  # time spent computing the misses' prefixes

    def as_metrics(self) -> dict[str, float]:
        return {f"prefix_cache_{f.name}": float(getattr(self, f.name)) for f in fields(self)}


def folder_bytes(directory: Path) -> int:
    """Bytes of the cache entries under ``directory`` (temporary files of concurrent writers included)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # replaced or evicted meanwhile
                pass
    return total


class PrefixCache:
    """``encode_prefix`` outputs per case under ``directory/<fingerprint>/``, within ``max_bytes`` in all."""

    def __init__(self, directory: Path, model: ModalTuneModel, dtype: torch.dtype, max_bytes: float = float("inf")) -> None:
        self.root, self.model, self.dtype, self.max_bytes = directory, model, dtype, max_bytes
        self.hits = self.misses = 0
        self.counts = CacheCounts()
        self.used_bytes: int | None = None  # the whole cache folder, scanned when first needed
        self._touched_at = -math.inf

    @cached_property
    def directory(self) -> Path:
        """Hashing the frozen weights takes a moment at GigaPath size: only done on first use."""
        directory = self.root / encoder_fingerprint(self.model, self.dtype)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def _mark_used(self) -> None:
        """Keep this folder's ``LAST_USED`` fresh (once a minute at most), so no other run evicts it."""
        now = time.monotonic()
        if now - self._touched_at >= TOUCH_EVERY_S:
            (self.directory / LAST_USED).touch()
            self._touched_at = now

    def take_counts(self) -> CacheCounts:
        """The counts since the last call, reset."""
        counts, self.counts = self.counts, CacheCounts()
        return counts

    def usage_metrics(self) -> dict[str, float]:
        """The cache folder's size and budget, as this run last saw them."""
        if self.used_bytes is None:
            self.used_bytes = folder_bytes(self.root)
        return {"prefix_cache_bytes": float(self.used_bytes), "prefix_cache_budget_bytes": self.max_bytes}

    def _room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes fit the budget, after evicting other fingerprints' folders if needed.

        The folder is rescanned only when the running total says the entry does not fit, so
        what concurrent trials wrote meanwhile is counted before anything is evicted or refused.
        """
        if self.used_bytes is None or self.used_bytes + size > self.max_bytes:
            self.used_bytes = folder_bytes(self.root)
        for stale in self._unused_folders_oldest_first():
            if self.used_bytes + size <= self.max_bytes:
                break
            freed = folder_bytes(stale)
            shutil.rmtree(stale, ignore_errors=True)
            self.used_bytes -= freed
            logger.info(
                "frozen-prefix cache: evicted %s (%.2f GB, unused the longest) to stay within %.1f GB",
                stale.name, freed / GB, self.max_bytes / GB,
            )
        return self.used_bytes + size <= self.max_bytes

    def _unused_folders_oldest_first(self) -> list[Path]:
        def last_used(folder: Path) -> float:
            try:
                return (folder / LAST_USED).stat().st_mtime
            except FileNotFoundError:
                return 0.0

        unused_since = time.time() - IN_USE_S
        stale = [p for p in self.root.iterdir() if p.is_dir() and p != self.directory and last_used(p) < unused_since]
        return sorted(stale, key=last_used)

    def prefix(self, batch: CaseBatch) -> torch.Tensor:
        """The case's prefix: from disk when present and computed from the same tiles, else computed and stored."""
        path = self.directory / f"{batch.case_id}.pt"
        checksum = tiles_checksum(batch)
        self._mark_used()
        if path.exists():
            try:
                stored = torch.load(path, weights_only=True, map_location=batch.features.device)
                if torch.equal(stored["tiles"], checksum):
                    self.hits += 1
                    self.counts.hits += 1
                    return stored["prefix"]
                logger.warning("%s: computed from other tiles; recomputing", path)
            except (RuntimeError, KeyError, EOFError) as exc:  # a torn or foreign file: recompute it
                logger.warning("%s: unreadable (%s); recomputing", path, exc)
        self.misses += 1
        self.counts.misses += 1
        started = time.perf_counter()
        prefix = self.model.encode_prefix(batch.features, batch.coords).to(self.dtype)
        self.counts.compute_s += time.perf_counter() - started
        self._store(path, prefix, checksum)
        return prefix

    def _store(self, path: Path, prefix: torch.Tensor, checksum: torch.Tensor) -> None:
        """Serialized first, so the budget is checked against the entry's exact size."""
        buffer = io.BytesIO()
        torch.save({"prefix": prefix.cpu(), "tiles": checksum}, buffer)
        previous = path.stat().st_size if path.exists() else 0
        if not self._room_for(buffer.tell() - previous):
            self.counts.unstored += 1
            return
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getbuffer())
        self.used_bytes = (self.used_bytes or 0) + buffer.tell() - previous


def open_prefix_cache(
    enabled: bool, directory: Path, model: TaskModel, dtype: torch.dtype, zero_stage: int | None, max_gb: float = float("inf"),
) -> PrefixCache | None:
    """The run's cache, or None (with the reason logged) where it cannot help or be correct."""
    reason = None
    if not enabled:
        reason = "prefix_cache is off"
    elif not isinstance(model, ModalTuneModel):
        reason = f"method {model.name!r} has no frozen part"
    elif model.prefix_depth == 0:
        reason = "the first adapter is at layer 0: no frozen prefix" if model.adapter is not None else "every SLFM layer trains"
    elif zero_stage == 3:
        reason = "ZeRO-3 gathers frozen weights collectively in every forward"
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(directory / ".writable") as probe:
                probe.write_bytes(b"")
        except OSError as exc:
            reason = f"{directory} is not writable ({exc})"
    if reason is not None or not isinstance(model, ModalTuneModel):  # (the isinstance: for the type checker)
        logger.info("frozen-prefix cache not used: %s", reason)
        return None
    cache = PrefixCache(directory, model, dtype, max_gb * GB)
    logger.info(
        "frozen-prefix cache: layers 0..%d of %d in %s, under %s (budget %.1f GB)",
        model.prefix_depth - 1, model.encoder.depth, dtype, directory, max_gb,
    )
    return cache


def with_prefixes(batches: Callable[[str], CaseBatch], cache: PrefixCache | None) -> Callable[[str], CaseBatch]:
    """Batches that carry their cached prefix when the case's whole tile set is in them."""
    if cache is None:
        return batches

    def make(case_id: str) -> CaseBatch:
        batch = batches(case_id)
        if batch.all_tiles:
            batch.prefix = cache.prefix(batch)
        return batch

    return make
