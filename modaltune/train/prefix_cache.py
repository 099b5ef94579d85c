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
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import torch

from modaltune.atomic import atomic_path
from modaltune.models import ModalTuneModel
from modaltune.objectives import CaseBatch

logger = logging.getLogger(__name__)


def encoder_fingerprint(model: ModalTuneModel, dtype: torch.dtype) -> str:
    """What a prefix depends on besides the tiles: encoder config, frozen weights, depth, dtype."""
    digest = hashlib.sha256(f"{model.config.encoder!r}|{model.prefix_depth}|{dtype}".encode())
    for name, tensor in sorted(model.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def tiles_checksum(batch: CaseBatch) -> torch.Tensor:
    """A cheap fingerprint of the tiles a prefix was computed from."""
    return torch.stack([batch.features.double().sum(), batch.coords.double().sum(), torch.tensor(float(batch.features.shape[1]), dtype=torch.float64)]).cpu()


class PrefixCache:
    """``encode_prefix`` outputs per case under ``directory/<fingerprint>/``."""

    def __init__(self, directory: Path, model: ModalTuneModel, dtype: torch.dtype) -> None:
        self.root, self.model, self.dtype = directory, model, dtype
        self.hits = self.misses = 0

    @cached_property
    def directory(self) -> Path:
        """Hashing the frozen weights takes a moment at GigaPath size: only done on first use."""
        return self.root / encoder_fingerprint(self.model, self.dtype)

    def prefix(self, batch: CaseBatch) -> torch.Tensor:
        """The case's prefix: from disk when present and computed from the same tiles, else computed and stored."""
        path = self.directory / f"{batch.case_id}.pt"
        checksum = tiles_checksum(batch)
        if path.exists():
            try:
                stored = torch.load(path, weights_only=True, map_location=batch.features.device)
                if torch.equal(stored["tiles"], checksum):
                    self.hits += 1
                    return stored["prefix"]
                logger.warning("%s: computed from other tiles; recomputing", path)
            except (RuntimeError, KeyError, EOFError) as exc:  # a torn or foreign file: recompute it
                logger.warning("%s: unreadable (%s); recomputing", path, exc)
        self.misses += 1
        prefix = self.model.encode_prefix(batch.features, batch.coords)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"prefix": prefix.cpu(), "tiles": checksum}, tmp)
        return prefix


def open_prefix_cache(enabled: bool, directory: Path, model: ModalTuneModel, dtype: torch.dtype, zero_stage: int | None) -> PrefixCache | None:
    """The run's cache, or None (with the reason logged) where it cannot help or be correct."""
    reason = None
    if not enabled:
        reason = "prefix_cache is off"
    elif model.prefix_depth == 0:
        reason = "the first adapter is at layer 0: no frozen prefix"
    elif zero_stage == 3:
        reason = "ZeRO-3 gathers frozen weights collectively in every forward"
    else:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(directory / ".writable") as probe:
                probe.write_bytes(b"")
        except OSError as exc:
            reason = f"{directory} is not writable ({exc})"
    if reason is not None:
        logger.info("frozen-prefix cache not used: %s", reason)
        return None
    cache = PrefixCache(directory, model, dtype)
    logger.info("frozen-prefix cache: layers 0..%d of %d, under %s", model.prefix_depth - 1, model.encoder.depth, directory)
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
