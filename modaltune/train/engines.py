"""The training engine of a run: DeepSpeed (default) or torch DDP, built from the run config.

DeepSpeed gets only the trainable parameters (the frozen slide encoder never reaches the
optimizer; under ``finetune`` with layer decay, as parameter groups each with its own rate)
and a config we build from the run config — ZeRO stage, precision, gradient accumulation and
clipping — merged with the user's ``deepspeed_overrides``. The optimizer is
a client ``torch.optim.AdamW`` (a DeepSpeed-named optimizer would JIT-compile FusedAdam for a
minute on CPU for no gain here) and the schedule a client warm-up + cosine ``LambdaLR``.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from modaltune.errors import InputError
from modaltune.train.config import TrainConfig
from modaltune.train.loop import Engine, TorchEngine, TrainModule

logger = logging.getLogger(__name__)

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEEPSPEED_TAG = "engine"  # the sub-folder DeepSpeed's checkpoint goes in
DDP_FILE = "ddp_state.pt"


def resolve_precision(config: TrainConfig) -> str:
    """``auto`` means bf16 on GPU, fp32 on CPU; fp16 (loss scaling) is refused without a GPU."""
    precision = config.engine.precision
    if precision == "auto":
        return "bf16" if config.scaling.use_gpu else "fp32"
    if precision == "fp16" and not config.scaling.use_gpu:
        raise InputError("engine.precision: fp16 needs a GPU (dynamic loss scaling); use bf16 or fp32 on CPU")
    return precision


def deepspeed_config(config: TrainConfig, precision: str) -> dict[str, Any]:
    """The DeepSpeed config this run uses (one case per micro-step, as in the paper)."""
    built: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": config.optim.gradient_accumulation_steps,
        "gradient_clipping": config.optim.gradient_clipping,
        "zero_optimization": {"stage": config.engine.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merge(built, config.engine.deepspeed_overrides)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def warmup_cosine(optimizer_steps_per_epoch: int, config: TrainConfig) -> Callable[[int], float]:
    """LR multiplier per optimizer step: linear warm-up over ``warmup_epochs``, then cosine."""
    warmup = config.optim.warmup_epochs * optimizer_steps_per_epoch
    total = max(config.optim.epochs * optimizer_steps_per_epoch, 1)
    floor = config.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class BuiltEngine(ABC):
    """A run's engine behind one interface (Lightning Fabric's ``Strategy``): stepping goes
    through ``engine``; gradient norm, ZeRO stage, the trainable weights and the engine's own
    checkpoint state are the backend's business, not its callers'."""

    engine: Engine
    precision: str
    dtype: torch.dtype
    backend: ClassVar[str]

    @abstractmethod
    def grad_norm(self) -> float:
        """The last optimizer step's global gradient norm (NaN when the engine has none)."""

    @property
    def zero_stage(self) -> int | None:
        """DeepSpeed's ZeRO stage (3: parameters partitioned across ranks); None under DDP."""
        return None

    def lr(self) -> float:
        optimizer = self.engine.optimizer  # type: ignore[attr-defined]
        return float(optimizer.param_groups[0]["lr"])

    def trainable_state(self, module: TrainModule) -> dict[str, torch.Tensor]:
        """The trainable weights as full fp32 CPU tensors (every rank must call it: ZeRO-3 gathers)."""
        return {name: p.detach().float().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}

    @abstractmethod
    def save_state(self, directory: Path, rank: int) -> None:
        """Write this rank's optimizer, schedule and step state into ``directory``."""

    @abstractmethod
    def load_state(self, directory: Path, module: TrainModule, weights: Path) -> None:
        """Restore what ``save_state`` wrote and the trainable weights (``weights``: the file of
        the checkpoint's ``trainable_state``, for an engine that does not keep them itself)."""


