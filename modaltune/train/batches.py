"""Turning cohort cases into model-ready batches: tiles, each modality's vector, targets."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from modaltune.atomic import atomic_path
from modaltune.data import Cohort
from modaltune.data.modalities import modality_inputs, normalised_modalities
from modaltune.models import IMAGE
from modaltune.objectives import CaseBatch
from modaltune.text import LabelBank

UNKNOWN = -1  # subtype index, survival bin or event of a new patient whose outcome is not known


class ModalityNormalizer:
    """Per-feature z-scores (RNA: per gene) with mean and spread from the training split only (no leakage)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean, self.std = mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)

    @classmethod
    def fit(cls, matrix: np.ndarray) -> ModalityNormalizer:
        return cls(matrix.mean(axis=0), matrix.std(axis=0))

    @classmethod
    def fit_on(cls, cohort: Cohort, modality: str, training_cases: Sequence[str]) -> ModalityNormalizer:
        """Fitted on the training cases that have the modality (the others get its missing tokens)."""
        return cls.fit(cohort.modality_matrix(modality, training_cases))

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModalityNormalizer:
        with np.load(path) as stored:
            return cls(stored["mean"], stored["std"])

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        return (vector - self.mean) / self.std


def normalizer_file(modality: str) -> str:
    """Where a trained model keeps a normalised modality's training statistics (``rna_normalizer.npz``)."""
    return f"{modality}_normalizer.npz"


def fit_normalizers(cohort: Cohort, modalities: Sequence[str], training_cases: Sequence[str]) -> dict[str, ModalityNormalizer]:
    """The training split's normalisation of each normalised modality among ``modalities``."""
    return {name: ModalityNormalizer.fit_on(cohort, name, training_cases) for name in normalised_modalities(modalities)}


class CaseBatcher:
    """Builds ``CaseBatch`` objects for one fold: reads tiles on demand, caps them at random, and
    each configured modality's vector (normalised where the modality is; a case that lacks it
    gets a row of NaN, the model's missing tokens)."""

    def __init__(
        self, cohort: Cohort, bank: LabelBank, training_cases: Sequence[str], *, modalities: Sequence[str],
        max_tiles: int | None = None, normalizers: Mapping[str, ModalityNormalizer] | None = None,
    ) -> None:
        """``normalizers`` (a trained model's, when predicting on another cohort) replace the ones
        fitted on ``training_cases``."""
        self.cohort, self.bank, self.max_tiles = cohort, bank, max_tiles
        self.modalities = [name for name in modalities if name != IMAGE]
        self.normalizers = dict(normalizers) if normalizers is not None else fit_normalizers(cohort, self.modalities, training_cases)
        self.widths = {name: sum(segments) for name, segments in modality_inputs(cohort, self.modalities).items()}

    def batch(self, case_id: str, rng: np.random.Generator | None = None) -> CaseBatch:
        sample = self.cohort.sample(case_id, self.max_tiles, rng, self.modalities)
        record = sample.record
        return CaseBatch(
            case_id=case_id,
            cohort=record.cohort,
            features=torch.from_numpy(sample.features).float().unsqueeze(0),  # torch's f16->f32 is vectorised
            coords=torch.from_numpy(sample.coords.astype(np.int64)).unsqueeze(0),
            modalities={name: torch.from_numpy(self._vector(name, value)).unsqueeze(0) for name, value in sample.modalities.items()},
            targets=torch.from_numpy(self._targets(case_id)),
            subtype_index=UNKNOWN if record.subtype is None else self.cohort.labels.subtypes_of(record.cohort).index(record.subtype),
            survival_bin=UNKNOWN if math.isnan(record.time) else self.bank.bins.bin_of(record.time),
            event=UNKNOWN if record.event is None else record.event,
            time=record.time,
            all_tiles=sample.all_tiles,
        )

    def _vector(self, name: str, value: np.ndarray | None) -> np.ndarray:
        if value is None:
            return np.full(self.widths[name], np.nan, np.float32)
        normalizer = self.normalizers.get(name)
        return normalizer(value) if normalizer is not None else np.asarray(value, np.float32)

    def _targets(self, case_id: str) -> np.ndarray:
        """The case's text targets; zeros for a case the bank has never seen (new slides at
        prediction time, where no loss is computed)."""
        if not self.bank.has_case(case_id):
            return np.zeros(self.bank.case_targets.shape[1:], dtype=self.bank.case_targets.dtype)
        return np.asarray(self.bank.targets_of(case_id))


def seeded_batches(
    batcher: CaseBatcher, seed: int, epoch: int | str, device: torch.device, dtype: torch.dtype
) -> Callable[[str], CaseBatch]:
    """Case -> batch on device, its tile subsample seeded by (seed, epoch, case): the same tiles
    for a case wherever and whenever it is drawn (``epoch="evaluation"`` for evaluation)."""

    def make(case_id: str) -> CaseBatch:
        rng = np.random.default_rng([seed, zlib.crc32(str(epoch).encode()), zlib.crc32(case_id.encode())])
        return batcher.batch(case_id, rng).to(device, dtype)

    return make
