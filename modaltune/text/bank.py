"""Label banks: every prompt of a study embedded once per text encoder, cached on disk.

A study sweeps text encoders across hundreds of trials; each trial must not re-run a language
model over thousands of prompts. Embeddings are cached per (encoder name, revision) keyed by
the prompt text, and a ``LabelBank`` — the projected targets of one encoder for one fold — is
a small file every trial of that (encoder, fold) reads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from modaltune.atomic import atomic_path
from modaltune.data.cohort import Cohort
from modaltune.errors import InputError
from modaltune.text.encoders import TextEncoder
from modaltune.text.prompts import TASKS, Prompt, PromptBuilder, SurvivalBins

logger = logging.getLogger(__name__)


class TextEmbeddingCache:
    """Raw text embeddings per encoder, one ``.npz`` per (name, revision), written atomically."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, encoder: TextEncoder) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{encoder.name}--{encoder.revision}")[:150]
        digest = hashlib.sha256(f"{encoder.name}\0{encoder.revision}".encode()).hexdigest()[:12]
        return self.directory / f"{slug}-{digest}.npz"

    def embed(self, encoder: TextEncoder, prompts: Sequence[Prompt]) -> np.ndarray:
        """Embeddings of ``prompts``; only texts not cached yet go through the encoder."""
        if not encoder.cacheable:
            return encoder.encode(prompts)
        path = self._path(encoder)
        known: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as stored:
                known = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
        keys = [_text_key(p.text) for p in prompts]
        missing = sorted({k: p for k, p in zip(keys, prompts, strict=True) if k not in known}.items())
        if missing:
            logger.info("embedding %d new prompt(s) with %s", len(missing), encoder.name)
            vectors = encoder.encode([p for _, p in missing])
            known.update(zip((k for k, _ in missing), vectors, strict=True))
            with atomic_path(path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, keys=np.array(list(known)), vectors=np.stack(list(known.values())))
        return np.stack([known[k] for k in keys]).astype(np.float32)


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def random_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """The paper's frozen random projector: a fixed Gaussian matrix, reproducible from its seed."""
    return np.random.default_rng(seed).standard_normal((in_dim, out_dim)).astype(np.float32) / np.sqrt(out_dim)


def _project(vectors: np.ndarray, projection: np.ndarray) -> np.ndarray:
    projected = vectors @ projection
    return projected / np.maximum(np.linalg.norm(projected, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class LabelBank:
    """Projected, L2-normalised text targets of one encoder for one training split.

    ``case_targets[i, t]`` is case ``case_ids[i]``'s prompt for task ``TASKS[t]``;
    ``class_targets[cohort]`` and ``bin_targets[cohort]`` are the per-class and per-bin
    prompts of each cancer type (the supervised objective's class anchors).
    """

    encoder: str
    bins: SurvivalBins
    case_ids: tuple[str, ...]
    case_targets: np.ndarray  # (n_cases, len(TASKS), out_dim)
    class_targets: dict[str, np.ndarray]
    bin_targets: dict[str, np.ndarray]

    @property
    def out_dim(self) -> int:
        return int(self.case_targets.shape[-1])

    def targets_of(self, case_id: str) -> np.ndarray:
        return self.case_targets[self._index[case_id]]

    def has_case(self, case_id: str) -> bool:
        return case_id in self._index

    @cached_property
    def _index(self) -> dict[str, int]:
        """Built once per bank (not per lookup: ``targets_of`` runs every training step)."""
        return {c: i for i, c in enumerate(self.case_ids)}

    def save(self, path: str | os.PathLike[str]) -> None:
        arrays: dict[str, Any] = {f"class/{c}": v for c, v in self.class_targets.items()}
        arrays |= {f"bin/{c}": v for c, v in self.bin_targets.items()}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                encoder=np.array(self.encoder),
                edges=np.array(self.bins.edges),
                case_ids=np.array(self.case_ids),
                case_targets=self.case_targets,
                **arrays,
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LabelBank:
        with np.load(path, allow_pickle=False) as stored:
            return cls(
                encoder=str(stored["encoder"]),
                bins=SurvivalBins(tuple(float(e) for e in stored["edges"])),
                case_ids=tuple(stored["case_ids"].tolist()),
                case_targets=stored["case_targets"],
                class_targets={k[len("class/") :]: stored[k] for k in stored.files if k.startswith("class/")},
                bin_targets={k[len("bin/") :]: stored[k] for k in stored.files if k.startswith("bin/")},
            )


def build_label_bank(
    cohort: Cohort,
    encoder: TextEncoder,
    training_cases: Sequence[str],
    *,
    out_dim: int = 256,
    cache: TextEmbeddingCache | None = None,
    projection_seed: int = 0,
) -> LabelBank:
    """Embed every prompt of the cohort with survival bins fitted on ``training_cases`` only."""
    records = [cohort.record(c) for c in cohort.case_ids]
    training = set(training_cases)
    train_records = [r for r in records if r.case_id in training]
    unknown = [r.case_id for r in train_records if r.event is None]
    if unknown:
        raise InputError(f"training cases without a survival event (0 or 1), which their prompts need: {', '.join(unknown[:5])}")
    events = [r.event for r in train_records if r.event is not None]
    bins = SurvivalBins.fit([r.time for r in train_records], events, cohort.labels.survival.n_bins)
    builder = PromptBuilder(cohort.labels, bins)
    case_prompts = [p for r in records for p in builder.case_prompts(r)]
    class_prompts = {c: builder.class_prompts(c) for c in cohort.cohort_names}
    bin_prompts = {c: builder.bin_prompts(c) for c in cohort.cohort_names}
    everything = case_prompts + [p for ps in class_prompts.values() for p in ps] + [p for ps in bin_prompts.values() for p in ps]

    raw = cache.embed(encoder, everything) if cache else encoder.encode(everything)
    projected = _project(raw, random_projection(raw.shape[1], out_dim, projection_seed))
    offset = len(case_prompts)
    class_targets, bin_targets = {}, {}
    for name, prompts in class_prompts.items():
        class_targets[name], offset = projected[offset : offset + len(prompts)], offset + len(prompts)
    for name, prompts in bin_prompts.items():
        bin_targets[name], offset = projected[offset : offset + len(prompts)], offset + len(prompts)
    return LabelBank(
        encoder=encoder.name,
        bins=bins,
        case_ids=tuple(r.case_id for r in records),
        case_targets=projected[: len(case_prompts)].reshape(len(records), len(TASKS), out_dim),
        class_targets=class_targets,
        bin_targets=bin_targets,
    )
