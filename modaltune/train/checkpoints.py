"""Adapter-only checkpoints: trainable weights, optimizer and schedule, RNG, progress, config.

The frozen slide encoder is never saved (it is GBs and never changes); a checkpoint is the
few MBs that make the run's state. Every rank writes into its own directory (ZeRO shards its
optimizer state); Ray merges them into one checkpoint, so file names carry the rank.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from modaltune.train.engines import BuiltEngine
from modaltune.train.loop import TrainModule

ENGINE_TAG = "engine"
STATE_FILE = "train_state.json"
CONFIG_FILE = "train_config.json"
ADAPTER_FILE = "adapter.pt"
DDP_FILE = "ddp_state.pt"


@dataclass
class TrainState:
    """Progress of a run, restored with the weights."""

    epoch: int = -1  # last completed epoch
    best_epoch: int = -1
    best_value: float | None = None
    epochs_without_improvement: int = 0
    run: int = 0  # which of the worker group's runs (a trial's repetitions) this checkpoint belongs to
    scores: dict[str, float] = field(default_factory=dict)  # the last validation metrics, for the run's finished record


def save_checkpoint(
    directory: Path, built: BuiltEngine, module: TrainModule, state: TrainState, config: dict[str, Any], rank: int
) -> None:
    """Write this rank's part of the checkpoint into ``directory``."""
    torch.save(torch.get_rng_state(), directory / f"rng_{rank}.pt")
    if built.backend == "deepspeed":
        built.engine.save_checkpoint(  # type: ignore[attr-defined]
            str(directory), tag=ENGINE_TAG, client_state={"train_state": asdict(state)}, exclude_frozen_parameters=True
        )
    elif rank == 0:
        engine = built.engine
        torch.save(
            {"optimizer": engine.optimizer.state_dict(), "scheduler": engine.scheduler.state_dict(), "micro_steps": engine.micro_steps},  # type: ignore[attr-defined]
            directory / DDP_FILE,
        )
    adapter = _trainable_state(built, module)
    if rank == 0:
        torch.save(adapter, directory / ADAPTER_FILE)
        (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def _trainable_state(built: BuiltEngine, module: TrainModule) -> dict[str, torch.Tensor]:
    """The trainable weights as full fp32 tensors (gathered across ranks under ZeRO-3)."""
    params = dict(module.named_parameters())
    trainable = {name: p for name, p in params.items() if p.requires_grad}
    if built.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(trainable.values()), modifier_rank=None):
            return {name: p.detach().float().cpu().clone() for name, p in trainable.items()}
    return {name: p.detach().float().cpu().clone() for name, p in trainable.items()}


def load_checkpoint(directory: Path, built: BuiltEngine, module: TrainModule, rank: int) -> TrainState:
    """Restore weights, optimizer, schedule and RNG from ``directory``; return the progress."""
    if built.backend == "deepspeed":
        _, client = built.engine.load_checkpoint(str(directory), tag=ENGINE_TAG, load_module_strict=False)  # type: ignore[attr-defined]
        state = TrainState(**client["train_state"])
    else:
        adapter = torch.load(directory / ADAPTER_FILE, weights_only=True)
        with torch.no_grad():
            for name, param in module.named_parameters():
                if param.requires_grad:
                    param.copy_(adapter[name].to(param.dtype))
        saved = torch.load(directory / DDP_FILE, weights_only=False)
        engine = built.engine
        engine.optimizer.load_state_dict(saved["optimizer"])  # type: ignore[attr-defined]
        engine.scheduler.load_state_dict(saved["scheduler"])  # type: ignore[attr-defined]
        engine.micro_steps = saved["micro_steps"]  # type: ignore[attr-defined]
        state = TrainState(**json.loads((directory / STATE_FILE).read_text()))
    rng_file = directory / f"rng_{rank}.pt"
    if rng_file.exists():
        torch.set_rng_state(torch.load(rng_file, weights_only=True))
    return state


def checkpoint_run(directory: Path) -> int:
    """Which run of the worker group wrote the checkpoint in ``directory`` (rank 0 always writes
    the state file); read before anything is built, to decide which run resumes from it."""
    return int(json.loads((directory / STATE_FILE).read_text()).get("run", 0))


def directory_bytes(directory: str | os.PathLike[str]) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
