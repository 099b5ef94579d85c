#!/usr/bin/env bash
# GPU benchmark for a single-GPU machine, self-contained, about 5 minutes: sets up a venv with
# the CUDA build of our torch pin if none is active, then runs benchmarks/bench_gpu.py
# (DeepSpeed bf16 ZeRO-2 step time, tiles/s and model FLOP utilisation of the GigaPath-size
# encoder + adapters on 10k-tile slides, against the GPU's measured bf16 matmul rate).
# Usage: bash benchmarks/bench_gpu.sh [bench_gpu.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 1; }
VENV="${VENV:-.venv-gpu}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0   # the CUDA build from PyPI on a GPU machine
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -e .
fi
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/modaltune/torch_extensions}"
timeout 600 "$VENV/bin/python" benchmarks/bench_gpu.py "$@"
