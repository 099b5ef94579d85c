"""The study driver alone as a study grows: its CPU time per trial, flush times, memory and output.

The real driver (``sweeps.study.run_study``: spec, plan, label banks, per-cell Optuna searcher,
ASHA, results writer, reaper, storage guard, stall watchdog, progress tracker, trial table, and
the analysis's reading of the results and its per-cell tables at the end) runs a 4-cell study of 10 repetitions (2 folds x 5 seeds) x 15
epochs per trial, with the training replaced by ``instant_trial``: a trainable that reports
each repetition's epochs at once, with made-up metrics shaped like a real run's (4 cancer
types, ~50 columns) and a score that depends on the trial's learning rate, so that ASHA stops
some trials and Optuna learns. The stub's trials share processes (``reuse_actors``): a real
trial's process imports torch and Ray Train, seconds of CPU that on 2 cores would make 2,000
trials take hours; the same study at the smallest size with a process per trial, as real
trials run, is measured too, side by side. Each size runs in a fresh process (its own embedded
Ray), so peak RSS and CPU time are that size's alone. Prints per size the driver's CPU-seconds
per trial (all of it, and inside Tune's loop, where the per-trial work is),
the median and worst results flush (less the garbage collector's pauses inside it, counted on
their own: the number of full collections and the longest) and the worst flush's CPU time,
peak RSS, the study folder's size and the analysis time
(the stub writes no checkpoints or predictions, so the report's model selection is left out),
then ``BENCH driver ...`` with the growth of per-trial cost from the smallest to the largest.

    python benchmarks/bench_driver.py [--trials 100 500 2000] [--concurrent 8]   # ~30 min on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ray import tune

REPO = Path(__file__).resolve().parents[1]
CANCERS = ("BRCA", "NSCLC", "RCC", "GBMLGG")
METRICS = ("loss", "c_index", "balanced_accuracy", "macro_auc")
EPOCHS = 15


def instant_trial(config: dict[str, Any], plan: Any, channel: Any) -> None:
    """What ``sweeps.trial.StudyTrial`` reports for one trial, at once: per epoch, per repetition, the end."""
    from modaltune.atomic import write_json_atomic
    from modaltune.sweeps.trial import TRIAL_FILE, repetition_report
    from modaltune.sweeps.trial_rows import CELL_KEY, DONE_KEY, KIND_KEY, cv_key

    trial_id = tune.get_context().get_trial_id()
    write_json_atomic(plan.trial_dir(trial_id) / TRIAL_FILE, {"trial_id": trial_id, "config": config, "started": time.time()})
    rng = np.random.default_rng(abs(hash(trial_id)) % 2**32)
    quality = 0.7 - 0.05 * abs(math.log10(config["optim.lr"]) + 2.4) + 0.02 * int(config[CELL_KEY][1:])
    finished: list[dict[str, float]] = []
    for repetition in plan.repetitions:
        for epoch in range(EPOCHS):
            scores = {m: float(np.clip(quality * (1 - 0.5 ** (epoch + 1)) + rng.normal(0, 0.02), 0, 1)) for m in plan.metric_names}
            row: dict[str, Any] = {"epoch": epoch, "run": repetition.index, "run_finished": epoch == EPOCHS - 1}
            row |= {f"val_{m}": scores.get(m, float(rng.random())) for m in METRICS}
            row |= {f"val_{m}_{c}": float(rng.random()) for m in METRICS for c in CANCERS}
            row |= {"train_loss": float(rng.random()), "lr": config["optim.lr"], "grad_norm": 1.0, "epoch_time_s": 0.0, "engine": "stub"}
            estimate = {cv_key(m): float(np.mean([s[m] for s in finished] + [scores[m]])) for m in plan.metric_names}
            tags = {"fold": repetition.fold, "seed": repetition.seed, "repetition": repetition.index}
            tune.report({**row, **tags, KIND_KEY: "epoch", DONE_KEY: len(finished), **estimate})
        finished.append(scores)
        if len(finished) < len(plan.repetitions):
            tune.report(repetition_report(plan.metric_names, repetition, finished))
    tune.report(repetition_report(plan.metric_names, plan.repetitions[-1], finished))


def write_spec(root: Path, trials: int, concurrent: int) -> Path:
    raw = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text(encoding="utf-8"))
    raw |= {
        "name": f"driver{trials}", "cohort": str(root / "cohort"), "folds": 2, "seeds": [0, 1, 2, 3, 4],
        "factors": {"adapter_depth": [1, 0], "modalities": [["wsi"], ["wsi", "rna"]]}, "design": "crossed",
        "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 3}, "max_concurrent": concurrent,
        "min_free_mb": 1,
    }
    raw["train"]["optim"]["epochs"] = EPOCHS
    raw["train"]["text_encoder"] = "onehot"
    raw["search"] |= {"trials_per_cell": trials // 4, "sampler": "tpe"}
    raw["search"]["params"] = {"optim.lr": {"type": "loguniform", "low": 0.0005, "high": 0.05}}
    path = root / f"driver{trials}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def measure(trials: int, concurrent: int, reuse_actors: bool, root: Path) -> dict[str, float]:
    """One size, in this process: the study, then its report."""
    import logging

    from ray.tune import Tuner

    from modaltune.analysis.cost import cost_table
    from modaltune.analysis.summary import cell_summary, load_study
    from modaltune.sweeps.results import ResultsWriter
    from modaltune.sweeps.spec import load_study_spec
    from modaltune.sweeps.study import run_study

    logging.basicConfig(level=logging.WARNING)
    pauses = _GcPauses()
    flushes: list[float] = []
    flush_cpu: list[float] = []
    original = ResultsWriter.flush

    def timed_flush(self: ResultsWriter, trials: list | None = None) -> None:
        # Less the garbage collector's pauses that fell inside it: those stop the whole driver
        # wherever they land, and are counted on their own. Its CPU time too: on 2 cores shared
        # with the trials' processes, its wall time also holds the time it waited for a core.
        started, started_cpu, paused = time.perf_counter(), time.thread_time(), pauses.total
        original(self, trials)
        flushes.append(time.perf_counter() - started - (pauses.total - paused))
        flush_cpu.append(time.thread_time() - started_cpu - (pauses.total - paused))

    ResultsWriter.flush = timed_flush  # type: ignore[method-assign]
    tune_cpu: list[float] = []
    fit = Tuner.fit

    def timed_fit(self: Tuner) -> Any:
        started = time.process_time()
        try:
            return fit(self)
        finally:
            tune_cpu.append(time.process_time() - started)

    Tuner.fit = timed_fit  # type: ignore[method-assign]
    spec = load_study_spec(write_spec(root, trials, concurrent))
    cpu, wall = time.process_time(), time.perf_counter()
    outcome = run_study(spec, root / "studies", trainable=instant_trial, reuse_actors=reuse_actors)  # type: ignore[arg-type]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    analysis = time.perf_counter()
    spec_run, results, trials_table = load_study(outcome.study_dir)
    cell_summary(spec_run, results, trials_table), cost_table(spec_run, results, trials_table)
    analysis = time.perf_counter() - analysis
    size = sum(p.stat().st_size for p in outcome.study_dir.rglob("*") if p.is_file())
    return {
        "trials": outcome.trials, "errors": outcome.errors, "cpu_s": cpu, "wall_s": wall, "cpu_ms_per_trial": 1000 * cpu / trials,
        "tune_cpu_ms_per_trial": 1000 * sum(tune_cpu) / trials,
        "flush_median_ms": 1000 * statistics.median(flushes), "flush_max_ms": 1000 * max(flushes),
        "flush_cpu_max_ms": 1000 * max(flush_cpu), "flushes": len(flushes),
        "gc_full_pauses": len(pauses.full), "gc_full_max_ms": 1000 * max(pauses.full, default=0.0),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "written_mb": size / 1e6, "analysis_s": analysis,
    }


class _GcPauses:
    """Wall time of this process's garbage collections: all of it, and each full (generation 2) one."""

    def __init__(self) -> None:
        self.total = 0.0
        self.full: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total += pause
        if info["generation"] == 2:
            self.full.append(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, JSON on stdout's last line
    parser.add_argument("--process-per-trial", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="bench-driver-") as directory:
            print(json.dumps(measure(args.one, args.concurrent, not args.process_per_trial, Path(directory))))
        return
    runs = [(trials, False) for trials in args.trials] + [(args.trials[0], True)]
    figures = {}
    for trials, process_per_trial in runs:
        figures[trials, process_per_trial] = _child(trials, args.concurrent, process_per_trial)
        label = f"{trials:>5} trials{', a process per trial' if process_per_trial else ''}: "
        print(label + ", ".join(f"{k}={v:.4g}" for k, v in figures[trials, process_per_trial].items() if k != "trials"), flush=True)
    first, last = figures[args.trials[0], False], figures[args.trials[-1], False]
    growth = last["tune_cpu_ms_per_trial"] / first["tune_cpu_ms_per_trial"]
    own_process = figures[args.trials[0], True]
    rss_growth = (last["peak_rss_mb"] - first["peak_rss_mb"]) / max(args.trials[-1] - args.trials[0], 1)
    print(
        f"BENCH driver trials={args.trials[0]}..{args.trials[-1]} tune_cpu_ms_per_trial_first={first['tune_cpu_ms_per_trial']:.1f} "
        f"tune_cpu_ms_per_trial_last={last['tune_cpu_ms_per_trial']:.1f} growth={growth:.2f} "
        f"process_per_trial_ms={own_process['tune_cpu_ms_per_trial']:.1f} "
        f"flush_max_ms={max(f['flush_max_ms'] for f in figures.values()):.0f} "
        f"flush_cpu_max_ms={max(f['flush_cpu_max_ms'] for f in figures.values()):.0f} "
        f"gc_full_max_ms={max(f['gc_full_max_ms'] for f in figures.values()):.0f} rss_mb_first={first['peak_rss_mb']:.0f} "
        f"rss_mb_last={last['peak_rss_mb']:.0f} rss_kb_per_trial={1024 * rss_growth:.0f}"
    )


def _child(trials: int, concurrent: int, process_per_trial: bool) -> dict[str, float]:
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, __file__, "--one", str(trials), "--concurrent", str(concurrent)]
    command += ["--process-per-trial"] if process_per_trial else []
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{trials} trials failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
