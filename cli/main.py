"""``modaltune`` command line: cohort tools, training, and a study's analysis, model selection and prediction.

Exit codes: 0 success, 2 bad input (with every problem printed), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from modaltune.cli.ablation import add_study_arguments, run_study_command
from modaltune.data.feature_formats import FEATURE_FORMATS
from modaltune.data.import_options import (
    CLINICAL_DIALECTS,
    FOLD_GROUPINGS,
    ZERO_TIME_EPSILON,
    ZERO_TIME_POLICIES,
    H5ImportOptions,
)
from modaltune.errors import InputError

if TYPE_CHECKING:
    from modaltune.data import ValidationReport

# Each command imports what it uses (torch, pandas, Ray, ...) when it runs: building the parser,
# and `--help`, import none of them (tests/test_cli.py holds it).

EXIT_BAD_INPUT = 2

logger = logging.getLogger("modaltune")


def _bar(description: str, unit: str) -> Callable[[Iterable], Iterable]:
    from tqdm.auto import tqdm

    return partial(tqdm, desc=description, unit=unit, dynamic_ncols=True)


def _print_report(report: ValidationReport) -> int:
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.ok:
        print(f"{report.root}: OK ({report.n_slides} slides, {report.n_cases} cases)")
        return 0
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{report.root}: {len(report.problems)} problem(s)", file=sys.stderr)
    return EXIT_BAD_INPUT


def _cmd_synth(args: argparse.Namespace) -> int:
    from modaltune.data import SynthConfig, generate_cohort

    config = SynthConfig(
        cohorts=tuple(c.strip() for c in args.cohorts.split(",") if c.strip()),
        slides_per_cohort=args.slides_per_cohort,
        seed=args.seed,
        feature_dim=args.feature_dim,
        min_tiles=args.min_tiles,
        max_tiles=args.max_tiles,
        n_genes=args.genes,
        n_pathways=args.pathways,
        n_folds=args.folds,
    )
    layout = generate_cohort(args.out_dir, config, progress=_bar("writing slides", "slide"))
    print(f"wrote synthetic cohort to {layout.root}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from modaltune.data import validate_cohort

    return _print_report(
        validate_cohort(args.cohort_dir, progress=_bar("checking slides", "slide"), require_complete=args.require_complete)
    )


def _cmd_import_h5(args: argparse.Namespace) -> int:
    from modaltune.data import Cohort, import_h5_cohort

    options = H5ImportOptions(
        labels=args.labels, rna=args.rna, gene_groups=args.gene_groups, mutations=args.mutations,
        mutation_genes=args.mutation_genes.split(",") if args.mutation_genes else None, sequenced_cases=args.sequenced_cases,
        n_folds=args.folds, seed=args.seed,
        tile_size_px=args.tile_size, clinical_dialect=args.clinical_dialect, zero_time=args.zero_time, overwrite=args.overwrite,
        folds_by=args.folds_by, for_prediction=args.for_prediction, feature_format=args.format,
    )
    layout = import_h5_cohort(args.h5_dir, args.slides, args.out_dir, options, progress=_bar("importing slides", "slide"))
    cohort = Cohort(layout.root)
    print(f"{layout.root}: OK, imported ({len(cohort.slides)} slides, {len(cohort.case_ids)} cases)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from modaltune.train.config import load_train_config
    from modaltune.train.run import run_training

    config = load_train_config(args.config, args.set)
    outcome = run_training(args.cohort, config, args.output, address=args.address, resume_from=args.resume_from)
    shown = ("epoch", "train_loss", "val_loss", "val_c_index", "val_balanced_accuracy", "val_macro_auc")
    columns = [c for c in shown if c in outcome.metrics]
    print(outcome.metrics[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"run written to {outcome.output} (metrics.parquet, checkpoints/, tensorboard/, predictions/)")
    return 0


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per rebuilt study otherwise


def _cmd_analyze(args: argparse.Namespace) -> int:
    from modaltune.analysis.report import analyze_study

    _quiet_optuna()
    print(analyze_study(args.study_dir, metric=args.metric, n_boot=args.bootstrap).console_text())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from modaltune.analysis.planning import forecast
    from modaltune.sweeps.spec import load_study_spec

    _quiet_optuna()
    print(forecast(load_study_spec(args.study), spread=args.spread, pilot_dir=args.pilot, cohort_folds=args.cohort_folds).text())
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    from modaltune.analysis.export import select_and_export

    _quiet_optuna()
    selection, path = select_and_export(args.study_dir, metric=args.metric)
    row = selection.row
    print(selection.candidates.head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nselected trial {selection.trial_id} (cell {row['cell']}): {selection.metric} {selection.score_text}, "
          f"{int(row['trainable_params']):,} trainable parameters; best was {selection.best_trial_id}")
    print(f"exported to {path} (model card: {path / 'MODEL_CARD.md'})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from modaltune.predict import ExportedModel, check_predictions_path, predict_cohort, write_predictions

    check_predictions_path(args.out)  # before hours of scoring, not after
    frame = predict_cohort(args.model_dir, args.cohort, progress=_bar("fold models", "model"))
    path = write_predictions(frame, args.out, ExportedModel.open(args.model_dir).classes)
    print(f"{len(frame)} cases -> {path}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from modaltune.sweeps.progress import EXIT_CODES, read_progress, render

    while True:
        progress = read_progress(args.study_dir)
        state = progress.observed_state()
        if args.watch and sys.stdout.isatty():
            print("\033[H\033[J", end="")  # redraw in place
        print("\n".join(render(progress)), flush=True)
        if not args.watch or state != "running":
            return EXIT_CODES[state]
        time.sleep(args.every)
        if not sys.stdout.isatty():
            print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modaltune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write a synthetic TCGA-like cohort with planted effects")
    synth.add_argument("out_dir", type=Path)
    synth.add_argument("--cohorts", default="BRCA,NSCLC,RCC,GBMLGG", help="comma-separated cancer types")
    synth.add_argument("--slides-per-cohort", type=int, default=100)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--feature-dim", type=int, default=1536, help="tile feature width (GigaPath: 1536)")
    synth.add_argument("--min-tiles", type=int, default=50)
    synth.add_argument("--max-tiles", type=int, default=5000)
    synth.add_argument("--genes", type=int, default=400)
    synth.add_argument("--pathways", type=int, default=20)
    synth.add_argument("--folds", type=int, default=5)
    synth.set_defaults(run=_cmd_synth)

    validate = commands.add_parser("validate", help="check a cohort folder; exit 2 listing every problem")
    validate.add_argument("cohort_dir", type=Path)
    validate.add_argument(
        "--require-complete", action="store_true",
        help="refuse cases without an RNA row (by default they are counted and get a learned missing-RNA token)",
    )
    validate.set_defaults(run=_cmd_validate)

    importer = commands.add_parser("import-h5", help="convert TRIDENT / CLAM / STAMP tile features into a cohort")
    importer.add_argument("h5_dir", type=Path, help="folder of per-slide feature files (<slide_id>.h5 or CLAM's <slide_id>.pt)")
    importer.add_argument(
        "--slides", type=Path, required=True,
        help="CSV: slide_id, case_id, cohort, subtype, time, event (+ optional fold, clinical columns, and the scan's "
        "magnification and level-0 tile_size_px where the feature files do not say them)",
    )
    importer.add_argument(
        "--format", choices=sorted(FEATURE_FORMATS),
        help="the feature files' layout (default: detected): " + "; ".join(f"{n}: {c.description}" for n, c in FEATURE_FORMATS.items()),
    )
    importer.add_argument(
        "--for-prediction", action="store_true",
        help="new patients for `modaltune predict`: subtype, time and event may be absent or empty; no folds; cannot be trained on",
    )
    importer.add_argument("out_dir", type=Path)
    importer.add_argument("--labels", type=Path, help="labels.yaml (default: built-in TCGA descriptions)")
    importer.add_argument(
        "--rna", type=Path,
        help="case x gene table (.csv, .tsv or .parquet) with a case_id column: the slide table's cases, or TCGA sample "
        "barcodes (TCGA-A1-A0SB-01A: the primary tumour's row is kept per patient)",
    )
    importer.add_argument("--gene-groups", type=Path, help="JSON: pathway -> list of genes")
    importer.add_argument(
        "--mutations", type=Path,
        help="somatic mutations: a case x gene 0/1 table with case_id (.csv/.parquet) or a MAF (cBioPortal data_mutations.txt)",
    )
    importer.add_argument("--mutation-genes", help="comma-separated panel for a MAF (default: genes mutated in >= 5%% of its cases)")
    importer.add_argument(
        "--sequenced-cases", type=Path,
        help="with a MAF: cBioPortal's case_lists/cases_sequenced.txt (or one sample ID per line); a listed case without "
        "mutations gets 0s, not 'not sequenced' (default: the MAF's samples are the sequenced ones)",
    )
    importer.add_argument("--folds", type=int, default=5, help="case-level folds, when the CSV has no fold column")
    importer.add_argument("--seed", type=int, default=0)
    importer.add_argument(
        "--tile-size", type=int,
        help="tile size in level-0 pixels of files without attributes (default: TRIDENT's or CLAM's coords attributes, "
        "else the slide table's tile_size_px column, else 256); a 'magnification' column puts 40x and 20x scans on one grid",
    )
    importer.add_argument(
        "--clinical-dialect", choices=CLINICAL_DIALECTS, default="tcga",
        help="tcga (default): map TCGA / cBioPortal values ('[Not Available]', 'MALE', 'Stage IIIA', 'T1b', '1:DECEASED'; "
        "case_id from TCGA barcodes); strict: take the values as they are",
    )
    importer.add_argument(
        "--zero-time", choices=ZERO_TIME_POLICIES, default="refuse",
        help=f"survival time 0 (TCGA's OS.time = 0): refuse (default), drop those slides, or epsilon ({ZERO_TIME_EPSILON} months)",
    )
    importer.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing cohort (or empty folder) at OUT_DIR whole; a folder holding anything else, or an input, is refused",
    )
    importer.add_argument(
        "--folds-by", choices=FOLD_GROUPINGS, default="case",
        help="site: site-preserved folds, no tissue source site in two folds (the site from a 'site' column or TCGA barcodes)",
    )
    importer.set_defaults(run=_cmd_import_h5)

    train = commands.add_parser("train", help="one fine-tuning run through Ray Train (DeepSpeed or DDP)")
    train.add_argument("--cohort", type=Path, required=True, help="cohort folder")
    train.add_argument("--config", type=Path, help="run config YAML (default: a small CPU run of about two minutes)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=1e-3")
    train.add_argument("--output", type=Path, required=True, help="run folder; re-running with it resumes")
    train.add_argument(
        "--address",
        help="Ray cluster to join (default: $RAY_ADDRESS, else the cluster `ray start` started on this node, else an embedded Ray; "
        "'local' forces embedded)",
    )
    train.add_argument("--resume-from", help="a checkpoint folder to start from")
    train.set_defaults(run=_cmd_train)

    analyze = commands.add_parser("analyze", help="write a study's report (tables, tests, survival analysis, plots) and print its headline")
    analyze.add_argument("study_dir", type=Path, help="STORAGE/STUDY folder of a study")
    analyze.add_argument("--metric", help="metric to compare and select by (default: the study's primary metric)")
    analyze.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the C-index intervals")
    analyze.set_defaults(run=_cmd_analyze)

    plan = commands.add_parser(
        "plan", help="before a study runs: its cells, trials and runs, its compute, and the smallest difference each comparison can detect"
    )
    plan.add_argument("study", type=Path, help="study spec (YAML)")
    plan.add_argument("--spread", type=float, help="SD of the per-fold paired differences of the primary metric (e.g. 0.03 C-index)")
    plan.add_argument(
        "--pilot", type=Path,
        help="a finished study (STORAGE/STUDY) with the same train config and hardware: its measured times, "
        "and its spread unless --spread is given",
    )
    plan.add_argument("--cohort-folds", type=int, help="the cohort's number of folds, when its folder is not readable here")
    plan.set_defaults(run=_cmd_plan)

    select = commands.add_parser("select", help="pick the model (1-SE rule) and export it to STUDY/best/")
    select.add_argument("study_dir", type=Path, help="STORAGE/STUDY folder of a study")
    select.add_argument("--metric", help="metric to select by (default: the study's primary metric)")
    select.set_defaults(run=_cmd_select)

    status = commands.add_parser(
        "status", help="how far a study is, what leads, what failed: read from its folder, while it runs or after",
        description="Exit code: 0 finished, 1 failed (trials or the driver), 3 running, 4 interrupted (continue with --resume), "
        "2 not a study.",
    )
    status.add_argument("study_dir", type=Path, help="STORAGE/STUDY folder of a study (a shared file system works)")
    status.add_argument("--watch", action="store_true", help="repeat until the study is no longer running; exit with its final state")
    status.add_argument("--every", type=float, default=10.0, help="seconds between updates with --watch")
    status.set_defaults(run=_cmd_status)

    predict = commands.add_parser("predict", help="risk and subtype for a cohort's cases from an exported model")
    predict.add_argument("model_dir", type=Path, help="an exported model folder (STUDY/best)")
    predict.add_argument("--cohort", type=Path, required=True, help="cohort folder with the slides to predict")
    predict.add_argument("--out", type=Path, required=True, help="predictions file: .parquet, or .csv (class probabilities as JSON)")
    predict.set_defaults(run=_cmd_predict)

    study = commands.add_parser(
        "study", help="run (or --resume) an ablation study: the command form of sweeps/ablation.py, same options and exit codes",
    )
    add_study_arguments(study)
    study.set_defaults(run=run_study_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    raise SystemExit(main())
