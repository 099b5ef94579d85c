"""The Ray Train worker loop: what every rank of a run executes, in single runs and in sweeps.

Each rank opens the cohort by path (memory-mapped; nothing goes through the object store),
trains on its shard of the epoch's case order, evaluates its shard of validation cases, and
all ranks report each epoch with a checkpoint. Every random draw is seeded from
(seed, epoch, case), and the torch RNG is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray.train
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from modaltune.atomic import write_json_atomic, write_parquet_atomic
from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.objectives import CaseBatch
from modaltune.text import LabelBank
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.checkpoints import TrainState, checkpoint_run, directory_bytes, load_checkpoint, save_checkpoint
from modaltune.train.config import TrainConfig
from modaltune.train.engines import BuiltEngine, build_engine
from modaltune.train.layout import RunInputs
from modaltune.train.loop import (
    TrainModule,
    build_train_module,
    collect_case_outputs,
    predict_cases,
    score_case_outputs,
    train_epoch,
)
from modaltune.train.prefix_cache import open_prefix_cache, with_prefixes
from modaltune.train.records import upsert_epoch_rows
from modaltune.train.run_gate import RunGate

logger = logging.getLogger(__name__)

def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point handed to ``TorchTrainer``;
    ``loop_config = {"runs": [{"train": ..., "paths": RunInputs}, ...], "gate": RunGate | None, "log_level": str}``.

    A sweep trial hands all its repetitions to one worker group, one after another: Ray Train's
    launch (actors, imports, process group) is paid once per trial instead of once per
    repetition. A run whose ``finished.json`` exists is skipped, and Ray Train's latest
    checkpoint resumes the run that wrote it, so a restarted group continues where it stopped.
    Before each run every rank asks the ``gate``; when it says stop, the group ends there and
    Ray Train tears it down as after any finished run (see ``modaltune.train.run_gate``).
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    # Ray Train logs every report at INFO from a logger named after its file; keep our epoch lines only.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("modaltune").setLevel(loop_config.get("log_level", "INFO"))
    latest = ray.train.get_checkpoint()
    latest_run = None
    if latest is not None:
        with latest.as_directory() as directory:
            latest_run = checkpoint_run(Path(directory))
    gate: RunGate | None = loop_config.get("gate")
    for index, run in enumerate(loop_config["runs"]):
        inputs: RunInputs = run["paths"]
        if inputs.layout.finished.exists():
            continue
        if gate is not None and not gate.proceed(index):
            logger.info("run %d not started: told to stop (a sweep's scheduler pruned the trial)", index)
            return
        checkpoint = latest if latest_run == index else (ray.train.Checkpoint(inputs.resume_from) if inputs.resume_from else None)
        RunRecipe(run, index).run(checkpoint)
        gc.collect()  # the finished run's model and engine, before the next run builds its own


class RunRecipe:
    """One run on one rank as steps, in the manner of torchtune's recipes: ``setup`` (data,
    model and engine, the checkpoint it resumes from, cache and writers), then per epoch
    ``train_epoch`` and, when due, ``evaluate``, each epoch ``report``-ed with its checkpoint;
    ``finish`` writes the run's marker. ``run`` chains them."""

    def __init__(self, run: dict[str, Any], index: int) -> None:
        self.started = time.time()
        self.run_config, self.index = run, index
        self.config = TrainConfig.model_validate(run["train"])
        self.paths: RunInputs = run["paths"]
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def run(self, checkpoint: ray.train.Checkpoint | None) -> None:
        self.setup(checkpoint)
        for epoch in self.epochs():
            started = time.time()
            metrics = self.train_epoch(epoch)
            final = epoch + 1 == self.config.optim.epochs
            stop = False
            if (epoch + 1) % self.config.evaluate_every == 0 or final:
                stop = self.evaluate(epoch, final, metrics)
            self.state.epoch = epoch
            metrics |= {"epoch_time_s": time.time() - started, "epoch_started_at": started, "run_finished": final or stop}
            self.report(metrics)
            if stop:
                logger.info("early stopping after epoch %d (best epoch %d)", epoch, self.state.best_epoch)
                break
        self.finish()

    def setup(self, checkpoint: ray.train.Checkpoint | None) -> None:
        config = self.config
        torch.set_num_threads(max(1, round(config.scaling.cpus_per_worker)))
        self._setup_data()
        self._setup_model(checkpoint)
        self.cache = open_prefix_cache(
            config.prefix_cache, self.cohort.layout.cache_dir / "prefix", self.module.model, self.built.dtype,
            self.built.zero_stage, config.prefix_cache_max_gb,
        )
        # ZeRO-3: every rank the same number of forwards
        self.batch_tiles = 0 if self.built.zero_stage == 3 else config.evaluation_batch_tiles
        self.writer = SummaryWriter(log_dir=str(self.paths.layout.tensorboard)) if self.rank == 0 else None

    def _setup_data(self) -> None:
        config = self.config
        self.cohort = Cohort(self.paths.cohort)
        self.train_ids, self.val_ids = self.cohort.split(config.fold, config.cohorts, config.test_fold)
        self.bank = LabelBank.load(self.paths.label_bank)
        self.batcher = CaseBatcher(self.cohort, self.bank, self.train_ids, modalities=config.model.modalities, max_tiles=config.max_tiles)
        self.classes_of = {name: self.cohort.labels.subtypes_of(name) for name in self.cohort.labels.cohorts}
        self.steps_per_epoch = len(self.train_ids) // self.world  # equal steps on every rank

    def _setup_model(self, checkpoint: ray.train.Checkpoint | None) -> None:
        config = self.config
        self.module = build_train_module(config, self.cohort, self.bank).to(self.device)
        # counted before the engine wraps the module: ZeRO-3 leaves each rank a shard of every weight
        self.trainable = sum(p.numel() for p in self.module.trainable_parameters())
        self.built = build_engine(self.module, config, math.ceil(self.steps_per_epoch / config.optim.gradient_accumulation_steps))
        self.state = TrainState(run=self.index)
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.state = load_checkpoint(Path(directory), self.built, self.module, self.rank)
            self.state.run = self.index  # a --resume-from checkpoint of another run continues as this one
            logger.info("rank %d resumed after epoch %d", self.rank, self.state.epoch)
        _record_worker(self.paths.layout.worker_record(self.rank), self.paths.owner, self.state.epoch if checkpoint is not None else None)

    def epochs(self) -> range:
        """The epochs left: after the checkpoint's, none once early stopping's patience ran out."""
        return range(0) if _patience_exhausted(self.state, self.config) else range(self.state.epoch + 1, self.config.optim.epochs)

    def _batches(self, epoch: int | str) -> Callable[[str], CaseBatch]:
        return with_prefixes(seeded_batches(self.batcher, self.config.seed, epoch, self.device, self.built.dtype), self.cache)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        order = [self.train_ids[i] for i in np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_ids))]
        shard = order[self.rank :: self.world][: self.steps_per_epoch]
        self.module.train()
        losses = _mean_across_ranks(train_epoch(self.built.engine, self._batches(epoch), shard))
        _check_converging(epoch, losses, self.module)
        return {"epoch": epoch, **{f"train_{k}": v for k, v in losses.items()}, "lr": self.built.lr(), "grad_norm": self.built.grad_norm()}

    def evaluate(self, epoch: int, final: bool, metrics: dict[str, Any]) -> bool:
        """Score the validation cases into ``metrics``, write the predictions; whether to stop early."""
        config = self.config
        outputs = _Outputs(self._batches("evaluation"), self.module, self.classes_of, self.rank, self.world, self.batch_tiles)
        where = f"validation fold {config.fold}, seed {config.seed}, epoch {epoch}"
        scores, predictions = outputs.score(self.train_ids, self.val_ids, where)
        self.state.scores = {k: float(v) for k, v in scores.items()}
        metrics |= {f"val_{k}": v for k, v in scores.items()}
        stop = _early_stopping(self.state, config, epoch, metrics)
        directory = self.paths.predictions_dir
        tags = {"fold": config.fold, "seed": config.seed, **self.paths.tags}
        if self.rank == 0:
            _write_predictions(directory / f"epoch_{epoch:03d}.parquet", epoch, predictions, tags)
        if final or stop:
            test_ids = self.cohort.test_cases(config.test_fold, config.cohorts)
            _write_final_predictions(outputs, directory, epoch, tags, self.train_ids, test_ids)
        return stop

    def report(self, metrics: dict[str, Any]) -> None:
        metrics |= {"best_epoch": self.state.best_epoch, "engine": self.built.backend, "run": self.index}
        metrics |= {"trainable_parameters": self.trainable}  # the model's and objective's trained weights: a methods table's size column
        metrics |= {"frozen_checksum": _frozen_checksum(self.module, self.built)}
        if self.cache is not None:  # every rank's hits and misses; the folder's size as this rank saw it
            metrics |= _sum_across_ranks(self.cache.take_counts().as_metrics()) | self.cache.usage_metrics()
        _report(metrics, self.built, self.module, self.state, self.run_config, self.rank, self.paths, self.writer)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0:
            write_json_atomic(
                self.paths.layout.finished,
                {
                    "run": self.index, **self.paths.tags, "scores": self.state.scores,
                    "started": self.started, "seconds": time.time() - self.started,
                },
            )