@dataclass
class DeepSpeedEngine(BuiltEngine):
    deepspeed_config: dict[str, Any] = field(default_factory=dict)
    backend: ClassVar[str] = "deepspeed"

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()  # type: ignore[attr-defined]
        return float(norm) if norm is not None else math.nan

    @property
    def zero_stage(self) -> int | None:
        return int(self.engine.zero_optimization_stage())  # type: ignore[attr-defined]

    def trainable_state(self, module: TrainModule) -> dict[str, torch.Tensor]:
        if self.zero_stage != 3:
            return super().trainable_state(module)
        import deepspeed

        trainable = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            return super().trainable_state(module)

    def save_state(self, directory: Path, rank: int) -> None:
        # DeepSpeed's own layout: each rank its optimizer shard, the trainable weights once.
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)  # type: ignore[attr-defined]

    def load_state(self, directory: Path, module: TrainModule, weights: Path) -> None:
        self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG, load_module_strict=False)  # type: ignore[attr-defined]


@dataclass
class DdpEngine(BuiltEngine):
    backend: ClassVar[str] = "ddp"

    def grad_norm(self) -> float:
        return self.engine.last_grad_norm  # type: ignore[attr-defined]

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:  # replicated on every rank: one copy
            engine = self.engine
            torch.save(
                {"optimizer": engine.optimizer.state_dict(), "scheduler": engine.scheduler.state_dict(), "micro_steps": engine.micro_steps},  # type: ignore[attr-defined]
                directory / DDP_FILE,
            )

    def load_state(self, directory: Path, module: TrainModule, weights: Path) -> None:
        trainable = torch.load(weights, weights_only=True)
        with torch.no_grad():
            for name, param in module.named_parameters():
                if param.requires_grad:
                    param.copy_(trainable[name].to(param.dtype))
        saved = torch.load(directory / DDP_FILE, weights_only=False)
        engine = self.engine
        engine.optimizer.load_state_dict(saved["optimizer"])  # type: ignore[attr-defined]
        engine.scheduler.load_state_dict(saved["scheduler"])  # type: ignore[attr-defined]
        engine.micro_steps = saved["micro_steps"]  # type: ignore[attr-defined]


def build_engine(module: TrainModule, config: TrainConfig, optimizer_steps_per_epoch: int) -> BuiltEngine:
    """DeepSpeed when configured and importable, else DDP — and the log says which runs."""
    precision = resolve_precision(config)
    trainable = module.optimizer_parameters(config.optim.lr)  # one list, or groups by learning rate (finetune's layer decay)
    # fused: one kernel for every parameter (CPU and CUDA) instead of a Python loop over them,
    # which for an adapter's many small tensors was a sixth of a CPU training step.
    optimizer = torch.optim.AdamW(trainable, lr=config.optim.lr, weight_decay=config.optim.weight_decay, fused=True)
    schedule = warmup_cosine(optimizer_steps_per_epoch, config)
    if config.engine.backend == "deepspeed":
        try:
            import deepspeed
        except ImportError as exc:  # e.g. a machine without a compiler for its ops
            logger.warning("DeepSpeed is not importable (%s): falling back to torch DDP", exc)
        else:
            ds_config = deepspeed_config(config, precision)
            engine, _, _, _ = deepspeed.initialize(
                model=module, model_parameters=trainable, optimizer=optimizer, config=ds_config,
                lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule), dist_init_required=False,
            )
            logger.info("engine: DeepSpeed ZeRO-%d, %s", config.engine.zero_stage, precision)
            return DeepSpeedEngine(engine, precision, PRECISION_DTYPES[precision], ds_config)
    from ray.train.torch import prepare_model

    if precision != "fp32":
        module = module.to(PRECISION_DTYPES[precision])
    # The model's buffers are constants (position tables, gene groups, label anchors): no
    # broadcast of them before every forward.
    wrapped = prepare_model(module, move_to_device=True, parallel_strategy_kwargs={"broadcast_buffers": False})
    engine = TorchEngine(
        wrapped, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        gradient_accumulation_steps=config.optim.gradient_accumulation_steps,
        gradient_clipping=config.optim.gradient_clipping or None,
    )
    logger.info("engine: torch DDP, %s", precision)
    return DdpEngine(engine, precision, PRECISION_DTYPES[precision])
