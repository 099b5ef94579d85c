"""Connecting to Ray: a running cluster when one is named, else an embedded local instance."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray

logger = logging.getLogger(__name__)

DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "modaltune" / "torch_extensions"


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment of every Ray worker: offline hubs, DeepSpeed's accelerator and op cache."""
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR)),
    }
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator, over gloo
    return env


def connect(address: str | None = None, *, use_gpu: bool = False, num_cpus: int | None = None) -> None:
    """``address`` (or ``RAY_ADDRESS``) joins a cluster; otherwise start Ray in this process.

    Does nothing when Ray is already initialised (e.g. a sweep driver started it).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = worker_env(use_gpu)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    # ERROR: Ray Train V2's placement-group cleaner warns every second that it cannot query
    # the controller's state when the dashboard is off; harmless, and it drowns the epoch lines.
    logging_config = ray.LoggingConfig(log_level="ERROR")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, logging_config=logging_config)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, logging_config=logging_config)
