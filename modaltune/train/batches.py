"""Turning cohort cases into model-ready batches: tiles, normalised RNA, clinical, targets."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from modaltune.atomic import atomic_path
from modaltune.data import Cohort
from modaltune.objectives import CaseBatch
from modaltune.text import LabelBank

UNKNOWN = -1  # subtype index, survival bin or event of a new patient whose outcome is not known


class RnaNormalizer:
    """Per-gene z-scores with mean and spread from the training split only (no leakage)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)

    @classmethod
    def fit(cls, matrix: np.ndarray) -> RnaNormalizer:
        return cls(matrix.mean(axis=0), matrix.std(axis=0))

    @classmethod
    def fit_on(cls, cohort: Cohort, training_cases: Sequence[str]) -> RnaNormalizer:
        """Fitted on the training cases that have RNA (the others get the missing-RNA token)."""
        return cls.fit(cohort.rna_matrix([c for c in training_cases if c in cohort.rna_cases]))

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RnaNormalizer:
        with np.load(path) as stored:
            return cls(stored["mean"], stored["std"])

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        return (vector - self.mean) / self.std


class CaseBatcher:
    """Builds ``CaseBatch`` objects for one fold: reads tiles on demand, caps them at random."""

    def __init__(
        self, cohort: Cohort, bank: LabelBank, training_cases: Sequence[str], *, use_rna: bool, max_tiles: int | None = None,
        rna_normalizer: RnaNormalizer | None = None,
    ) -> None:
        """``rna_normalizer`` (a trained model's, when predicting on another cohort) replaces the
        one fitted on ``training_cases``."""
        self.cohort, self.bank, self.max_tiles = cohort, bank, max_tiles
        if rna_normalizer is None and use_rna:
            rna_normalizer = RnaNormalizer.fit_on(cohort, training_cases)
        self.rna_normalizer = rna_normalizer if use_rna else None

    def batch(self, case_id: str, rng: np.random.Generator | None = None) -> CaseBatch:
        sample = self.cohort.sample(case_id, self.max_tiles, rng)
        record = sample.record
        rna = None
        if self.rna_normalizer is not None:  # a case without RNA is a row of NaN: the model's missing-RNA token
            values = self.rna_normalizer(sample.rna) if sample.rna is not None else np.full(self.rna_normalizer.mean.shape, np.nan, np.float32)
            rna = torch.from_numpy(values).unsqueeze(0)
        return CaseBatch(
            case_id=case_id,
            cohort=record.cohort,
            features=torch.from_numpy(sample.features).float().unsqueeze(0),  # torch's f16->f32 is vectorised
            coords=torch.from_numpy(sample.coords.astype(np.int64)).unsqueeze(0),
            rna=rna,
            clinical=torch.from_numpy(sample.clinical).unsqueeze(0),
            targets=torch.from_numpy(self._targets(case_id)),
            subtype_index=UNKNOWN if record.subtype is None else self.cohort.labels.subtypes_of(record.cohort).index(record.subtype),
            survival_bin=UNKNOWN if math.isnan(record.time) else self.bank.bins.bin_of(record.time),
            event=UNKNOWN if record.event is None else record.event,
            time=record.time,
            all_tiles=sample.all_tiles,
        )

    def _targets(self, case_id: str) -> np.ndarray:
        """The case's text targets; zeros for a case the bank has never seen (new slides at
        prediction time, where no loss is computed)."""
        if not self.bank.has_case(case_id):
            return np.zeros(self.bank.case_targets.shape[1:], dtype=self.bank.case_targets.dtype)
        return np.asarray(self.bank.targets_of(case_id))


def seeded_batches(batcher: CaseBatcher, seed: int, epoch: int | str, device: torch.device, dtype: torch.dtype) -> Callable[[str], CaseBatch]:
    """Case -> batch on device, its tile subsample seeded by (seed, epoch, case): the same tiles
    for a case wherever and whenever it is drawn (``epoch="evaluation"`` for evaluation)."""

    def make(case_id: str) -> CaseBatch:
        rng = np.random.default_rng([seed, zlib.crc32(str(epoch).encode()), zlib.crc32(case_id.encode())])
        return batcher.batch(case_id, rng).to(device, dtype)

    return make
