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

STATE_FILE = "train_state.json"
CONFIG_FILE = "train_config.json"
ADAPTER_FILE = "adapter.pt"


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
    built.save_state(directory, rank)
    adapter = built.trainable_state(module)
    if rank == 0:
        torch.save(adapter, directory / ADAPTER_FILE)
        (directory / STATE_FILE).write_text(json.dumps(asdict(state)))
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def load_checkpoint(directory: Path, built: BuiltEngine, module: TrainModule, rank: int) -> TrainState:
    """Restore weights, optimizer, schedule and RNG from ``directory``; return the progress."""
    built.load_state(directory, module, directory / ADAPTER_FILE)
    rng_file = directory / f"rng_{rank}.pt"
    if rng_file.exists():
        torch.set_rng_state(torch.load(rng_file, weights_only=True))
    return TrainState(**json.loads((directory / STATE_FILE).read_text()))


def checkpoint_run(directory: Path) -> int:
    """Which run of the worker group wrote the checkpoint in ``directory`` (rank 0 always writes
    the state file); read before anything is built, to decide which run resumes from it."""
    return int(json.loads((directory / STATE_FILE).read_text()).get("run", 0))


def directory_bytes(directory: str | os.PathLike[str]) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