def _record_worker(path: Path, owner: str | None, resumed_after: int | None) -> None:
    """``workers/rank<r>.json``: which process on which host and Ray node runs this rank now and
    the epoch it resumed after (``None``: from scratch), rewritten when Ray Train restarts a
    worker, for operators chasing a stuck or dying run; the placement group holding the worker
    group's resources and who started the run (``owner``, e.g. a sweep trial's incarnation), for
    ``sweeps`` to free the group if the run's starter dies."""
    group = ray.util.get_current_placement_group()
    record = {
        "pid": os.getpid(), "host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(), "started": time.time(),
        "placement_group": group.id.hex() if group else None, "resumed_after_epoch": resumed_after,
    }
    write_json_atomic(path, record | {"owner": owner})


def _frozen_checksum(module: TrainModule, built: BuiltEngine) -> float:
    """Sum of the frozen SLFM's weights: constant over a run unless something trains it.
    NaN under ZeRO-3, where frozen weights are partitioned across ranks."""
    if built.zero_stage == 3:
        return math.nan
    return float(sum(p.detach().double().sum() for p in module.model.frozen_parameters()))


def _sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) for k, v in zip(keys, tensor, strict=True)}


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    world = dist.get_world_size() if dist.is_initialized() else 1
    return {k: v / world for k, v in _sum_across_ranks(values).items()}


