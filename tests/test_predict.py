"""An exported fold model predicts new cases as it would have in training, for the distill
objective too, whose probes are refitted on the training embeddings saved with the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from modaltune import predict
from modaltune.atomic import write_parquet_atomic
from modaltune.data import Cohort
from modaltune.models import ModalTuneModel
from modaltune.objectives import build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, ModalityNormalizer, normalizer_file, seeded_batches
from modaltune.train.config import load_train_config
from modaltune.train.loop import TrainModule, collect_case_outputs, predict_cases

pytestmark = pytest.mark.slow


def test_a_distill_member_refits_its_probes_on_the_saved_training_embeddings(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    config = load_train_config(
        None, ["objective=distill", "text_encoder=onehot", "model.out_dim=16", "model.modalities=[wsi, rna]", "max_tiles=null"]
    )
    train_ids, val_ids = cohort.split(config.fold)
    bank = build_label_bank(cohort, build_text_encoder(config.text_encoder, cohort.labels), train_ids, out_dim=16)
    torch.manual_seed(config.model.encoder_init_seed)  # as the training worker builds it
    model = ModalTuneModel(config.model.for_cohort(cohort))
    torch.manual_seed(123)  # adapters as if trained: anything but the init predict would make
    module = TrainModule(model, build_objective("distill", bank)).eval()
    with torch.no_grad():
        for param in module.trainable_parameters():
            param.normal_(0, 0.05)
    classes_of = {name: cohort.labels.subtypes_of(name) for name in cohort.labels.cohorts}
    batcher = CaseBatcher(cohort, bank, train_ids, modalities=("rna", "clinical"))
    batches = seeded_batches(batcher, config.seed, "evaluation", torch.device("cpu"), torch.float32)
    train_rows = collect_case_outputs(module, batches, train_ids)
    expected = predict_cases(module.objective, train_rows, collect_case_outputs(module, batches, val_ids), classes_of)

    member = tmp_path / "best" / predict.MEMBERS_DIR / "fold0_seed0"
    member.mkdir(parents=True)
    torch.save({name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}, member / predict.ADAPTER)
    (member / predict.CONFIG).write_text(json.dumps({"train": config.model_dump()}))
    bank.save(member / predict.LABEL_BANK)
    train_frame = predict_cases(module.objective, train_rows, train_rows, classes_of)
    for column in [c for c in train_frame.columns if c.startswith("embedding_") or c == "class_probabilities"]:
        train_frame[column] = [np.asarray(v, dtype=np.float32).tolist() for v in train_frame[column]]
    write_parquet_atomic(member / predict.TRAIN_CASES, pa.Table.from_pandas(train_frame, preserve_index=False))
    ModalityNormalizer.fit_on(cohort, "rna", train_ids).save(member / normalizer_file("rna"))

    got = predict.predict_member(member, cohort, val_ids, classes_of)
    assert np.allclose(got["risk"], expected["risk"], atol=1e-4)
    assert list(got["predicted_subtype"]) == list(expected["predicted_subtype"])


def _member(rng: np.random.Generator, train_sd: float, n_cases: int) -> pd.DataFrame:
    """One fold model's predictions of ``n_cases`` cases, its training risks having SD ``train_sd``."""
    train = pd.DataFrame({"cohort": "NSCLC", "risk": rng.normal(0.0, train_sd, 200)})
    cases = pd.DataFrame({
        "case_id": [f"case{i}" for i in range(n_cases)], "cohort": "NSCLC", "risk": rng.normal(0.0, 1.0, n_cases),
        "class_probabilities": [[0.5, 0.5]] * n_cases,
    })
    return cases.assign(risk_percentile=predict.training_percentile(cases, train))


def test_risk_and_risk_group_follow_one_rule_even_with_a_near_constant_member() -> None:
    """A member whose training risks barely vary (SD 0.09, as in the issue) must not outweigh the
    others: ``risk`` stays in [0, 1] and ``risk_group`` is high exactly when ``risk`` > 0.5.
    Z-scores by the training SD averaged with a majority vote contradicted each other here."""
    rng = np.random.default_rng(0)
    members = [_member(rng, 1.0, 300), _member(rng, 1.0, 300), _member(rng, 0.09, 300)]
    combined = predict.ensemble(members, {"NSCLC": ["LUAD", "LUSC"]})
    assert combined["risk"].between(0, 1).all()
    assert ((combined["risk"] > 0.5) == (combined["risk_group"] == "high")).all()
    assert 0.3 < (combined["risk_group"] == "high").mean() < 0.7


def test_training_percentile_is_the_share_of_training_risks_below_ties_half() -> None:
    train = pd.DataFrame({"cohort": ["A"] * 4 + ["B"], "risk": [1.0, 2.0, 2.0, 3.0, 0.0]})
    cases = pd.DataFrame({"cohort": ["A", "A", "A", "A", "C"], "risk": [0.0, 2.0, 2.5, 9.0, 1.0]})
    got = predict.training_percentile(cases, train)
    assert np.allclose(got[:4], [0.0, 0.5, 0.75, 1.0]) and np.isnan(got[4])  # no training risks of C
