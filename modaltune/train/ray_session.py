"""Connecting to Ray: the cluster this process was launched on, else an embedded local instance.

Which one, in order: an explicit ``address`` (``"local"`` forces an embedded Ray), then
``RAY_ADDRESS``, then the cluster ``ray start`` launched on this node (the file Ray's own
``ray.init()`` reads; it is how a script under ``ray submit`` finds its cluster), else an
embedded Ray. The embedded case passes ``address="local"`` so that Ray never goes looking for
a cluster on its own: what we join is always the one this module chose and logged.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

import ray

logger = logging.getLogger(__name__)

HEALTH_CHECK_INTERVAL_S = "0.25"
# Ray Train gives up on a worker group after 60 s without resources, logs a traceback and asks
# again, forever. Waiting is not an error: a sweep's watchdog says when a study is stuck.
WORKER_GROUP_START_TIMEOUT_S = str(7 * 24 * 3600)
DEFAULT_EXTENSIONS_DIR = Path.home() / ".cache" / "modaltune" / "torch_extensions"
LOCAL = "local"  # Ray's own name for "start a new local instance"


def worker_env(use_gpu: bool, embedded: bool = False) -> dict[str, str]:
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
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_GROUP_START_TIMEOUT_S)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    if not use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator, over gloo
    if embedded:
        # Ray Train watches for nodes being preempted (spot instances); one machine has no other
        # node to lose, and the watcher costs a process per run and an error line in the log.
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return env


def cluster_address(address: str | None = None) -> str | None:
    """The Ray cluster to join, or ``None`` for an embedded Ray (see the module docstring)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == LOCAL:
        return None
    if address:
        return address
    return ray_start_address()


def ray_start_address() -> str | None:
    """The address of the cluster ``ray start`` launched on this node, if it runs.

    ``ray start`` writes it to ``ray_current_cluster`` in Ray's temp dir ($RAY_TMPDIR, else on
    Linux $TMPDIR, else /tmp, then ``ray/``) and ``ray stop`` removes it; an embedded
    ``ray.init()`` never writes it. Ray's documented ``ray.init()`` joins that cluster, but it
    has no public call that only finds it: ``address="auto"`` also joins any other Ray it sees
    running (another study's embedded one), and ``address=None`` starts a new Ray, unsized,
    when there is none. So the file is read here, as ``ray.init()`` reads it.
    """
    base = os.environ.get("RAY_TMPDIR") or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    try:
        return (Path(base) / "ray" / "ray_current_cluster").read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def connect(address: str | None = None, *, use_gpu: bool = False, num_cpus: int | None = None, processes: int = 0) -> None:
    """Join the cluster ``cluster_address(address)`` names, else start Ray in this process.

    ``num_cpus`` and ``processes`` (Ray worker processes the job keeps alive at once) only size
    an embedded Ray; a cluster's nodes declare their own. Does nothing when Ray is already
    initialised (e.g. a sweep driver started it).
    """
    if ray.is_initialized():
        return
    target = cluster_address(address)
    env = worker_env(use_gpu, embedded=target is None)
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    # Not ray.LoggingConfig: it sets this driver's root logger too (to its level, with a second
    # handler), which would hide the driver's own progress and warnings once Ray starts.
    runtime_env = {"env_vars": env, "worker_process_setup_hook": "modaltune.train.ray_session.setup_worker_process"}
    if target:
        logger.info("joining the Ray cluster at %s", target)
        ray.init(address=target, runtime_env=runtime_env)
    else:
        logger.info("starting an embedded Ray in this process")
        _size_worker_startup(processes)
        ray.init(address=LOCAL, num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)


def setup_worker_process() -> None:
    """Run by Ray in every worker process it starts for this job (``worker_process_setup_hook``).

    Ray's State API, which Ray Train V2 asks from inside its actors, finds its cluster from
    ``RAY_ADDRESS``, else by listing the machine's GCS processes; with two embedded studies on
    one machine there are two, and it fails ("Found multiple active Ray instances") with a
    traceback in both studies' output. Each worker is pointed at its own cluster instead.

    Ray Train V2's placement-group cleaner asks Ray's State API every second whether the run's
    controller lives, and warns each time it cannot: an embedded Ray has no State API (no
    dashboard), so every live run would print a warning a second. Placement groups of dead runs
    are freed by the sweep's reaper instead (``sweeps.reaper``); the cleaner's errors still show.
    """
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _size_worker_startup(processes: int) -> None:
    """Ray's raylet warns ("N PYTHON worker processes have been started ... Nx the maximum
    expected startup concurrency") once live worker processes pass 4x its startup concurrency,
    which it sets to the CPU count: it expects about one process per CPU. A sweep runs several
    zero-CPU processes per trial (the trial, Ray Train's controller, its placement-group cleaner
    and synchronisation actor) besides fractional-CPU workers, so on a small machine the warning
    fires for a healthy study. Sizing the concurrency to the processes the job is expected to
    run keeps the warning for what it is meant for: more processes than that."""
    wanted = math.ceil(processes / 4)
    if wanted > (os.cpu_count() or 1):
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(wanted))
