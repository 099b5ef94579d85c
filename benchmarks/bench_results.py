"""What a results flush costs as a study grows: the append-only table against a whole rewrite.

Rows shaped like a study's (4 cancer types, ~50 columns), 150 per trial (10 repetitions x 15
epochs), one flush per trial as at every trial end. For the append-only table
(sweeps/result_parts.py) every flush is timed; the whole-table rewrite it replaced is timed at
the same table sizes on a sample of flushes. Prints per size the median and worst flush and
``BENCH results ...`` with the growth of the median flush from the first to the last size.

    python benchmarks/bench_results.py [--trials 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from modaltune.atomic import write_parquet_atomic
from modaltune.sweeps.result_parts import RESULT_KEY, results_table

CANCERS = ("BRCA", "NSCLC", "RCC", "GBMLGG")
METRICS = ("loss", "c_index", "balanced_accuracy", "macro_auc")
ROWS_PER_TRIAL = 10 * 15


def trial_rows(trial: int, rng: np.random.Generator) -> list[dict]:
    rows = []
    for repetition in range(10):
        for epoch in range(15):
            row: dict = {"study": "bench", "trial_id": f"t{trial:05d}", "cell": f"c{trial % 12:03d}", "fold": repetition % 5,
                         "seed": repetition // 5, "epoch": epoch, "repetition": repetition, "adapter_depth": trial % 4, "optim.lr": 1e-4}
            row |= {f"val_{m}": float(rng.random()) for m in METRICS}
            row |= {f"val_{m}_{c}": float(rng.random()) for m in METRICS for c in CANCERS}
            row |= {"train_loss": float(rng.random()), "epoch_time_s": 1.0, "time_this_iter_s": 1.0, "time_total_s": 10.0}
            row |= {"node_ip": "10.0.0.1"}
            row |= {f"cv_{m}": float(rng.random()) for m in METRICS}
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args()
    sizes = [s for s in (100, 500, 2000, 5000) if s <= args.trials]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        table = results_table(Path(tmp) / "results.parquet")
        whole: list[dict] = []
        append_s: list[float] = []
        report = {}
        for trial in range(args.trials):
            rows = trial_rows(trial, rng)
            whole += rows
            start = time.perf_counter()
            table.append(rows)
            append_s.append(time.perf_counter() - start)
            done = trial + 1
            if done in sizes:
                window = append_s[-min(100, done):]
                start = time.perf_counter()
                frame = pd.DataFrame(whole).sort_values(list(RESULT_KEY), kind="stable")
                write_parquet_atomic(Path(tmp) / "rewrite.parquet", pa.Table.from_pandas(frame, preserve_index=False))
                rewrite = time.perf_counter() - start
                parts = len(table.parts())
                report[done] = (statistics.median(window), max(window), rewrite)
                print(f"{done:>5} trials ({done * ROWS_PER_TRIAL:>7} rows): append median {1000 * report[done][0]:.1f} ms, "
                      f"worst of last 100 {1000 * report[done][1]:.1f} ms, {parts} part files; "
                      f"whole rewrite {1000 * rewrite:.0f} ms", flush=True)
        start = time.perf_counter()
        table.compact()
        compact = time.perf_counter() - start
    first, last = sizes[0], sizes[-1]
    growth = report[last][0] / report[first][0]
    print(f"compaction at the end: {compact:.2f} s for {args.trials * ROWS_PER_TRIAL} rows")
    print(f"BENCH results trials={last} rows={last * ROWS_PER_TRIAL} append_median_ms_first={1000 * report[first][0]:.1f} "
          f"append_median_ms_last={1000 * report[last][0]:.1f} append_growth={growth:.2f} worst_append_ms={1000 * max(append_s):.0f} "
          f"rewrite_ms_last={1000 * report[last][2]:.0f} rewrite_over_append={report[last][2] / report[last][0]:.0f}x "
          f"compact_s={compact:.2f}")


if __name__ == "__main__":
    main()
