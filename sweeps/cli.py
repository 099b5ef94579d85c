"""Command line of ``sweeps/ablation.py``: parse, run the study, print the headline table."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from modaltune.errors import InputError

DEMO_STUDY = Path(__file__).resolve().parent / "studies" / "demo.yaml"
DEFAULT_STORAGE = Path("runs") / "studies"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps/ablation.py", description="Run a ModalTune ablation study with Ray Tune + Optuna.")
    parser.add_argument("--study", help="study spec (YAML); default: $MODALTUNE_STUDY, else the demo study")
    parser.add_argument("--storage", help="folder (or URI) that holds studies; default: the spec's 'storage', else runs/studies")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study in the storage folder")
    parser.add_argument("--address", help="Ray cluster to join ('auto' on a cluster node); default: $RAY_ADDRESS, else an embedded Ray")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Tune's classic reporter shows our factor and metric columns; the new one ignores them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell otherwise

    from analysis.ablation import compare_to_reference, format_comparisons, repetition_scores
    from analysis.summary import cell_summary, format_summary, load_study
    from modaltune.data.layout import CohortLayout, read_manifest
    from sweeps.spec import load_study_spec
    from sweeps.storage import StorageError
    from sweeps.study import run_study

    study = args.study or os.environ.get("MODALTUNE_STUDY") or str(DEMO_STUDY)
    source = "--study" if args.study else ("$MODALTUNE_STUDY" if os.environ.get("MODALTUNE_STUDY") else "the default demo study")
    print(f"study: {study} (from {source})", flush=True)
    try:
        spec = load_study_spec(study)
        storage = Path(args.storage or spec.storage or DEFAULT_STORAGE)
        outcome = run_study(spec, storage, resume=args.resume, address=args.address)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError) as exc:  # full or unwritable storage: what was written is kept
        print(f"error: {exc}\nwhat was written is kept; fix the storage, then run again with --resume", file=sys.stderr)
        return 3

    spec, results, trials = load_study(outcome.study_dir)
    if len(trials):
        print("\n" + format_summary(cell_summary(spec, results, trials), spec))
    if len(results) and spec.factors:
        primary = spec.search.primary.name
        n_folds = read_manifest(CohortLayout(spec.cohort)).n_folds
        comparisons = compare_to_reference(spec, repetition_scores(spec, results, trials), primary, n_folds)
        print(f"\n{primary}: each level vs the reference, paired over folds x seeds (Holm-adjusted p)")
        print(format_comparisons(comparisons))
    print(f"\nresults: {outcome.study_dir / 'results.parquet'}\ntrials:  {outcome.study_dir / 'trials.parquet'}")
    if outcome.unfinished:
        print(f"study interrupted: {outcome.unfinished} trials unfinished; continue it with --resume", file=sys.stderr)
        return 130
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trials failed; see trials.parquet", file=sys.stderr)
        return 1
    return 0
