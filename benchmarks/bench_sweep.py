"""Sweep overhead: a study of N short trials, its wall time against the trials' own training time.

Runs ``sweeps/ablation.py`` on the ``tiny`` study (one cell, N trials, --folds repetitions each, trials one at a
time so the sums add up) and splits the wall time into training (sum of epoch times), the
driver (Ray start, validation, label banks, Tune, the closing report), and each trial's
phases from its own timestamps: Ray Train's launch until our worker code runs (once per trial:
its repetitions share one worker group), worker setup of every repetition, epochs, checkpoint +
report between epochs, and the gaps between repetitions plus the last report and teardown. It runs the study
twice, with Ray Train's controller polling its workers every 0.25 s (what modaltune sets) and
every 2 s (Ray's default), and prints both side by side and a ``BENCH sweep`` line.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 4] [--epochs 5] [--folds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from modaltune.train.ray_session import HEALTH_CHECK_INTERVAL_S

REPO = Path(__file__).resolve().parents[1]


SETTINGS = {"ours": HEALTH_CHECK_INTERVAL_S, "ray default": "2.0"}  # Ray Train V2's controller poll interval, s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--folds", type=int, default=3, help="repetitions per trial")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as directory:
        root = Path(directory)
        raw = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text(encoding="utf-8"))
        raw["cohort"] = str(root / "cohort")
        raw["max_concurrent"] = 1
        raw["folds"] = args.folds
        raw["search"]["trials_per_cell"] = args.trials
        raw["train"]["optim"]["epochs"] = args.epochs
        spec = root / "bench.yaml"
        spec.write_text(yaml.safe_dump(raw), encoding="utf-8")
        command = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--study", str(spec), "--storage"]
        # A first run generates the cohort and warms the page cache, so the measured runs do not pay for it.
        subprocess.run([*command, str(root / "warm")], check=True, capture_output=True)
        measured = {name: _measure(command, root / name.replace(" ", "-"), interval) for name, interval in SETTINGS.items()}
        floor = _ray_train_floor(root / "empty", raw["resources"])
    print(f"{args.trials} trials x {args.folds} repetitions x {args.epochs} epochs, one at a time; Ray Train controller poll every "
          + " s vs ".join(SETTINGS.values()) + " s")
    rows = [
        ("wall", "wall"), ("training (epochs)", "training"),
        ("driver (Ray start, validation, label banks, Tune, report, export)", "driver"),
        ("per trial", "total"), ("  Ray Train launch (until our worker code runs)", "launch"),
        ("  worker setup, all repetitions (cohort, label bank, model, engine)", "setup"), ("  epochs (train + eval)", "epochs"),
        ("  checkpoint + report between epochs", "reports"), ("  between repetitions, last report + teardown", "teardown"),
        ("overhead / training", "overhead"),
    ]
    print(f"  {'':68} " + " ".join(f"{name:>12}" for name in SETTINGS))
    for label, key in rows:
        print(f"  {label:68} " + " ".join(f"{measured[name][key]:12.2f}" for name in SETTINGS))
    ours, default = measured["ours"], measured["ray default"]
    print(f"  wall, Ray's default / ours: {default['wall'] / ours['wall']:.2f}x")
    print(f"  Ray Train's floor: TorchTrainer.fit() of a function that does nothing, same resources: {floor:.2f} s "
          f"({floor / (ours['launch'] + ours['teardown']):.0%} of a trial's launch + teardown)")
    print(
        "BENCH sweep "
        + " ".join(f"{key}_s={ours[key]:.1f}" for key in ("wall", "training", "driver", "total", "launch", "setup", "reports", "teardown"))
        + f" ray_train_floor_s={floor:.1f} overhead_ratio={ours['overhead']:.2f}"
        + f" default_poll_overhead_ratio={default['overhead']:.2f} speedup_vs_default_poll={default['wall'] / ours['wall']:.2f}"
    )


def _measure(command: list[str], storage: Path, interval: str) -> dict[str, float]:
    """Run the study once with the controller polling every ``interval`` s; where the time went."""
    env = os.environ | {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": interval}
    started = time.perf_counter()
    subprocess.run([*command, str(storage)], check=True, capture_output=True, env=env)
    wall = time.perf_counter() - started
    study = storage / "bench"
    training = float(pd.read_parquet(study / "results.parquet")["epoch_time_s"].sum())
    phases = pd.DataFrame([_phases(trial) for trial in sorted((study / "trials").glob("*/trial.json"))])
    return {"wall": wall, "training": training, "driver": wall - float(phases["total"].sum()),
            **phases.mean().to_dict(), "overhead": (wall - training) / training}


def _ray_train_floor(storage: Path, resources: dict[str, float], repeats: int = 3) -> float:
    """Median wall time of ``TorchTrainer.fit()`` on a function that does nothing: what Ray Train
    itself costs per run (controller and queue actors, worker group, process group, teardown)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def nothing(config: dict) -> None:  # defined here so Ray ships it by value, not by module name
        pass

    os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = SETTINGS["ours"]
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        seconds = []
        for index in range(repeats):
            started = time.perf_counter()
            TorchTrainer(
                nothing, torch_config=TorchConfig(backend="gloo"), run_config=RunConfig(storage_path=str(storage), name=f"empty{index}"),
                scaling_config=ScalingConfig(
                    num_workers=int(resources["num_workers"]), resources_per_worker={"CPU": resources["cpus_per_worker"]}
                ),
            ).fit()
            seconds.append(time.perf_counter() - started)
    finally:
        ray.shutdown()  # the Ray this function started
    return statistics.median(seconds)


def _phases(trial_file: Path) -> dict[str, float]:
    """Where one trial's wall time went, from its record, its workers' records and epoch rows."""
    trial = json.loads(trial_file.read_text())
    runs = sorted(p.parent for p in trial_file.parent.glob("*/finished.json"))
    worker_starts = [json.loads((run / "workers" / "rank0.json").read_text())["started"] for run in runs]
    setup = epochs = reports = 0.0
    for run, worker_started in zip(runs, worker_starts, strict=True):
        rows = pd.read_parquet(run / "metrics.parquet").sort_values("epoch")
        starts, lengths = rows["epoch_started_at"].to_numpy(), rows["epoch_time_s"].to_numpy()
        setup += starts[0] - worker_started
        epochs += float(lengths.sum())
        reports += float((starts[1:] - (starts + lengths)[:-1]).sum())
    launch = min(worker_starts) - trial["started"]
    return {
        "total": trial["seconds"], "launch": launch, "setup": setup, "epochs": epochs, "reports": reports,
        "teardown": trial["seconds"] - launch - setup - epochs - reports,
    }


if __name__ == "__main__":
    main()
