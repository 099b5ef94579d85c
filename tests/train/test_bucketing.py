"""Evaluation runs cases of equal tile count as one batch: the same outputs as case by case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modaltune.data import Cohort, modality_inputs
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig
from modaltune.objectives import CaseBatch, build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.loop import TrainModule, bucket_by_tile_count, collect_case_outputs
from modaltune.train.prefix_cache import PrefixCache, with_prefixes

pytestmark = pytest.mark.slow


def _case(case_id: str, tiles: int, cached: bool = False) -> CaseBatch:
    return CaseBatch(
        case_id=case_id, cohort="X", features=torch.zeros(1, tiles, 4), coords=torch.zeros(1, tiles, 2, dtype=torch.long),
        modalities={"clinical": torch.zeros(1, 3)}, targets=torch.zeros(2, 4), subtype_index=0, survival_bin=0, event=0, time=1.0,
        prefix=torch.zeros(1, tiles + 1, 4) if cached else None,
    )


def test_groups_hold_only_equal_tile_counts_within_the_budget_and_every_case_once() -> None:
    cases = [_case(f"c{i}", tiles) for i, tiles in enumerate([8, 8, 5, 8, 8, 5, 8, 3, 8, 8])] + [_case("cached", 8, cached=True)]
    groups = list(bucket_by_tile_count(iter(cases), batch_tiles=24))
    assert sorted(b.case_id for g in groups for b in g) == sorted(b.case_id for b in cases)
    for group in groups:
        assert len({(b.features.shape[1], b.prefix is not None) for b in group}) == 1
        assert sum(b.features.shape[1] for b in group) <= 24
    # Seven uncached cases of length 8: a full group of 3, then two of 2 run early because too
    # many tiles (over 24) were waiting.
    assert sorted(len(g) for g in groups if g[0].features.shape[1] == 8 and g[0].prefix is None) == [2, 2, 3]
    assert [len(g) for g in bucket_by_tile_count(iter(cases), batch_tiles=0)] == [1] * len(cases)


def test_cases_waiting_for_company_stay_within_the_budget() -> None:
    """Seven distinct lengths and a budget of 50 tiles: groups run before more than 50 tiles wait."""
    lengths = [10 + i % 7 for i in range(40)]
    pulled = produced = peak = 0

    def cases():
        nonlocal pulled, peak
        for i, tiles in enumerate(lengths):
            peak = max(peak, pulled - produced)  # tiles the bucketer holds before taking the next case
            pulled += tiles
            yield _case(f"c{i}", tiles)

    for group in bucket_by_tile_count(cases(), batch_tiles=50):
        produced += sum(b.features.shape[1] for b in group)
    assert produced == sum(lengths) and 0 < peak <= 50


def _module(cohort: Cohort, objective: str) -> tuple[TrainModule, CaseBatcher, list[str], list[str]]:
    train_ids, val_ids = cohort.split(0)
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), train_ids, out_dim=16)
    torch.manual_seed(0)
    config = ModalTuneConfig.tiny(
        encoder=SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim, depth=4), modalities=("wsi", "rna", "clinical"),
        modality_inputs=modality_inputs(cohort, ["rna", "clinical"]), adapter_depth=1, out_dim=16,
    )
    module = TrainModule(ModalTuneModel(config), build_objective(objective, bank))
    return module, CaseBatcher(cohort, bank, train_ids, modalities=("rna", "clinical"), max_tiles=40), train_ids, val_ids


@pytest.mark.parametrize("objective", ["supervised", "distill"])
def test_bucketed_evaluation_gives_the_case_by_case_outputs(small_cohort: Path, tmp_path: Path, objective: str) -> None:
    cohort = Cohort(small_cohort)
    module, batcher, _, val_ids = _module(cohort, objective)
    # Cases of 20-120 tiles capped at 40: most share the capped length, some are shorter and
    # whole (their prefix cached), so groups of several cases and single cases both occur.
    batches = with_prefixes(
        seeded_batches(batcher, 0, "evaluation", torch.device("cpu"), torch.float32), PrefixCache(tmp_path, module.model, torch.float32)
    )
    ids = val_ids + val_ids[:1]  # a repeated case, as in a rank's padded shard
    one_by_one = collect_case_outputs(module, batches, ids, batch_tiles=0)
    bucketed = collect_case_outputs(module, batches, ids, batch_tiles=40 * 8)
    groups = list(bucket_by_tile_count((batches(i) for i in ids), 40 * 8))
    assert max(len(g) for g in groups) > 1 and min(len(g) for g in groups) == 1

    assert [r["case_id"] for r in bucketed] == ids
    for expected, got in zip(one_by_one, bucketed, strict=True):
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-6)
        for task, embedding in expected["embeddings"].items():
            np.testing.assert_allclose(got["embeddings"][task], embedding, rtol=1e-5, atol=1e-6)
        if objective == "supervised":
            assert got["risk"] == pytest.approx(expected["risk"], rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(got["class_probabilities"], expected["class_probabilities"], rtol=1e-5, atol=1e-6)
