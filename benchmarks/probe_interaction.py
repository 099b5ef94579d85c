"""Do Modal Adapters learn a planted slide x RNA interaction? A minute-scale probe, without Ray.

Run: ``.venv/bin/python benchmarks/probe_interaction.py [--synthetic '{"interaction_log_hazard": 0}']
[--depths 1,0 --folds 0,1,2 --epochs 10 --accumulation 8 --model '{"adapter_block_size": 4}']``.
The world and the recipe (tile cap, lr, weight decay, epochs, cases a step, task weights) are
``sweeps/studies/interaction.yaml``'s unless a flag overrides them.

A study (``sweeps/studies/interaction.yaml``) answers the question with tests, but takes about
15 minutes on 2 cores; this runs the real model, objective and training loop
(``train_epoch`` + ``evaluate``, AdamW, the study's tile cap) in one process, so a change to the
synthetic world or to the adapters can be judged in 2-3 minutes a fold and depth (on the
study's 3,000 slides; under a minute on a few hundred). The model section (tiny encoder,
``out_dim`` 16, one RNA token) is written here, not read from the study. For each validation fold
and adapter depth (0 = late fusion: the frozen SLFM's slide embedding and the RNA token added
before the head) it prints the validation C-index of the last epochs and the training cases'
C-index (what the model fitted), next to ``truth.json``'s oracles: the interaction-aware
oracle, and late fusion's, which an adapter model must beat to show it learned the interaction.
Prints one ``BENCH probe_interaction ...`` line.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from modaltune.data import Cohort, SynthConfig, generate_cohort, modality_inputs
from modaltune.models import ModalTuneConfig, ModalTuneModel, SlideEncoderConfig
from modaltune.objectives import build_objective
from modaltune.text import TextEmbeddingCache, build_label_bank, build_text_encoder
from modaltune.train.batches import CaseBatcher, seeded_batches
from modaltune.train.loop import TorchEngine, TrainModule, evaluate, train_epoch

STUDY = Path(__file__).resolve().parents[1] / "sweeps" / "studies" / "interaction.yaml"
TEST_FOLD = 5
LATE_EPOCHS = 3  # validation C-index is reported for each of the last LATE_EPOCHS epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--synthetic", default="{}", help="JSON overrides of the synthetic world (SynthConfig fields)")
    parser.add_argument("--cohort-dir", type=Path, help="where the cohort is generated or reused (default: a temporary folder)")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--depths", default="1,0", help="adapter depths to compare (0: late fusion)")
    parser.add_argument("--study", type=Path, default=STUDY, help="the study whose synthetic world and recipe to use")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--accumulation", type=int, help="cases per optimiser step")
    parser.add_argument("--max-tiles", type=int, help="tiles a case per step")
    parser.add_argument("--model", default="{}", help="JSON overrides of ModalTuneConfig (e.g. cffn_ratio, extra_extractors)")
    args = parser.parse_args()
    spec = yaml.safe_load(args.study.read_text())
    optim = spec["train"]["optim"]
    recipe = {
        "epochs": optim["epochs"], "lr": optim["lr"], "weight_decay": optim["weight_decay"],
        "accumulation": optim.get("gradient_accumulation_steps", 1), "max_tiles": spec["train"]["max_tiles"],
    }
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.loss_weights = spec.get("tasks") or None
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    world = spec["synthetic"] | json.loads(args.synthetic)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.cohort_dir or Path(scratch) / "cohort"
        if not (root / "cohort.json").exists():
            generate_cohort(root, SynthConfig(**{**world, "cohorts": tuple(world["cohorts"])}))
        cohort = Cohort(root)
        hazard = json.loads(cohort.layout.truth.read_text())["hazard"]
        oracle, late = hazard["oracle_c_index"]["wsi+rna"], hazard["late_fusion_oracle_c_index"]["wsi+rna"]
        print(f"oracle C-index: interaction-aware {oracle:.3f}, late fusion {late:.3f}")
        scores = _compare(cohort, args, Path(scratch) / "text")
    means = {depth: float(np.mean([scores[key] for key in scores if key[1] == depth])) for depth in _ints(args.depths)}
    for depth, mean in means.items():
        print(f"adapter depth {depth}: mean validation C-index {mean:.3f} over folds {args.folds}")
    print(
        "BENCH probe_interaction "
        + " ".join(f"depth{depth}_val_c={mean:.3f}" for depth, mean in means.items())
        + f" oracle_c={oracle:.3f} late_fusion_oracle_c={late:.3f} folds={args.folds.replace(',', '+')}"
        + f" epochs={args.epochs} accumulation={args.accumulation}"
    )


def _compare(cohort: Cohort, args: argparse.Namespace, text_dir: Path) -> dict[tuple[int, int], float]:
    """Validation C-index (mean of the last epochs) per (fold, adapter depth)."""
    classes_of = {name: cohort.labels.subtypes_of(name) for name in cohort.labels.cohorts}
    scores: dict[tuple[int, int], float] = {}
    for fold in _ints(args.folds):
        train_ids, val_ids = cohort.split(fold, None, TEST_FOLD)
        text_encoder = build_text_encoder("minilm", cohort.labels)
        bank = build_label_bank(cohort, text_encoder, train_ids, out_dim=16, cache=TextEmbeddingCache(text_dir))
        batcher = CaseBatcher(cohort, bank, train_ids, modalities=("rna",), max_tiles=args.max_tiles)
        evaluation_batches = seeded_batches(batcher, 0, "evaluation", torch.device("cpu"), torch.float32)
        for depth in _ints(args.depths):
            started = time.time()
            torch.manual_seed(0)
            config = ModalTuneConfig.tiny(
                **{
                    "encoder": SlideEncoderConfig.tiny(in_dim=cohort.manifest.feature_dim), "modalities": ("wsi", "rna"),
                    "modality_inputs": modality_inputs(cohort, ["rna"]), "adapter_depth": depth, "n_rna_tokens": 1,
                    **json.loads(args.model),
                }
            )
            module = TrainModule(ModalTuneModel(config), build_objective("supervised", bank, args.loss_weights))
            optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=args.lr, weight_decay=args.weight_decay)
            engine = TorchEngine(module, optimizer, gradient_accumulation_steps=args.accumulation)
            late: list[float] = []
            for epoch in range(args.epochs):
                order = [train_ids[i] for i in np.random.default_rng([0, epoch]).permutation(len(train_ids))]
                module.train()
                train_epoch(engine, seeded_batches(batcher, 0, epoch, torch.device("cpu"), torch.float32), order)
                if epoch >= args.epochs - LATE_EPOCHS:
                    late.append(evaluate(module, evaluation_batches, train_ids, val_ids, classes_of)[0]["c_index"])
            fitted = evaluate(module, evaluation_batches, train_ids, train_ids, classes_of)[0]["c_index"]
            scores[(fold, depth)] = float(np.mean(late))
            print(
                f"fold {fold} adapter depth {depth}: validation C-index {' '.join(f'{c:.3f}' for c in late)} "
                f"(training cases {fitted:.3f}) in {time.time() - started:.0f} s",
                flush=True,
            )
    return scores


def _ints(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


if __name__ == "__main__":
    main()
