"""A run's label banks (its labels as text, embedded by its text encoder), computed once per
(text encoder, fold) before any worker starts and reused by every run that needs them.

Ray is imported only to compute a large text encoder's banks on a GPU node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from modaltune.data import Cohort
from modaltune.text import TextEmbeddingCache, build_label_bank, build_text_encoder
from modaltune.text.encoders import parse_text_encoder_spec
from modaltune.train.config import TrainConfig

logger = logging.getLogger(__name__)


def ensure_label_bank(cohort: Cohort, config: TrainConfig, path: Path) -> Path:
    """The label bank of (text encoder, fold), computed once and reused by every run that needs it."""
    if not path.exists():
        train_ids, _ = cohort.split(config.fold, config.cohorts, config.test_fold)
        encoder = build_text_encoder(config.text_encoder, cohort.labels)
        cache = TextEmbeddingCache(cohort.layout.cache_dir / "text_embeddings")
        build_label_bank(cohort, encoder, train_ids, out_dim=config.model.out_dim, cache=cache).save(path)
    return path


def _label_bank_on_gpu(cohort_dir: str, config: TrainConfig, path: Path) -> str:
    """A label bank computed where Ray places a GPU (a GPU node, brought up by the autoscaler if needed)."""
    import ray

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
    wait_for_gpu_banks = _start_on_gpus(cohort, remote) if remote else None
    for path, config in missing.items():
        if path not in remote:
            ensure_label_bank(cohort, config, path)
    if wait_for_gpu_banks is not None:
        wait_for_gpu_banks()


def _start_on_gpus(cohort: Cohort, banks: dict[Path, TrainConfig]) -> Callable[[], None]:
    """Each bank as a Ray task with a GPU; the function returned waits for them all."""
    import ray  # only here: a plan on a machine without Ray computes no bank on a GPU

    on_gpu = ray.remote(num_gpus=1, max_retries=1)(_label_bank_on_gpu)
    tasks = {path: on_gpu.remote(str(cohort.layout.root), config, path) for path, config in banks.items()}

    def wait() -> None:
        for path, task in tasks.items():
            try:
                node = ray.get(task)
            except ray.exceptions.RayTaskError as error:
                raise error.cause from None
            logger.info("label bank %s computed on the GPU node %s", path.name, node)

    return wait
