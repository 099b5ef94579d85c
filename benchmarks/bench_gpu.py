"""DeepSpeed bf16 ZeRO-2 training steps of the GigaPath-size encoder + adapters on 10k-tile slides.

Run on a single-GPU machine through ``benchmarks/bench_gpu.sh`` (which sets up the venv), or
directly: ``python benchmarks/bench_gpu.py [--tiles 10000 --steps 20]``. ``--device cpu`` with a
small ``--tiles`` / ``--dim`` smoke-tests the script itself without a GPU.

Measures, in one run:
1. the device's dense bf16 matmul rate (8192^3 GEMMs): the peak the utilisation is against;
2. the real training loop (``train_epoch`` through a DeepSpeed ZeRO-2 bf16 engine, supervised
   objective, one case per step) per adapter layout: step time and tiles (tokens) per second;
3. model FLOPs per step counted by torch's ``FlopCounterMode`` on one step (forward + backward,
   no hand-written formulas), hence model FLOP utilisation = FLOPs/step / step time / peak.
Prints the figures and one ``BENCH gpu ...`` line.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from modaltune.data import Cohort, SynthConfig, generate_cohort
from modaltune.models import ModalTuneModel
from modaltune.objectives import build_objective
from modaltune.text import build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.config import load_train_config
from modaltune.train.engines import build_engine
from modaltune.train.loop import TrainModule, train_epoch

LAYOUTS = {"paper, 3 blocks (layers 0-11)": 3, "1 block (layers 8-11)": 1}


def matmul_peak_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _process_group(device: torch.device) -> None:
    """A one-process group, as Ray Train gives each worker (NCCL on GPU, gloo on CPU)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update({
        "LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def _run_layout(cohort: Cohort, device: torch.device, depth: int, args: argparse.Namespace) -> dict[str, float]:
    overrides = [
        "objective=supervised", f"model.adapter_depth={depth}", "model.encoder=gigapath", f"max_tiles={args.tiles}",
        "engine.backend=deepspeed", "engine.zero_stage=2", "engine.precision=bf16",
        f"scaling.use_gpu={str(device.type == 'cuda').lower()}", "optim.epochs=2",
    ]
    if args.dim != 768:
        overrides.append(f"model.encoder_overrides={{dim: {args.dim}, heads: {max(1, args.dim // 48)}}}")
    config = load_train_config(None, overrides)
    ids = cohort.case_ids
    bank = build_label_bank(cohort, build_text_encoder("onehot", cohort.labels), ids, out_dim=config.model.out_dim)
    torch.manual_seed(0)
    model = ModalTuneModel(config.model.for_cohort(cohort))
    module = TrainModule(model, build_objective("supervised", bank)).to(device)
    built = build_engine(module, config, optimizer_steps_per_epoch=args.steps)
    batcher = CaseBatcher(cohort, bank, ids, modalities=("rna", "clinical"), max_tiles=args.tiles)
    batches = seeded_batches(batcher, 0, 0, device, built.dtype)
    steps = [ids[i % len(ids)] for i in range(args.steps)]
    train_epoch(built.engine, batches, steps[: args.warmup])  # compile kernels, allocator warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_epoch(built.engine, batches, steps)
    _sync(device)
    step_s = (time.perf_counter() - started) / len(steps)
    with FlopCounterMode(display=False) as counter:
        train_epoch(built.engine, batches, steps[:1])
    tiles = batches(steps[0]).features.shape[1]
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": step_s, "tiles_per_s": tiles / step_s, "flops": float(counter.get_total_flops()), "memory_gib": memory,
            "trainable": sum(p.numel() for p in module.trainable_parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiles", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=768, help="encoder width (GigaPath: 768; smaller only for a CPU smoke run)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--slides", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(0)
        print(f"device: {torch.cuda.get_device_name(0)}")
    _process_group(device)
    peak = matmul_peak_tflops(device, size=8192 if device.type == "cuda" else 1024, repeats=20 if device.type == "cuda" else 3)
    print(f"measured dense bf16 matmul rate: {peak:.1f} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        synth = SynthConfig(cohorts=("NSCLC",), slides_per_cohort=args.slides, feature_dim=1536, min_tiles=args.tiles, max_tiles=args.tiles,
                            n_genes=60, n_pathways=6, n_folds=2, seed=0)
        cohort = Cohort(generate_cohort(Path(tmp) / "cohort", synth).root)
        results = {}
        for name, depth in LAYOUTS.items():
            figures = _run_layout(cohort, device, depth, args)
            mfu = figures["flops"] / figures["step_s"] / (peak * 1e12)
            results[depth] = figures | {"mfu": mfu}
            print(f"{name:32} {figures['step_s'] * 1000:8.1f} ms/step  {figures['tiles_per_s']:9.0f} tiles/s  "
                  f"{figures['flops'] / 1e12:6.2f} TFLOP/step  MFU {mfu:6.1%}  peak {figures['memory_gib']:.1f} GiB  "
                  f"{figures['trainable'] / 1e6:.1f}M trainable")
    dist.destroy_process_group()
    line = " ".join(
        f"depth{d}_step_ms={r['step_s'] * 1000:.1f} depth{d}_tiles_per_s={r['tiles_per_s']:.0f} depth{d}_mfu={r['mfu']:.3f}"
        for d, r in results.items()
    )
    print(f"BENCH gpu peak_tflops={peak:.1f} {line}")


if __name__ == "__main__":
    main()
