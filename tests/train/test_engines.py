"""The DeepSpeed engine uses exactly the config the run builds, and only trainable weights."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch.distributed as dist

from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.models import ModalTuneModel
from modaltune.objectives import build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.config import load_train_config
from modaltune.train.engines import build_engine, deepspeed_config, resolve_precision, warmup_cosine
from modaltune.train.loop import TrainModule


@pytest.fixture(scope="module")
def process_group():
    """A one-process gloo group and the rank variables, as Ray Train sets up in each worker."""
    patch = pytest.MonkeyPatch()
    for name, value in {"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        patch.setenv(name, value)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    patch.undo()


def _module(cohort: Cohort, config) -> TrainModule:  # type: ignore[no-untyped-def]
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), cohort.split(0)[0], out_dim=config.model.out_dim)
    model = ModalTuneModel(config.model.for_cohort(cohort))
    return TrainModule(model, build_objective(config.objective, bank))


def test_engine_config_is_the_built_config(process_group, small_cohort: Path) -> None:
    config = load_train_config(
        None, ["engine.zero_stage=1", "optim.gradient_accumulation_steps=2", "optim.gradient_clipping=0.5",
               "engine.deepspeed_overrides={wall_clock_breakdown: true}"]
    )
    module = _module(Cohort(small_cohort), config)
    built = build_engine(module, config, optimizer_steps_per_epoch=10)
    engine = built.engine
    assert built.backend == "deepspeed"
    assert engine.config == built.deepspeed_config == deepspeed_config(config, "fp32")
    assert engine.zero_optimization_stage() == 1
    assert engine.gradient_accumulation_steps() == 2 and engine.gradient_clipping() == 0.5
    assert not engine.bfloat16_enabled() and engine.wall_clock_breakdown()
    # ZeRO flattens what it optimizes; its bit16_groups list the original parameters.
    optimized = {id(p) for group in engine.optimizer.bit16_groups for p in group}
    frozen = module.model.frozen_parameters()
    assert frozen and not any(id(p) in optimized for p in frozen)
    assert {id(p) for p in module.trainable_parameters()} == optimized


def test_deepspeed_takes_finetunes_layer_decay_as_parameter_groups(process_group, small_cohort: Path) -> None:
    config = load_train_config(
        None, ["engine.zero_stage=1", "optim.lr=0.001", "model.method=finetune", "model.modalities=[wsi]",
               "model.method_settings={unfrozen_layers: 2, layer_decay: 0.5}"]
    )
    module = _module(Cohort(small_cohort), config)
    built = build_engine(module, config, optimizer_steps_per_epoch=10)
    groups = built.engine.optimizer.param_groups
    warm = groups[0]["lr"] / 0.001  # the schedule's first factor, the same for every group
    assert [group["lr"] / warm for group in groups] == pytest.approx([0.001, 0.0005])  # the last layer and the rest at lr, layer 2 at lr/2
    assert built.lr() == groups[0]["lr"]
    optimized = {id(p) for group in built.engine.optimizer.bit16_groups for p in group}
    assert optimized == {id(p) for p in module.trainable_parameters()}
    layer = module.model.encoder.layers[2]
    assert {id(p) for p in layer.parameters()} == {id(p) for p in built.engine.optimizer.bit16_groups[1]}


def test_precision_rules() -> None:
    assert resolve_precision(load_train_config(None, ["engine.precision=auto"])) == "fp32"
    assert resolve_precision(load_train_config(None, ["engine.precision=auto", "scaling.use_gpu=true"])) == "bf16"
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        resolve_precision(load_train_config(None, ["engine.precision=fp16"]))
    built = deepspeed_config(load_train_config(None, ["engine.precision=bf16", "engine.zero_stage=3"]), "bf16")
    assert built["bf16"] == {"enabled": True} and built["zero_optimization"] == {"stage": 3}


def test_warmup_then_cosine_schedule() -> None:
    config = load_train_config(None, ["optim.epochs=4", "optim.warmup_epochs=1", "optim.min_lr_ratio=0.0"])
    factor = warmup_cosine(10, config)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(25) == pytest.approx(0.5) and factor(40) == pytest.approx(0.0)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="optim.learning_rate: Extra inputs"):
        load_train_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(InputError, match="unknown text encoder 'gpt-9'"):
        load_train_config(None, ["text_encoder=gpt-9"])
    with pytest.raises(InputError, match="config file not found"):
        load_train_config(tmp_path / "missing.yaml")
