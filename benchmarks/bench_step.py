"""Training step time with and without the frozen-prefix cache, bucketed evaluation, and attention memory at 20k tiles.

Run: ``.venv/bin/python benchmarks/bench_step.py [--tiles 1000 --slides 12 --dim 256]``.

1. Step time (slides/s) of the real training loop (supervised objective, AdamW, one case per
   step) on a synthetic cohort, for several adapter layouts of a 12-layer GigaPath-shaped
   encoder (narrowed to ``--dim`` so it runs on a CPU), with the cache off and warm. With the
   first adapter at layer p of 12 the cache skips the frozen forward of p layers.
2. Evaluation throughput (slides/s) with cases capped at ``--eval-tiles`` tiles (and at 32 tiles
   with a width-64 encoder, the size of CPU sweeps), one case per forward against bucketed:
   cases of equal tile count run together up to ``evaluation_batch_tiles`` tiles a batch (the
   paper's 3-block adapter, no prefix cache).
3. The distill objective's three task passes (general, diagnosis, survival) per case: one
   forward per task token, as the reference code runs them, against one forward whose rows are
   the case's tasks (the frozen prefix shared), in slides/s of evaluation (3-block adapter).
4. Peak memory of one attention layer over one slide of ``--long-tiles`` tiles: Prov-GigaPath's
   dilated attention (its segment lengths and ratios) against dense attention that materialises
   the full attention matrix, each in a fresh process (peak RSS growth).
Prints the figures, the ratios measured side by side, and one ``BENCH step ...`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from modaltune.data import Cohort, SynthConfig, generate_cohort, modality_inputs
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig
from modaltune.models.dilated_attention import dilated_attention, longnet_segment_lengths
from modaltune.objectives import build_objective
from modaltune.text import TASKS, LabelBank, build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.config import TrainConfig
from modaltune.train.loop import TorchEngine, TrainModule, collect_case_outputs, train_epoch
from modaltune.train.prefix_cache import PrefixCache, with_prefixes

LAYOUTS = {"no adapter (linear probe)": 0, "1 block (layers 8-11)": 1, "2 blocks (layers 4-11)": 2, "3 blocks (paper, layers 0-11)": 3}


def _module(cohort: Cohort, dim: int, adapter_depth: int, objective: str = "supervised") -> tuple[TrainModule, LabelBank]:
    """The ModalTune model (supervised unless said) on a 12-layer GigaPath-shaped encoder of width ``dim``, and its label bank."""
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), cohort.case_ids, out_dim=32)
    torch.manual_seed(0)
    config = ModalTuneConfig.tiny(
        encoder=SlideEncoderConfig.gigapath(
            in_dim=cohort.manifest.feature_dim, dim=dim, heads=8, segment_lengths=(256, 512, 1024, 2048, 4096)
        ),
        modalities=("wsi", "rna"), modality_inputs=modality_inputs(cohort, ["rna", "clinical"]),
        adapter_depth=adapter_depth, out_dim=32,
    )
    return TrainModule(ModalTuneModel(config), build_objective(objective, bank)), bank


def _evaluation_rate(cohort: Cohort, dim: int, max_tiles: int, batch_tiles: int) -> float:
    """Slides/s of evaluating every case (second of two passes), ``batch_tiles`` 0 = one case per forward."""
    module, bank = _module(cohort, dim, adapter_depth=3)
    batcher = CaseBatcher(cohort, bank, cohort.case_ids, modalities=("rna", "clinical"), max_tiles=max_tiles)
    batches = seeded_batches(batcher, 0, "evaluation", torch.device("cpu"), torch.float32)
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        collect_case_outputs(module, batches, cohort.case_ids, batch_tiles=batch_tiles)
        seconds.append(time.perf_counter() - started)
    return len(cohort.case_ids) / seconds[-1]


def _task_pass_rates(cohort: Cohort, dim: int, max_tiles: int) -> tuple[float, float]:
    """Slides/s of the distill objective's task embeddings: one forward per task, and batched."""
    module, bank = _module(cohort, dim, adapter_depth=3, objective="distill")
    model, objective = module.model.eval(), module.objective
    batcher = CaseBatcher(cohort, bank, cohort.case_ids, modalities=("rna", "clinical"), max_tiles=max_tiles)
    batches = [seeded_batches(batcher, 0, "evaluation", torch.device("cpu"), torch.float32)(case) for case in cohort.case_ids]
    tasks = [torch.tensor([TASKS.index(task)]) for task in objective.tasks]

    def per_task() -> None:
        for b in batches:
            for task in tasks:
                model(b.features, b.coords, task, b.modalities)

    def batched() -> None:
        for b in batches:
            objective.evaluate_cases(model, [b], with_loss=False)

    rates = []
    with torch.no_grad():
        for run in (per_task, batched):
            run()  # warm-up
            started = time.perf_counter()
            run()
            rates.append(len(batches) / (time.perf_counter() - started))
    return rates[0], rates[1]


