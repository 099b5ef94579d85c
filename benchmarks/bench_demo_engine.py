"""The demo study under DeepSpeed and under torch DDP, side by side: does the mission's engine cost more?

Runs the shipped demo study (``sweeps/studies/demo.yaml``, the same cohort, trials and search)
twice through ``sweeps/ablation.py``, once with each ``engine`` setting, one after the other on
an otherwise idle machine, and prints each one's wall time, the sum of its epochs, its mean
epoch time and the ratio DeepSpeed / DDP, then a ``BENCH demo_engine`` line. A first run with
one trial generates the cohort and compiles DeepSpeed's ops, so neither measured run pays for it.

    .venv/bin/python benchmarks/bench_demo_engine.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
ENGINES = {
    "deepspeed": {"backend": "deepspeed", "zero_stage": 2, "precision": "fp32"},
    "ddp": {"backend": "ddp", "precision": "fp32"},
}


def _spec(root: Path, name: str, engine: dict[str, Any], **edits: Any) -> Path:
    raw = yaml.safe_load((REPO / "sweeps" / "studies" / "demo.yaml").read_text(encoding="utf-8"))
    raw["cohort"] = str(root / "cohort")
    raw["name"] = name
    raw["train"]["engine"] = engine
    raw |= edits
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _run(spec: Path, storage: Path) -> float:
    started = time.monotonic()
    command = [sys.executable, str(REPO / "sweeps" / "ablation.py"), "--study", str(spec), "--storage", str(storage)]
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-engine-") as directory:
        root = Path(directory)
        warm = {"search": {"trials_per_cell": 1}, "factors": {"modalities": [["wsi"]]}}
        _run(_spec(root, "warm", ENGINES["deepspeed"], **warm), root / "warm")
        for name, engine in ENGINES.items():
            wall = _run(_spec(root, name, engine), root / name)
            results = pd.read_parquet(root / name / name / "results.parquet")
            rows.append({"engine": name, "wall_s": wall, "epochs": len(results), "epoch_s_sum": results["epoch_time_s"].sum(),
                         "epoch_s_mean": results["epoch_time_s"].mean()})
    table = pd.DataFrame(rows).set_index("engine")
    print(table.round(2).to_string())
    ratio = table.loc["deepspeed", "wall_s"] / table.loc["ddp", "wall_s"]
    epoch_ratio = table.loc["deepspeed", "epoch_s_mean"] / table.loc["ddp", "epoch_s_mean"]
    print(f"DeepSpeed / DDP: wall {ratio:.2f}x, mean epoch {epoch_ratio:.2f}x")
    print(
        f"BENCH demo_engine deepspeed_s={table.loc['deepspeed', 'wall_s']:.1f} ddp_s={table.loc['ddp', 'wall_s']:.1f} "
        f"ratio={ratio:.3f} epoch_ratio={epoch_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
