"""Driver side of one run: check inputs, prepare shared artefacts, launch Ray Train, collect.

Everything that can fail on bad input (cohort, config, text encoder name, fold) is checked
here, before Ray starts or any model is built. The same ``build_trainer`` is what sweep
trials call (with all of a trial's repetitions), so a single run and a trial share one code path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchConfig, TorchTrainer

from modaltune.atomic import write_text_atomic
from modaltune.data import Cohort, CohortInvalidError, validate_cohort
from modaltune.data.modalities import COHORT_MODALITIES
from modaltune.errors import InputError
from modaltune.models import IMAGE, SLIDE_ENCODER_PRESETS
from modaltune.models.encoder_weights import check_encoder_checkpoint
from modaltune.text import TextEmbeddingCache, build_label_bank, build_text_encoder
from modaltune.text.encoders import parse_text_encoder_spec
from modaltune.train import ray_session
from modaltune.train.config import TrainConfig
from modaltune.train.engines import resolve_precision
from modaltune.train.layout import RunInputs, RunLayout
from modaltune.train.records import upsert_epoch_rows
from modaltune.train.run_gate import RunGate
from modaltune.train.worker import train_loop_per_worker

logger = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    output: Path
    metrics: pd.DataFrame
    checkpoint: str | None


# Said once by the driver (a study's plan, `modaltune train`), not by every worker of every run.
RANDOM_ENCODER_WARNING = (
    "no slide encoder checkpoint configured (model.encoder_checkpoint / encoder_hub_id): the frozen SLFM is randomly "
    "initialised; fine for tests and demos, not for results"
)


def check_config_against_cohort(config: TrainConfig, cohort: Cohort) -> None:
    """The parts of a config that only make sense for a given cohort."""
    if not cohort.labelled:
        raise InputError(
            f"{cohort.layout.manifest}: imported for prediction (import-h5 --for-prediction): "
            "its cases have no outcomes to train on; use it with `modaltune predict`"
        )
    for name, fold in (("fold", config.fold), ("test_fold", config.test_fold)):
        if fold is not None and fold >= cohort.manifest.n_folds:
            raise InputError(f"{name}: {fold} but the cohort has folds 0..{cohort.manifest.n_folds - 1}")
    if config.test_fold == config.fold:
        raise InputError(f"test_fold: {config.test_fold} is also the validation fold")
    unknown = sorted(set(config.cohorts or []) - set(cohort.cohort_names))
    if unknown:
        raise InputError(f"cohorts: {unknown} are not in the cohort (it has {cohort.cohort_names})")
    train_ids, _ = cohort.split(config.fold, config.cohorts, config.test_fold)
    for name in config.model.modalities:
        if name != IMAGE:
            COHORT_MODALITIES[name].check_trainable(cohort, train_ids, config.fold)
    check_tile_features(config, cohort)
    if config.model.encoder_checkpoint is not None:
        check_encoder_checkpoint(config.model.for_cohort(cohort).encoder, config.model.encoder_checkpoint)
    resolve_precision(config)


def check_tile_features(config: TrainConfig, cohort: Cohort) -> None:
    """A cohort holds the features of one tile encoder, and a pretrained SLFM reads only its own
    tile encoder's: refuse the pair, naming both, when the widths differ (before any worker
    starts). A study has one cohort, so it can cross pretrained SLFMs only if they read the same
    tile features; crossing them with cohorts of their own tile encoders is not supported yet."""
    model, width = config.model, cohort.manifest.feature_dim
    takes = model.for_cohort(cohort).encoder.in_dim
    if takes != width:
        raise InputError(f"model.encoder_overrides sets in_dim {takes}, but {cohort.layout.manifest} has {width}-wide tile features")
    preset = SLIDE_ENCODER_PRESETS[model.encoder]
    pretrained = model.encoder_checkpoint is not None or model.encoder_hub_id is not None
    if pretrained and preset.feature_dim is not None and preset.feature_dim != width:
        raise InputError(
            f"model.encoder {model.encoder!r} (pretrained) reads {preset.feature_dim}-wide {preset.tile_encoder} tile features, "
            f"but {cohort.layout.manifest} has {width}-wide ones: give this SLFM a cohort made with {preset.tile_encoder}"
        )


def ensure_label_bank(cohort: Cohort, config: TrainConfig, path: Path) -> Path:
    """The label bank of (text encoder, fold), computed once and reused by every run that needs it."""
    if not path.exists():
        train_ids, _ = cohort.split(config.fold, config.cohorts, config.test_fold)
        encoder = build_text_encoder(config.text_encoder, cohort.labels)
        cache = TextEmbeddingCache(cohort.layout.cache_dir / "text_embeddings")
        build_label_bank(cohort, encoder, train_ids, out_dim=config.model.out_dim, cache=cache).save(path)
    return path


@ray.remote(num_gpus=1, max_retries=1)
def _label_bank_on_gpu(cohort_dir: str, config: TrainConfig, path: Path) -> str:
    """A label bank computed where Ray places a GPU (a GPU node, brought up by the autoscaler if needed)."""
    ensure_label_bank(Cohort(cohort_dir), config, path)
    return ray.util.get_node_ip_address()


def ensure_label_banks(cohort: Cohort, banks: dict[Path, TrainConfig], use_gpu: bool) -> None:
    """Every missing bank: those of a large text encoder (a hub or local LLM, CONCH) as Ray
    tasks with a GPU when the runs train on GPUs — a 1B-parameter LLM over thousands of
    prompts is minutes on a GPU and an hour on a CPU head node — the rest here, at once.

    Ray must be connected when any bank goes to a GPU. A task's failure (e.g. a hub model that
    cannot be loaded) is raised as its own error, not wrapped in Ray's.
    """
    missing = {path: config for path, config in banks.items() if not path.exists()}
    remote = {path: config for path, config in missing.items() if use_gpu and parse_text_encoder_spec(config.text_encoder).wants_gpu}
    tasks = {path: _label_bank_on_gpu.remote(str(cohort.layout.root), config, path) for path, config in remote.items()}
    for path, config in missing.items():
        if path not in remote:
            ensure_label_bank(cohort, config, path)
    for path, task in tasks.items():
        try:
            node = ray.get(task)
        except ray.exceptions.RayTaskError as error:
            raise error.cause from None
        logger.info("label bank %s computed on the GPU node %s", path.name, node)


def build_trainer(
    runs: Sequence[tuple[TrainConfig, RunInputs]], storage_path: Path, name: str, max_failures: int = 0,
    callbacks: list[Any] | None = None, gate: RunGate | None = None, log_level: str = "INFO",
) -> TorchTrainer:
    """A ``TorchTrainer`` whose worker group trains ``runs`` (config, inputs) one after another;
    a single run is a list of one. All runs share one worker
    group, so they must ask for the same resources. ``callbacks`` are Ray Train callbacks, e.g.
    a sweep trial's forwarding of each epoch to Tune; ``gate`` is asked before each run.
    ``log_level`` is the workers' own (modaltune) log level: INFO shows every epoch's line.
    """
    scaling = runs[0][0].scaling
    if any(config.scaling != scaling for config, _ in runs):
        raise ValueError("runs sharing one worker group need the same scaling config")
    resources = {"CPU": scaling.cpus_per_worker} | ({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"runs": [{"train": config.model_dump(), "paths": paths} for config, paths in runs], "gate": gate, "log_level": log_level},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            storage_path=str(storage_path.resolve()),
            name=name,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            logging_config=LoggingConfig(log_level="WARNING"),  # Ray Train's per-report INFO lines; ours stay
            callbacks=callbacks,
        ),
    )


def worker_input_error(error: WorkerGroupError) -> InputError | None:
    """The input error a training worker raised, if that is why the run failed: bad data that
    only reading it reveals, reported by the CLI in one line (exit 2) instead of a traceback."""
    return next((e for e in error.worker_failures.values() if isinstance(e, InputError)), None)


def run_training(
    cohort_dir: str | os.PathLike[str], config: TrainConfig, output: str | os.PathLike[str], *,
    address: str | None = None, resume_from: str | None = None, max_failures: int = 0,
) -> TrainingOutcome:
    """Train one run into ``output`` (metrics.parquet, checkpoints/, tensorboard/, predictions/).

    Re-running with the same ``output`` resumes from the last checkpoint there.
    """
    output = Path(output).resolve()
    report = validate_cohort(cohort_dir)
    if not report.ok:
        raise CohortInvalidError(report)
    cohort = Cohort(cohort_dir)
    check_config_against_cohort(config, cohort)
    if config.model.encoder_checkpoint is None and config.model.encoder_hub_id is None:
        logger.warning("%s", RANDOM_ENCODER_WARNING)
    output.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RunLayout(output).config, yaml.safe_dump(config.model_dump(), sort_keys=False))
    ray_session.connect(address, use_gpu=config.scaling.use_gpu)
    bank = output / "label_bank.npz"
    ensure_label_banks(cohort, {bank: config}, config.scaling.use_gpu)
    inputs = RunInputs(cohort=Path(cohort_dir).resolve(), label_bank=bank, output=output, resume_from=resume_from)
    try:
        result = build_trainer([(config, inputs)], output, "checkpoints", max_failures).fit()
    except WorkerGroupError as error:
        cause = worker_input_error(error)
        if cause is None:
            raise
        raise InputError(f"{cause} (found by a training worker; fix it and re-run with --output {output} to resume)") from None
    frame = result.metrics_dataframe
    metrics = upsert_epoch_rows(inputs.layout.metrics, frame.to_dict("records")) if frame is not None and len(frame) else pd.DataFrame()
    return TrainingOutcome(output=output, metrics=metrics, checkpoint=result.checkpoint.path if result.checkpoint else None)
