"""Sweep overhead: a study of N short trials, its wall time against the trials' own training time.

Runs ``sweeps/ablation.py`` on the ``tiny`` study (one cell, N trials, one fold, trials one at a
time so the sums add up) and splits the wall time into training (sum of epoch times), the
driver (Ray start, validation, label banks, Tune, the closing report), and each repetition's
phases from its own timestamps: Ray Train's launch until our worker code runs, worker setup,
epochs, checkpoint + report between epochs, and the last report + teardown. Prints a
``BENCH sweep`` line.

    .venv/bin/python benchmarks/bench_sweep.py [--trials 4] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as directory:
        root = Path(directory)
        raw = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text(encoding="utf-8"))
        raw["cohort"] = str(root / "cohort")
        raw["max_concurrent"] = 1
        raw["search"]["trials_per_cell"] = args.trials
        raw["train"]["optim"]["epochs"] = args.epochs
        spec = root / "bench.yaml"
        spec.write_text(yaml.safe_dump(raw), encoding="utf-8")
        command = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--study", str(spec), "--storage", str(root / "studies")]
        # A first run generates the cohort and warms the page cache, so the measured run does not pay for it.
        subprocess.run(command[:-1] + [str(root / "warm")], check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - started

        study = root / "studies" / "bench"
        results = pd.read_parquet(study / "results.parquet")
        phases = pd.DataFrame([_phases(run) for run in sorted((study / "trials").glob("*/*/repetition.json"))])
    training = float(results["epoch_time_s"].sum())
    repetition_wall = float(phases["total"].sum())
    driver = wall - repetition_wall
    per = phases.mean()
    print(f"{args.trials} trials x 1 repetition x {args.epochs} epochs, one at a time")
    print(f"  wall                       {wall:7.1f} s")
    print(f"  training (epochs)          {training:7.1f} s")
    print(f"  driver                     {driver:7.1f} s  (Ray start, validation, label banks, Tune, report and model export)")
    print(f"  per repetition             {per['total']:7.1f} s, of which:")
    print(f"    Ray Train launch         {per['launch']:7.1f} s  (controller, worker group, process group: until our worker code runs)")
    print(f"    worker setup             {per['setup']:7.1f} s  (cohort, label bank, model, engine, until epoch 0 starts)")
    print(f"    epochs (train + eval)    {per['epochs']:7.1f} s")
    print(f"    checkpoint + report      {per['reports']:7.1f} s  (between epochs)")
    print(f"    last report + teardown   {per['teardown']:7.1f} s")
    overhead = (wall - training) / training
    print(f"  overhead / training        {overhead:7.2f}")
    print(f"BENCH sweep wall_s={wall:.1f} training_s={training:.1f} repetition_s={per['total']:.1f} launch_s={per['launch']:.1f} "
          f"setup_s={per['setup']:.1f} reports_s={per['reports']:.1f} teardown_s={per['teardown']:.1f} driver_s={driver:.1f} overhead_ratio={overhead:.2f}")


def _phases(marker: Path) -> dict[str, float]:
    """Where one repetition's wall time went, from its marker, worker record and epoch rows."""
    repetition = json.loads(marker.read_text())
    worker = json.loads((marker.parent / "workers" / "rank0.json").read_text())
    epochs = pd.read_parquet(marker.parent / "metrics.parquet").sort_values("epoch")
    starts, lengths = epochs["epoch_started_at"].to_numpy(), epochs["epoch_time_s"].to_numpy()
    ends = starts + lengths
    end = repetition["started"] + repetition["seconds"]
    return {
        "total": repetition["seconds"],
        "launch": worker["started"] - repetition["started"],
        "setup": starts[0] - worker["started"],
        "epochs": float(lengths.sum()),
        "reports": float((starts[1:] - ends[:-1]).sum()),
        "teardown": end - ends[-1],
    }

if __name__ == "__main__":
    main()
