"""The frozen-prefix cache changes nothing but speed: cached and uncached training are identical."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modaltune.data import Cohort, modality_inputs
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig
from modaltune.objectives import build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.loop import TorchEngine, TrainModule, collect_case_outputs, train_epoch
from modaltune.train.prefix_cache import GB, LAST_USED, PrefixCache, folder_bytes, open_prefix_cache, with_prefixes

pytestmark = pytest.mark.slow

EPOCHS = 2


def _module(cohort: Cohort, adapter_depth: int = 1) -> tuple[TrainModule, CaseBatcher, list[str]]:
    train_ids, _ = cohort.split(0)
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), train_ids, out_dim=16)
    torch.manual_seed(0)
    config = ModalTuneConfig.tiny(
        encoder=SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim, depth=6), modalities=("wsi", "rna"),
        modality_inputs=modality_inputs(cohort, ["rna", "clinical"]),
        adapter_depth=adapter_depth, out_dim=16,
    )
    module = TrainModule(ModalTuneModel(config), build_objective("supervised", bank))
    return module, CaseBatcher(cohort, bank, train_ids, modalities=("rna", "clinical")), train_ids


def _train(
    cohort: Cohort, cache_dir: Path | None, max_tiles: int | None = None, max_gb: float = float("inf"),
) -> tuple[list[float], dict[str, torch.Tensor], PrefixCache | None]:
    module, batcher, train_ids = _module(cohort)
    batcher.max_tiles = max_tiles
    cache = open_prefix_cache(cache_dir is not None, cache_dir or Path("/nonexistent"), module.model, torch.float32, None, max_gb)
    engine = TorchEngine(module, torch.optim.AdamW(module.trainable_parameters(), lr=2e-3))
    losses = []
    for epoch in range(EPOCHS):
        module.train()
        batches = with_prefixes(seeded_batches(batcher, 0, epoch, torch.device("cpu"), torch.float32), cache)
        losses.append(train_epoch(engine, batches, train_ids[:24])["loss"])
    weights = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    return losses, weights, cache


def test_cached_and_uncached_training_are_identical(small_cohort: Path, tmp_path: Path, single_thread: None) -> None:
    cohort = Cohort(small_cohort)
    plain_losses, plain_weights, _ = _train(cohort, None)
    cached_losses, cached_weights, cache = _train(cohort, tmp_path / "prefix")
    assert cached_losses == plain_losses
    assert all(torch.equal(plain_weights[name], cached_weights[name]) for name in plain_weights)
    assert cache is not None and cache.misses == 24 and cache.hits == 24 * (EPOCHS - 1)
    assert len(list(cache.directory.glob("*.pt"))) == 24


def test_a_cached_prefix_gives_the_forward_pass_exactly(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    module, batcher, train_ids = _module(cohort)
    module.eval()
    cache = PrefixCache(tmp_path, module.model, torch.float32)
    batches = seeded_batches(batcher, 0, "evaluation", torch.device("cpu"), torch.float32)
    cached = with_prefixes(batches, cache)
    plain = collect_case_outputs(module, batches, train_ids[:5])
    first, again = collect_case_outputs(module, cached, train_ids[:5]), collect_case_outputs(module, cached, train_ids[:5])
    assert cache.hits == 5 and cache.misses == 5
    for rows in (first, again):
        for expected, got in zip(plain, rows, strict=True):
            assert expected["risk"] == got["risk"]
            assert all(np.array_equal(expected["embeddings"][t], got["embeddings"][t]) for t in expected["embeddings"])


def test_randomly_capped_cases_are_never_cached(small_cohort: Path, tmp_path: Path) -> None:
    """Capped below every case's tile count, each step sees other tiles: nothing may be reused."""
    cohort = Cohort(small_cohort)
    _, _, cache = _train(cohort, tmp_path / "prefix", max_tiles=5)
    assert cache is not None and cache.hits == cache.misses == 0


