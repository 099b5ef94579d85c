"""Shared fixtures: one small synthetic cohort per test session, copied where a test corrupts it."""

from __future__ import annotations

import os

# Offline, quiet engines for every test: nothing may reach a model hub or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# DeepSpeed's JIT-compiled ops are built once (about a minute) and reused from here on.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/modaltune/torch_extensions"))

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modaltune.data import SynthConfig, generate_cohort

SMALL = SynthConfig(
    cohorts=("BRCA", "RCC"),
    slides_per_cohort=40,
    seed=7,
    feature_dim=24,
    min_tiles=20,
    max_tiles=120,
    n_genes=80,
    n_pathways=8,
    n_folds=4,
)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention synthetic cohort; copy it (``cohort_copy``) before changing it."""
    return generate_cohort(tmp_path_factory.mktemp("cohort") / "small", SMALL).root


@pytest.fixture
def cohort_copy(small_cohort: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cohort"
    shutil.copytree(small_cohort, target)
    return target


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Tiny networks run faster on one intra-op thread, and do not spin-wait on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
