"""Connecting to Ray: the cluster this process was launched on, else an embedded local instance.

Which one, in order: an explicit ``address`` (``"local"`` forces an embedded Ray), then
``RAY_ADDRESS``, then the cluster ``ray start`` launched on this node (the file Ray's own
``ray.init()`` reads; it is how a script under ``ray submit`` finds its cluster), else an
embedded Ray. The embedded case passes ``address="local"`` so that Ray never goes looking for
a cluster on its own: what we join is always the one this module chose and logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray
from ray._private.services import find_bootstrap_address

logger = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL_S = "0.25"
DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "modaltune" / "torch_extensions"
LOCAL = "local"  # Ray's own name for "start a new local instance"


def worker_env(use_gpu: bool) -> dict[str, str]:
    """Environment of every Ray worker: offline hubs, DeepSpeed's accelerator and op cache."""
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(DEFAULT_EXTENSIONS_DIR)),
    }
    # Ray Train V2's controller polls its workers every 2 s by default, and a worker's report and
    # the run's end wait for that poll: 0.7 s per epoch and 4 s per run on short trials
    # (benchmarks/bench_sweep.py). A quarter second costs a few tiny actor calls per second.
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", HEALTH_CHECK_INTERVAL_S)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator, over gloo
    return env


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join, or ``None`` for an embedded Ray (see the module docstring)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == LOCAL:
        return None
    if address:
        return address
    # Written by `ray start` under Ray's temp dir ($RAY_TMPDIR or $TMPDIR, else /tmp) and removed
    # by `ray stop`; an embedded `ray.init()` never writes it.
    return find_bootstrap_address(None)


def connect(address: str | None = None, *, use_gpu: bool = False, num_cpus: int | None = None) -> None:
    """Join the cluster ``cluster_address(address)`` names, else start Ray in this process.

    ``num_cpus`` only sizes an embedded Ray; a cluster's nodes declare their own resources.
    Does nothing when Ray is already initialised (e.g. a sweep driver started it).
    """
    if ray.is_initialized():
        return
    env = worker_env(use_gpu)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    # ERROR: Ray Train V2's placement-group cleaner warns every second that it cannot query
    # the controller's state when the dashboard is off; harmless, and it drowns the epoch lines.
    logging_config = ray.LoggingConfig(log_level="ERROR")
    target = cluster_address(address)
    if target:
        logger.info("joining the Ray cluster at %s", target)
        ray.init(address=target, runtime_env={"env_vars": env}, logging_config=logging_config)
    else:
        logger.info("starting an embedded Ray in this process")
        ray.init(
            address=LOCAL, num_cpus=num_cpus, include_dashboard=False,
            runtime_env={"env_vars": env}, logging_config=logging_config,
        )