def test_changed_tiles_are_recomputed_not_reused(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    module, batcher, train_ids = _module(cohort)
    cache = PrefixCache(tmp_path, module.model, torch.float32)
    batch = batcher.batch(train_ids[0])
    cache.prefix(batch)
    batch.features = batch.features + 1.0  # the cohort's features were re-extracted
    fresh = cache.prefix(batch)
    assert cache.misses == 2 and cache.hits == 0
    assert torch.equal(fresh, module.model.encode_prefix(batch.features, batch.coords))


@pytest.mark.parametrize(("adapter_depth", "zero_stage", "reason"), [(3, None, "layer 0"), (1, 3, "ZeRO-3")])
def test_the_cache_is_off_where_it_cannot_help_or_be_correct(
    small_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, adapter_depth: int, zero_stage: int | None, reason: str
) -> None:
    module, _, _ = _module(Cohort(small_cohort), adapter_depth=adapter_depth)
    with caplog.at_level("INFO"):
        assert open_prefix_cache(True, tmp_path, module.model, torch.float32, zero_stage) is None
    assert reason in caplog.text


def _entry_bytes(cohort: Cohort, directory: Path) -> list[int]:
    """Each training case's entry size, in the order training first reads them."""
    _, _, cache = _train(cohort, directory)
    assert cache is not None
    _, _, train_ids = _module(cohort)
    return [(cache.directory / f"{case}.pt").stat().st_size for case in train_ids[:24]]


def test_a_budget_below_the_cohort_keeps_what_fits_and_trains_identically(small_cohort: Path, tmp_path: Path, single_thread: None) -> None:
    cohort = Cohort(small_cohort)
    sizes = _entry_bytes(cohort, tmp_path / "unbounded")
    budget = sum(sizes[:10]) + sizes[10] // 2  # room for the first ten cases, not the eleventh
    plain_losses, plain_weights, _ = _train(cohort, None)
    cached_losses, cached_weights, cache = _train(cohort, tmp_path / "bounded", max_gb=budget / GB)
    assert cached_losses == plain_losses
    assert all(torch.equal(plain_weights[name], cached_weights[name]) for name in plain_weights)
    assert cache is not None
    assert len(list(cache.directory.glob("*.pt"))) == 10 and folder_bytes(tmp_path / "bounded") <= budget
    # Epoch 1 computes all 24 and keeps 10; epoch 2 reads those 10 and computes the other 14 again.
    assert (cache.hits, cache.misses) == (10, 24 + 14)
    counts = cache.take_counts()
    assert (counts.hits, counts.misses, counts.unstored) == (10, 38, 28) and counts.compute_s > 0
    expected = {"prefix_cache_bytes": float(folder_bytes(tmp_path / "bounded")), "prefix_cache_budget_bytes": float(budget)}
    assert cache.usage_metrics() == expected


def _other_folder(root: Path, name: str, size: int, used_at: float) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "case.pt").write_bytes(b"\0" * size)
    (folder / LAST_USED).touch()
    os.utime(folder / LAST_USED, (used_at, used_at))
    return folder


def test_folders_unused_longest_are_evicted_first_and_folders_in_use_never(small_cohort: Path, tmp_path: Path, single_thread: None) -> None:
    cohort = Cohort(small_cohort)
    needed = sum(_entry_bytes(cohort, tmp_path / "unbounded"))
    root, half, now = tmp_path / "prefix", needed // 2, time.time()
    oldest = _other_folder(root, "oldest", half, used_at=now - 3 * 86400)
    older = _other_folder(root, "older", half, used_at=now - 2 * 86400)
    in_use = _other_folder(root, "in-use", half, used_at=now - 60)  # another depth a concurrent trial fills
    budget = needed + 2 * half + 100  # the run's entries fit only once one folder is gone
    _, _, cache = _train(cohort, root, max_gb=budget / GB)
    assert cache is not None and cache.take_counts().unstored == 0
    assert not oldest.exists() and older.exists() and in_use.exists()
    assert len(list(cache.directory.glob("*.pt"))) == 24 and folder_bytes(root) <= budget

    # Less room than that: the unused folder goes, the one in use stays, and what does not fit is not kept.
    root = tmp_path / "tight"
    older = _other_folder(root, "older", half, used_at=now - 2 * 86400)
    in_use = _other_folder(root, "in-use", half, used_at=now - 60)
    _, _, cache = _train(cohort, root, max_gb=(needed + 100) / GB)
    assert cache is not None and cache.take_counts().unstored > 0
    assert not older.exists() and in_use.exists() and folder_bytes(root) <= needed + 100