def _step_rate(cohort: Cohort, dim: int, adapter_depth: int, cached: bool, cache_root: Path) -> float:
    """Slides/s of one training epoch over every case (after a first epoch that warms the cache)."""
    ids = cohort.case_ids
    module, bank = _module(cohort, dim, adapter_depth)
    engine = TorchEngine(module, torch.optim.AdamW(module.trainable_parameters(), lr=1e-3))
    cache = PrefixCache(cache_root / f"depth{adapter_depth}", module.model, torch.float32) if cached and module.model.prefix_depth else None
    batcher = CaseBatcher(cohort, bank, ids, modalities=("rna", "clinical"))
    module.train()
    rates = []
    for epoch in range(2):
        batches = with_prefixes(seeded_batches(batcher, 0, epoch, torch.device("cpu"), torch.float32), cache)
        started = time.perf_counter()
        train_epoch(engine, batches, ids)
        rates.append(len(ids) / (time.perf_counter() - started))
    return rates[-1]


def _attention_peak(kind: str, tiles: int, dim: int, heads: int) -> dict[str, float]:
    """Run in a child process: RSS growth (MB) and seconds of one attention layer's forward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, tiles, heads, dim // heads) for _ in range(3))
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    started = time.perf_counter()
    with torch.no_grad():
        if kind == "dilated":
            segments = longnet_segment_lengths(262144, 256, 5)  # Prov-GigaPath's five branches
            out = dilated_attention(q, k, v, segments, (1, 2, 4, 8, 16))
        else:  # the textbook softmax(QK^T / sqrt(d)) V, with the [H, L, L] matrix in memory
            qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
            out = torch.softmax(qh @ kh.transpose(-1, -2) / (dim // heads) ** 0.5, dim=-1) @ vh
    seconds = time.perf_counter() - started
    assert torch.isfinite(out).all()
    return {"peak_mb": _status_mb("VmHWM") - before, "seconds": seconds}


def _status_mb(field: str) -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _attention_in_child(kind: str, tiles: int, dim: int, heads: int) -> dict[str, float]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_step; "
        f"print(json.dumps(bench_step._attention_peak({kind!r}, {tiles}, {dim}, {heads})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=12)
    parser.add_argument("--tiles", type=int, default=1000, help="tiles per slide in the step-time part")
    parser.add_argument("--dim", type=int, default=256, help="encoder width (GigaPath: 768)")
    parser.add_argument("--eval-slides", type=int, default=64)
    parser.add_argument("--eval-tiles", type=int, default=256, help="tiles per case in the evaluation part (every case capped here)")
    parser.add_argument("--long-tiles", type=int, default=20000, help="tiles of the one slide in the memory part")
    parser.add_argument("--attention-dim", type=int, default=128)
    parser.add_argument("--attention-heads", type=int, default=2)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # "randomly initialised weights", once per model built
    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig(cohorts=("NSCLC",), slides_per_cohort=args.slides, feature_dim=768, min_tiles=args.tiles, max_tiles=args.tiles,
                            n_genes=60, n_pathways=6, n_folds=2, seed=0)
        cohort = Cohort(generate_cohort(Path(tmp) / "cohort", synth).root)
        print(
            f"step time: {len(cohort.case_ids)} cases x {args.tiles} tiles, 12-layer encoder of width {args.dim}, "
            f"CPU ({torch.get_num_threads()} threads)"
        )
        print(f"{'adapter layout':34} {'prefix':>6} {'uncached':>10} {'cached':>10} {'speed-up':>9}")
        speedups = {}
        for name, depth in LAYOUTS.items():
            plain = _step_rate(cohort, args.dim, depth, False, Path(tmp))
            prefix = 12 - 4 * depth
            if prefix == 0:
                print(f"{name:34} {prefix:>3}/12 {plain:>7.2f}/s {'(no frozen prefix to cache)':>30}")
                continue
            cached = _step_rate(cohort, args.dim, depth, True, Path(tmp))
            speedups[depth] = cached / plain
            print(f"{name:34} {prefix:>3}/12 {plain:>7.2f}/s {cached:>7.2f}/s {cached / plain:>8.2f}x")
        budget = TrainConfig().evaluation_batch_tiles
        eval_speedups = {}
        # The mid-size model of the step-time part, and the small one of CPU sweeps and tests.
        for label, tiles, dim in (("mid", args.eval_tiles, args.dim), ("small", 32, 64)):
            eval_synth = SynthConfig(cohorts=("NSCLC",), slides_per_cohort=args.eval_slides, feature_dim=768, min_tiles=tiles + 1,
                                     max_tiles=2 * tiles, n_genes=60, n_pathways=6, n_folds=2, seed=1)
            eval_cohort = Cohort(generate_cohort(Path(tmp) / f"eval-{label}", eval_synth).root)
            one = _evaluation_rate(eval_cohort, dim, tiles, 0)
            bucketed = _evaluation_rate(eval_cohort, dim, tiles, budget)
            eval_speedups[label] = bucketed / one
            print(f"\nevaluation: {len(eval_cohort.case_ids)} cases capped at {tiles} tiles, 3-block adapter, width {dim}")
            print(f"one case per forward {one:7.2f}/s   bucketed ({budget} tiles a batch) {bucketed:7.2f}/s   {bucketed / one:.2f}x")
            if label == "mid":
                per_task, batched = _task_pass_rates(eval_cohort, dim, tiles)
                task_speedup = batched / per_task
                print(
                    f"distill task passes: one forward per task {per_task:7.2f}/s   "
                    f"the case's tasks as one batch {batched:7.2f}/s   {task_speedup:.2f}x"
                )
    print(
        f"\nattention memory: one layer, one slide of {args.long_tiles} tiles, width {args.attention_dim}, "
        f"{args.attention_heads} heads, fp32"
    )
    memory = {kind: _attention_in_child(kind, args.long_tiles, args.attention_dim, args.attention_heads) for kind in ("dilated", "dense")}
    for kind, figures in memory.items():
        print(f"{kind:8} peak +{figures['peak_mb']:8.0f} MB  {figures['seconds']:6.2f} s")
    ratio = memory["dense"]["peak_mb"] / max(memory["dilated"]["peak_mb"], 1.0)
    print(f"dense / dilated peak memory: {ratio:.1f}x")
    print(
        "BENCH step "
        + " ".join(f"cache_speedup_depth{d}={s:.2f}" for d, s in speedups.items())
        + "".join(f" bucketed_eval_speedup_{label}={value:.2f}" for label, value in eval_speedups.items())
        + f" task_batching_speedup={task_speedup:.2f}"
        + f" dense_vs_dilated_memory={ratio:.1f}"
        + f" dilated_peak_mb={memory['dilated']['peak_mb']:.0f} dense_peak_mb={memory['dense']['peak_mb']:.0f}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
