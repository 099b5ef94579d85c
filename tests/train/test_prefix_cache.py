"""The frozen-prefix cache changes nothing but speed: cached and uncached training are identical."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modaltune.data import CLINICAL_VECTOR_SIZE, Cohort
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig
from modaltune.objectives import build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.loop import TorchEngine, TrainModule, collect_case_outputs, train_epoch
from modaltune.train.prefix_cache import PrefixCache, open_prefix_cache, with_prefixes

EPOCHS = 2


def _module(cohort: Cohort, adapter_depth: int = 1) -> tuple[TrainModule, CaseBatcher, list[str]]:
    train_ids, _ = cohort.split(0)
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), train_ids, out_dim=16)
    torch.manual_seed(0)
    config = ModalTuneConfig.tiny(
        encoder=SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim, depth=6), modalities=("wsi", "rna"),
        rna_group_sizes=tuple(cohort.rna_group_sizes), clinical_in_features=CLINICAL_VECTOR_SIZE,
        adapter_depth=adapter_depth, out_dim=16,
    )
    module = TrainModule(ModalTuneModel(config), build_objective("supervised", bank))
    return module, CaseBatcher(cohort, bank, train_ids, use_rna=True), train_ids


def _train(cohort: Cohort, cache_dir: Path | None, max_tiles: int | None = None) -> tuple[list[float], dict[str, torch.Tensor], PrefixCache | None]:
    module, batcher, train_ids = _module(cohort)
    batcher.max_tiles = max_tiles
    cache = open_prefix_cache(cache_dir is not None, cache_dir or Path("/nonexistent"), module.model, torch.float32, None)
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
        for expected, got in zip(plain, rows):
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
def test_the_cache_is_off_where_it_cannot_help_or_be_correct(small_cohort: Path, tmp_path: Path, caplog, adapter_depth: int, zero_stage: int | None, reason: str) -> None:
    module, _, _ = _module(Cohort(small_cohort), adapter_depth=adapter_depth)
    with caplog.at_level("INFO"):
        assert open_prefix_cache(True, tmp_path, module.model, torch.float32, zero_stage) is None
    assert reason in caplog.text
