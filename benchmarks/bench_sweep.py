"""Sweep overhead: a study of N short trials, its wall time against the trials' own training time.

Runs ``sweeps/ablation.py`` on the ``tiny`` study (one cell, N trials, one fold, trials one at a
time so the sums add up) and splits the wall time into: training (sum of epoch times), each
repetition's Ray Train start-up / checkpoint / teardown (repetition wall minus its epochs), and
the driver (Ray start, validation, label banks, Tune) — the rest. Prints a ``BENCH sweep`` line.

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
        repetitions = [json.loads(p.read_text()) for p in (study / "trials").glob("*/*/repetition.json")]
    training = float(results["epoch_time_s"].sum())
    repetition_wall = sum(r["seconds"] for r in repetitions)
    startup = (repetition_wall - training) / len(repetitions)
    driver = wall - repetition_wall
    print(f"{args.trials} trials x 1 repetition x {args.epochs} epochs, one at a time")
    print(f"  wall                     {wall:7.1f} s")
    print(f"  training (epochs)        {training:7.1f} s")
    print(f"  per repetition start-up  {startup:7.1f} s  (Ray Train run start, checkpoints, teardown)")
    print(f"  driver                   {driver:7.1f} s  (Ray start, validation, label banks, Tune)")
    print(f"  overhead / training      {(wall - training) / training:7.2f}")
    print(f"BENCH sweep wall_s={wall:.1f} training_s={training:.1f} startup_per_repetition_s={startup:.1f} "
          f"driver_s={driver:.1f} overhead_ratio={(wall - training) / training:.2f}")


if __name__ == "__main__":
    main()
