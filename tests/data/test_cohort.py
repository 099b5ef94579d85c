"""The Cohort API a training worker reads: zero-copy slides, case-level splits, modalities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modaltune.data import CLINICAL_VECTOR_SIZE, Cohort, encode_clinical
from modaltune.errors import InputError


def test_slide_features_are_zero_copy_memory_maps(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    slide = cohort.slide_features(cohort.slides["slide_id"][0])
    assert slide.features.dtype == np.float16 and slide.coords.dtype == np.int32
    assert not slide.features.flags.owndata and not slide.features.flags.writeable
    with pytest.raises(ValueError):
        slide.features[0, 0] = 1.0


def test_splits_are_case_level_and_cover_every_case(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    seen: list[str] = []
    for fold in range(cohort.manifest.n_folds):
        train, val = cohort.split(fold)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(cohort.case_ids)
        seen += val
    assert sorted(seen) == sorted(cohort.case_ids)
    with pytest.raises(InputError, match="validation_fold"):
        cohort.split(cohort.manifest.n_folds)
    assert set(cohort.cases(cohorts=["RCC"])) == set(cohort.slides["case_id"][cohort.slides["cohort"] == "RCC"])


def test_a_test_fold_is_in_no_training_or_validation_split(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    test = set(cohort.test_cases(2))
    train, val = cohort.split(0, test_fold=2)
    assert test and not test & (set(train) | set(val))
    assert set(train) | set(val) | test == set(cohort.case_ids)
    with pytest.raises(InputError, match="also the validation fold"):
        cohort.split(2, test_fold=2)


def test_sample_concatenates_slides_and_caps_tiles(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    multi = next(c for c in cohort.case_ids if len(cohort.record(c).slide_ids) > 1)
    record = cohort.record(multi)
    total = sum(cohort.slide_features(s).n_tiles for s in record.slide_ids)
    full = cohort.sample(multi)
    assert full.features.shape == (total, cohort.manifest.feature_dim) and full.coords.shape == (total, 2)
    capped = cohort.sample(multi, max_tiles=15, rng=np.random.default_rng(0))
    assert capped.features.shape[0] == 15
    rows = {tuple(r) for r in full.features.astype(np.float32).tolist()}
    assert all(tuple(r) in rows for r in capped.features.astype(np.float32).tolist())
    again = cohort.sample(multi, max_tiles=15, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(capped.features, again.features)


def test_rna_vector_follows_group_order_and_clinical_encoding(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    case = cohort.case_ids[0]
    sample = cohort.sample(case, modalities=["rna", "clinical"])
    rna_vector, clinical = sample.modalities["rna"], sample.modalities["clinical"]
    assert rna_vector is not None and rna_vector.shape == (sum(len(genes) for genes in cohort.gene_groups.values()),)
    first_group = next(iter(cohort.gene_groups.values()))
    rna = pd.read_parquet(cohort.layout.rna).set_index("case_id")
    np.testing.assert_allclose(rna_vector[: len(first_group)], rna.loc[case, first_group].to_numpy(np.float32))
    assert clinical is not None and clinical.shape == (CLINICAL_VECTOR_SIZE,)
    vector = encode_clinical({"age": 60.0, "sex": "male", "stage": "Stage IV", "t_stage": "TX", "n_stage": None, "m_stage": "M1"})
    np.testing.assert_allclose(vector, [0.5, 1.0, 1.0, 0.0, 0.0, 1.0, 0, 0, 0, 1, 1, 0])
