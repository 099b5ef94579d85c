"""Reading one slide's tile features: our memory-mapped Arrow IPC vs CLAM/Trident .h5 vs torch .pt.

Run: ``.venv/bin/python benchmarks/bench_io.py [--slides 20 --tiles 5000 --dim 1536]``.
Writes the same slides in each format, then times two access patterns with a warm page cache:
every tile as a float32 array (a full pass, as an uncapped training step or feature caching
does) and a random subset of tiles (as a training step with a tile cap does). A raw ``numpy.memmap`` of the same bytes is the
floor. Prints slides/s per format, the ratios, and one ``BENCH io ...`` line.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from modaltune.data.features import read_slide_features, write_slide_features


def _time_per_slide(read: Callable[[int], float], n_slides: int, repeats: int) -> float:
    for i in range(n_slides):  # warm the page cache
        read(i)
    started = time.perf_counter()
    for _ in range(repeats):
        for i in range(n_slides):
            read(i)
    return (time.perf_counter() - started) / (repeats * n_slides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--tiles", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--sample", type=int, default=1000, help="tiles read per slide in the sampled pattern")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.slides):
            features = rng.standard_normal((args.tiles, args.dim)).astype(np.float16)
            coords = rng.integers(0, 200_000, (args.tiles, 2)).astype(np.int32)
            write_slide_features(root / f"{i}.arrow", features, coords, slide_id=str(i))
            with h5py.File(root / f"{i}.h5", "w") as handle:  # CLAM/Trident write float32 features
                handle["features"] = features.astype(np.float32)
                handle["coords"] = coords.astype(np.int64)
            torch.save({"features": torch.from_numpy(features), "coords": torch.from_numpy(coords)}, root / f"{i}.pt")
            features.tofile(root / f"{i}.raw")
        picks = [np.sort(rng.choice(args.tiles, args.sample, replace=False)) for _ in range(args.slides)]

        def full(fmt: str) -> Callable[[int], float]:
            """Every tile as float32, converted as the training path does (torch, vectorised)."""

            def read(i: int) -> float:
                if fmt == "h5":  # stored as float32 already
                    with h5py.File(root / f"{i}.h5", "r") as handle:
                        return float(torch.from_numpy(handle["features"][()])[-1, -1])
                if fmt == "pt":
                    half = torch.load(root / f"{i}.pt", weights_only=True)["features"]
                elif fmt == "arrow":
                    half = torch.from_numpy(np.array(read_slide_features(root / f"{i}.arrow").features))
                else:
                    raw = np.memmap(root / f"{i}.raw", dtype=np.float16, mode="r", shape=(args.tiles, args.dim))
                    half = torch.from_numpy(np.array(raw))
                return float(half.float()[-1, -1])

            return read

        def sampled(fmt: str) -> Callable[[int], float]:
            def read(i: int) -> float:
                rows = picks[i]
                if fmt == "arrow":
                    x = read_slide_features(root / f"{i}.arrow").features[rows]
                elif fmt == "h5":
                    with h5py.File(root / f"{i}.h5", "r") as handle:
                        x = handle["features"][rows]
                elif fmt == "pt":
                    x = torch.load(root / f"{i}.pt", weights_only=True)["features"].numpy()[rows]
                else:
                    x = np.memmap(root / f"{i}.raw", dtype=np.float16, mode="r", shape=(args.tiles, args.dim))[rows]
                return float(np.asarray(x, dtype=np.float32).sum())

            return read

        results = {}
        for pattern, make in (("full", full), ("sampled", sampled)):
            for fmt in ("arrow", "h5", "pt", "memmap"):
                results[(pattern, fmt)] = _time_per_slide(make(fmt), args.slides, args.repeats)
    print(f"{args.slides} slides of {args.tiles} x {args.dim} float16 tiles; sampled = {args.sample} random tiles per slide")
    for pattern in ("full", "sampled"):
        row = ", ".join(f"{fmt} {1 / results[(pattern, fmt)]:8.1f} slides/s" for fmt in ("arrow", "h5", "pt", "memmap"))
        print(f"{pattern:8s} {row}")
    ratio = {
        f"{p}_arrow_vs_{fmt}": results[(p, fmt)] / results[(p, "arrow")] for p in ("full", "sampled") for fmt in ("h5", "pt", "memmap")
    }
    for name, value in ratio.items():
        print(f"{name:28s} {value:7.2f}x")
    print("BENCH io " + " ".join(f"{k}={v:.2f}" for k, v in ratio.items()))


if __name__ == "__main__":
    main()