def _padded_shard(ids: Sequence[str], rank: int, world: int) -> list[str]:
    """This rank's share, padded so that every rank runs the same number of forward passes
    (ZeRO-3 gathers parameters collectively on each forward)."""
    per_rank = math.ceil(len(ids) / world)
    shard = list(ids[rank::world])
    return shard + shard[-1:] * (per_rank - len(shard)) if shard else list(ids[:1]) * per_rank


def _gathered(rows: list[dict], world: int) -> list[dict]:
    if world == 1:
        return rows
    everything: list[list[dict] | None] = [None] * world
    dist.all_gather_object(everything, rows)
    unique: dict[str, dict] = {}
    for part in everything:
        for row in part or []:
            unique.setdefault(row["case_id"], row)
    return list(unique.values())


class TrainingDivergedError(InputError):
    """The weights (or the training loss) stopped being finite: the run cannot be scored, and a
    lower learning rate or gradient clipping is what fixes it."""


def _check_converging(epoch: int, losses: dict[str, float], module: TrainModule) -> None:
    """Raise ``TrainingDivergedError`` once the weights or the epoch's training loss are NaN
    (an overflowing step in reduced precision that the engine skipped leaves the weights finite)."""
    if any(not bool(torch.isfinite(p).all()) for p in module.trainable_parameters()):
        what = "its weights are no longer finite"
    elif math.isnan(losses.get("loss", 0.0)):
        what = "its training loss is NaN"
    else:
        return
    raise TrainingDivergedError(f"training diverged at epoch {epoch}: {what}; lower optim.lr, or set optim.gradient_clipping")


class _Outputs:
    """Case outputs of the model as it is now: every rank embeds its shard, rank 0 predicts.

    Training cases' outputs are collected once and reused: ``distill`` fits its probes on them,
    and the final epoch's training-set risks fix the risk-group cutoffs of the analysis.
    """

    def __init__(
        self, batches: Callable[[str], CaseBatch], module: TrainModule, classes_of: dict[str, list[str]], rank: int, world: int,
        batch_tiles: int,
    ) -> None:
        self.batches, self.module, self.classes_of, self.rank, self.world = batches, module, classes_of, rank, world
        self.batch_tiles = batch_tiles
        self._train_rows: list[dict] | None = None

    def rows(self, ids: Sequence[str]) -> list[dict]:
        shard = _padded_shard(ids, self.rank, self.world)
        return _gathered(collect_case_outputs(self.module, self.batches, shard, batch_tiles=self.batch_tiles), self.world)

    def train_rows(self, train_ids: Sequence[str]) -> list[dict]:
        if self._train_rows is None:
            self._train_rows = self.rows(train_ids)
        return self._train_rows

    def score(self, train_ids: Sequence[str], val_ids: Sequence[str], where: str) -> tuple[dict[str, float], pd.DataFrame]:
        """Validation metrics and predictions; rank 0 scores (``where``: the split, for warnings), and the metrics reach every rank."""
        val_rows = self.rows(val_ids)
        train_rows = self.train_rows(train_ids) if self.module.objective.predicts_with_probes else []
        result: list[Any] = [None]
        if self.rank == 0:
            result[0] = score_case_outputs(self.module.objective, train_rows, val_rows, self.classes_of, where)
        if self.world > 1:
            dist.broadcast_object_list(result, src=0)
        return result[0]

    def predict(self, train_ids: Sequence[str], ids: Sequence[str]) -> pd.DataFrame | None:
        """Predictions for ``ids`` on rank 0 (None elsewhere); every rank must call it."""
        rows = self.rows(ids)
        train_rows = self.train_rows(train_ids) if self.module.objective.predicts_with_probes else []
        return predict_cases(self.module.objective, train_rows, rows, self.classes_of) if self.rank == 0 else None


