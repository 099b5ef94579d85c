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
import yaml
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig, WorkerGroupError
from ray.train.torch import TorchConfig, TorchTrainer

from modaltune.atomic import write_text_atomic
from modaltune.data import Cohort, CohortInvalidError, validate_cohort
from modaltune.errors import InputError
from modaltune.train import ray_session
from modaltune.train.config import TrainConfig
from modaltune.train.label_banks import ensure_label_banks
from modaltune.train.layout import RunInputs, RunLayout
from modaltune.train.preflight import RANDOM_ENCODER_WARNING, check_config_against_cohort
from modaltune.train.records import upsert_epoch_rows
from modaltune.train.run_gate import RunGate
from modaltune.train.worker import train_loop_per_worker

logger = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    output: Path
    metrics: pd.DataFrame
    checkpoint: str | None


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
        train_loop_config={
            "runs": [{"train": config.model_dump(), "paths": paths} for config, paths in runs],
            "gate": gate,
            "log_level": log_level,
        },
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        # ray.train exports Train v2's RunConfig (with logging_config) behind a run-time switch; mypy reads v1's.
        run_config=RunConfig(  # type: ignore[call-arg]
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
