"""A study on a real multi-node Ray cluster on this machine: a worker node lost mid-trial, as a
spot instance vanishes, then replaced as the autoscaler would; and the head's driver killed and
the study resumed on the cluster.

The cluster is Ray's own ``ray.cluster_utils.Cluster`` (what Ray's fault-tolerance tests use):
a head and a worker node, each a raylet of its own with one CPU, under a Ray temp folder of
this module's own. A trial's training worker asks for 0.8 CPU, so the two trials of a study
run one on each node. Nodes are removed by killing their processes by pid, without a graceful
shutdown; the study is ``sweeps/ablation.py --address`` in its own process group, and only the
processes this module started are ever killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ray.cluster_utils import Cluster

from tests.studyproc import ABLATION, REPO, finish_study, kill_group, markers, write_spec

pytestmark = pytest.mark.slow

ROW_KEY = ["trial_id", "fold", "seed", "epoch"]
EPOCHS, FOLDS, TRIALS = 5, 2, 2
METRICS = ["train_loss", "val_loss", "val_c_index", "val_balanced_accuracy", "val_macro_auc"]
NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head plus one worker node, under a temp folder of this module's own (Ray writes the
    cluster's address file there, not where another Ray on this machine would find it)."""
    temp_dir = tempfile.mkdtemp(prefix="mn", dir="/tmp")  # short: Ray's socket paths are limited
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp_dir)
        started = Cluster(initialize_head=True, head_node_args=NODE | {"include_dashboard": False})
        try:
            started.add_node(**NODE)
            started.wait_for_nodes()
            yield started
        finally:
            started.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("multinode")
    edits = {
        "cohort": str(directory / "cohort"), "folds": FOLDS, "max_concurrent": TRIALS, "max_failures": 3,
        "resources": {"num_workers": 1, "cpus_per_worker": 0.8},  # one training worker per one-CPU node
        "search": {"trials_per_cell": TRIALS, "params": {"optim.lr": {"type": "loguniform", "low": 0.002, "high": 0.008}}},
    }
    return write_spec(directory / "multinode.yaml", "tiny", edits)


@pytest.fixture(scope="module")
def undisturbed(cluster: Cluster, spec: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The study run through on the cluster with nothing lost: what the disturbed runs must equal."""
    storage = tmp_path_factory.mktemp("undisturbed")
    code, output = finish_study(_start(spec, storage, cluster), timeout=600)
    assert code == 0, output[-3000:]
    study = storage / spec.stem
    _check_complete(study)
    nodes = {record["node_id"] for record in _worker_records(study).values()}
    assert len(nodes) == 2, f"the trials did not run on both nodes: {nodes}"
    return _final(study)


def test_a_lost_worker_node_costs_only_its_unsaved_epochs(cluster: Cluster, spec: Path, undisturbed: pd.DataFrame, tmp_path: Path) -> None:
    study = tmp_path / spec.stem
    process = _start(spec, tmp_path, cluster)
    worker_node = next(iter(cluster.worker_nodes))
    # Into the second repetition of the trial on the worker node: one repetition finished there,
    # two epochs of the next saved.
    _wait_for(lambda: _victim(study, worker_node.node_id) is not None, process, "two epochs into a second repetition on the worker node")
    victim = _victim(study, worker_node.node_id)
    saved = _epochs(victim)
    before = markers(study)
    cluster.remove_node(worker_node, allow_graceful=False)  # SIGKILL by pid: the node is gone
    time.sleep(3.0)
    cluster.add_node(**NODE)  # what the autoscaler does for a lost spot node
    code, output = finish_study(process, timeout=600)
    assert code == 0, output[-3000:]

    assert all(markers(study)[name] == stamp for name, stamp in before.items()), "a finished repetition ran again"
    restarted = json.loads((victim / "workers" / "rank0.json").read_text())
    assert restarted["node_id"] != worker_node.node_id, "the lost repetition did not move to a live node"
    # From its last checkpoint: at most the epoch in flight when the node died is trained again.
    assert restarted["resumed_after_epoch"] is not None, "the lost repetition began again from scratch"
    assert restarted["resumed_after_epoch"] >= saved - 2, f"resumed after epoch {restarted['resumed_after_epoch']} with {saved} saved"
    _check_complete(study)
    pd.testing.assert_frame_equal(_final(study), undisturbed)


@pytest.mark.exhaustive(
    "a killed driver: tests/faults/test_faults.py::test_killed_driver_resumes_with_nothing_lost_or_repeated; "
    "the cluster: test_a_lost_worker_node_costs_only_its_unsaved_epochs"
)
def test_a_killed_driver_resumes_on_the_cluster(cluster: Cluster, spec: Path, undisturbed: pd.DataFrame, tmp_path: Path) -> None:
    study = tmp_path / spec.stem
    process = _start(spec, tmp_path, cluster)
    _wait_for(lambda: len(markers(study)) >= 1 and _epochs_after_markers(study) >= 1, process, "a finished repetition and an epoch more")
    os.kill(process.pid, signal.SIGKILL)  # the head's driver alone; Ray ends the job's actors on the cluster
    process.wait()
    kill_group(process)
    before = markers(study)

    code, output = finish_study(_start(spec, tmp_path, cluster, "--resume"), timeout=600)
    assert code == 0, output[-3000:]
    assert all(markers(study)[name] == stamp for name, stamp in before.items()), "a finished repetition ran again"
    _check_complete(study)
    pd.testing.assert_frame_equal(_final(study), undisturbed)


def _start(spec: Path, storage: Path, cluster: Cluster, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(ABLATION), "--study", str(spec), "--storage", str(storage), "--address", cluster.address, *extra]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the study ended before {what}:\n{process.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            kill_group(process)
            pytest.fail(f"timed out waiting for {what}:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)


def _worker_records(study: Path) -> dict[Path, dict[str, Any]]:
    """Each repetition's folder and its rank-0 worker's record."""
    return {p.parents[1]: json.loads(p.read_text()) for p in (study / "trials").glob("*/*/workers/rank0.json")}


def _epochs(repetition: Path) -> int:
    metrics = repetition / "metrics.parquet"
    return len(pd.read_parquet(metrics)) if metrics.exists() else 0


def _victim(study: Path, node_id: str) -> Path | None:
    """The repetition running on ``node_id`` with two epochs saved, after one of its trial's finished."""
    for repetition, record in _worker_records(study).items():
        finished_before = any((sibling / "finished.json").exists() for sibling in repetition.parent.iterdir() if sibling != repetition)
        running = not (repetition / "finished.json").exists()
        if record["node_id"] == node_id and finished_before and running and _epochs(repetition) >= 2:
            return repetition
    return None


def _epochs_after_markers(study: Path) -> int:
    """Epochs saved by repetitions that have not finished."""
    return sum(_epochs(r) for r in _worker_records(study) if not (r / "finished.json").exists())


def _check_complete(study: Path) -> None:
    """Every trial x fold x epoch exactly once, in results and in the trial table."""
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == TRIALS and set(trials["state"]) == {"finished"}, trials.to_string()
    results = pd.read_parquet(study / "results.parquet")
    assert not results.duplicated(ROW_KEY).any()
    assert len(results) == TRIALS * FOLDS * EPOCHS


def _final(study: Path) -> pd.DataFrame:
    """Each configuration's metrics by (learning rate, fold, seed, epoch): trial ids differ between studies."""
    results = pd.read_parquet(study / "results.parquet")
    key = ["optim.lr", "fold", "seed", "epoch"]
    return results.sort_values(key)[key + METRICS].reset_index(drop=True)
