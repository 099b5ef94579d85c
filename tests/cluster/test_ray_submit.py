"""The user's path, for real, on one machine: ``ray up`` cluster/local.yaml with its head at
127.0.0.1, ``ray submit`` it with ``sweeps/ablation.py`` and no arguments, read the study's
tables, ``ray down``. About 1-2 minutes; see tests/cluster/loopback.py for the isolation."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.cluster.configs import REPO, load
from tests.cluster.loopback import (
    VENV_BIN,
    Sshd,
    User,
    ensure_user,
    free_port,
    missing_prerequisites,
    reset_home,
    ssh_client,
    traversable,
)

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_prerequisites() is not None, reason=str(missing_prerequisites()))]

STUDY = "sweeps/studies/tiny.yaml"  # one cell, one trial, one fold, 5 epochs
LEFTOVERS = ("modaltune", "studies", "t", ".modaltune_env", "ablation.py", "cluster.yaml", ".ray")


def loopback_config(user: User, key: Path, gcs_port: int) -> dict[str, Any]:
    """cluster/local.yaml as shipped, except what a one-machine test must change: the head is
    127.0.0.1 with no workers, the ssh user and key, the environment file's contents (the venv
    that runs these tests instead of a fresh install, the tiny study, storage in the home folder,
    Ray's temp dir), and ports and CPUs of `ray start` that stay clear of other Ray instances."""
    config = load("local.yaml")
    config["cluster_name"] = f"modaltune-ci-{gcs_port}"
    config["provider"] = {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    config["auth"] = {"ssh_user": user.name, "ssh_private_key": str(key)}
    hook = next(c for c in config["setup_commands"] if "~/.bashrc" in c and ".modaltune_env" in c)
    exports = {
        "PATH": f"{VENV_BIN}:$PATH",
        "PYTHONPATH": "~/modaltune",  # the mounted copy's modaltune/, not wherever the venv's editable install points
        "TMPDIR": str(user.tmpdir),
        # The mounted copy's spec by its full path: this venv's editable install maps modaltune.cli
        # to the test's checkout, which would resolve a relative name (and the spec's cohort) there,
        # where this user cannot write; a node's own `pip install -e ~/modaltune` resolves it here.
        "MODALTUNE_STUDY": f"~/modaltune/{STUDY}",
        "MODALTUNE_STORAGE": "~/studies",
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    lines = " ".join(f"'export {name}={value}'" for name, value in exports.items())
    config["setup_commands"] = [f"printf '%s\\n' {lines} > ~/.modaltune_env", hook]
    start = config["head_start_ray_commands"][-1]
    assert "--port=6379" in start, start
    config["head_start_ray_commands"][-1] = start.replace("--port=6379", f"--port={gcs_port}") + (
        f" --num-cpus=2 --include-dashboard=false --ray-client-server-port={free_port()}"
        f" --dashboard-agent-listen-port={free_port()}"
    )
    return config


@pytest.fixture
def cluster_user(tmp_path: Path) -> Iterator[tuple[User, Sshd]]:
    user = ensure_user()
    reset_home(user, LEFTOVERS)
    interpreter = Path(sys.executable).resolve()
    with traversable(user, [interpreter, REPO]), Sshd(tmp_path, user) as sshd:
        for path in (interpreter, REPO / "pyproject.toml", VENV_BIN / "ray"):
            if not user.can("-r", path):
                pytest.fail(f"user {user.name} cannot read {path}: the checkout and its venv must be world-readable")
        try:
            yield user, sshd
        finally:
            user.end_processes()  # whatever `ray down` left (ssh control masters); by pid, this user only


def _timed(user: User, args: list[str], timeout: float) -> tuple[str, float]:
    started = time.monotonic()
    code, output = user.run(args, cwd=REPO, timeout=timeout)
    elapsed = time.monotonic() - started
    logger.warning("%s: %.1f s", " ".join(args[:2]), elapsed)
    assert code == 0, f"{' '.join(args)} exited with {code}:\n{output[-6000:]}"
    return output, elapsed


def test_ray_up_submit_down_on_loopback(cluster_user: tuple[User, Sshd]) -> None:
    user, sshd = cluster_user
    key = ssh_client(user, sshd.port)
    code, output = user.run(["ray", "get-auth-token", "--generate"], cwd=user.home, timeout=60)
    assert code == 0, output
    gcs_port = free_port()
    config = user.write("cluster.yaml", yaml.safe_dump(loopback_config(user, key, gcs_port)))

    timings: dict[str, float] = {}
    try:
        _, timings["up"] = _timed(user, ["ray", "up", "-y", str(config)], timeout=300)
        output, timings["submit"] = _timed(user, ["ray", "submit", str(config), "sweeps/ablation.py"], timeout=600)
    finally:
        down, timings["down"] = _timed(user, ["ray", "down", "-y", str(config)], timeout=180)
    print(f"\nray up {timings['up']:.1f} s, ray submit {timings['submit']:.1f} s, ray down {timings['down']:.1f} s")

    # No arguments: the study the cluster config names, found in the mounted repository.
    assert f"study: {user.home}/modaltune/{STUDY} (from $MODALTUNE_STUDY)" in output, output[-6000:]
    # The driver joined the cluster `ray up` started (its GCS port), not an embedded Ray.
    assert re.search(rf"joining the Ray cluster at \S+:{gcs_port}\b", output), output[-6000:]
    assert "starting an embedded Ray" not in output

    study = user.home / "studies" / "tiny"
    spec = yaml.safe_load((REPO / STUDY).read_text(encoding="utf-8"))
    epochs = spec["train"]["optim"]["epochs"]
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 1 and set(trials["state"]) == {"finished"}
    results = pd.read_parquet(study / "results.parquet")
    assert len(results) == 1 * 1 * 1 * epochs  # trials x folds x seeds x epochs
    assert results["epoch"].nunique() == epochs
    for column in ("val_c_index", "val_balanced_accuracy", "val_macro_auc"):
        assert results[column].between(0, 1).all(), column
    assert all(math.isfinite(v) for v in results["val_loss"]), results["val_loss"]

    # `ray down` stopped the cluster's Ray processes (what is left, e.g. ssh, the fixture ends).
    left = [p.info["name"] for p in user.processes() if p.info["name"] in ("raylet", "gcs_server")]
    assert not left, f"still running after ray down: {left}\n{down[-3000:]}"