def _write_final_predictions(
    outputs: _Outputs, directory: Path, epoch: int, tags: dict[str, Any], train_ids: Sequence[str], test_ids: Sequence[str]
) -> None:
    """The last epoch's training-set predictions (risk cutoffs, censoring, probe refits at
    predict time) and, with a held-out test fold, its test-set predictions."""
    for split, ids in (("train", train_ids), ("test", test_ids)):
        if not ids:
            continue
        frame = outputs.predict(train_ids, ids)
        if frame is not None:
            _write_predictions(directory / f"epoch_{epoch:03d}_{split}.parquet", epoch, frame, tags)


def _patience_exhausted(state: TrainState, config: TrainConfig) -> bool:
    """A run resumed after the epoch that stopped it early has nothing left to train."""
    patience = config.early_stopping.patience
    return patience is not None and state.epochs_without_improvement >= patience


def _early_stopping(state: TrainState, config: TrainConfig, epoch: int, metrics: dict[str, Any]) -> bool:
    """Track the best epoch on the configured metric; True when patience has run out."""
    name = f"val_{config.early_stopping.metric}"
    if name not in metrics:
        raise KeyError(f"early_stopping.metric {config.early_stopping.metric!r} is not reported; have {sorted(metrics)}")
    value = metrics[name]
    better = (
        not math.isnan(value)
        and (state.best_value is None or (value > state.best_value if config.early_stopping.mode == "max" else value < state.best_value))
    )
    if better:
        state.best_epoch, state.best_value, state.epochs_without_improvement = epoch, float(value), 0
    else:
        state.epochs_without_improvement += 1
    return _patience_exhausted(state, config)


def _report(
    metrics: dict[str, Any], built: BuiltEngine, module: TrainModule, state: TrainState, run: dict[str, Any],
    rank: int, paths: RunInputs, writer: Any,
) -> None:
    """Checkpoint (every rank writes its part) and report; rank 0 also logs and writes rows."""
    with tempfile.TemporaryDirectory(prefix="modaltune-ckpt-") as directory:
        save_checkpoint(Path(directory), built, module, state, {"train": run["train"], "paths": paths.as_json()}, rank)
        if rank == 0:
            metrics["checkpoint_bytes"] = directory_bytes(directory)
            if writer is not None:
                _write_scalars(writer, metrics)
            upsert_epoch_rows(paths.layout.metrics, [metrics])
            logger.info("epoch %d: %s", metrics["epoch"], _summary(metrics))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("train_loss", "val_loss", "val_c_index", "val_balanced_accuracy", "val_macro_auc", "lr")
    return ", ".join(f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float))


def _write_scalars(writer: Any, metrics: dict[str, Any]) -> None:
    """Per-task losses, validation metrics per cohort, learning rate and adapter gradient norm."""
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and name != "epoch" and not (isinstance(value, float) and math.isnan(value)):
            writer.add_scalar(name, value, metrics["epoch"])
    writer.flush()


def _write_predictions(path: Path, epoch: int, predictions: pd.DataFrame, tags: dict[str, Any]) -> None:
    """One file per epoch and split; ``tags`` (fold, seed, and a sweep's trial id) become columns."""
    frame = predictions.assign(epoch=epoch, **tags)
    for column in frame.columns:
        if column.startswith("embedding_") or column == "class_probabilities":
            frame[column] = [np.asarray(v, dtype=np.float32).tolist() for v in frame[column]]
    import pyarrow as pa

    write_parquet_atomic(path, pa.Table.from_pandas(frame, preserve_index=False))
