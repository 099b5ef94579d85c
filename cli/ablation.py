"""Command line of ``sweeps/ablation.py``: parse, run the study, print its headline, report and selected model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from modaltune.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_STUDY = REPO_ROOT / "sweeps" / "studies" / "demo.yaml"
DEFAULT_STORAGE = "runs/studies"


def choose_study(arg: str | None) -> tuple[Path, str]:
    """The spec to run and where its name came from: ``--study``, ``$MODALTUNE_STUDY``, else the demo.

    A relative path that does not exist from the working directory is taken relative to the
    repository: ``ray submit`` runs a copy of the script in the home folder, and a cluster
    config names its study as ``sweeps/studies/NAME.yaml``.
    """
    if arg:
        name, source = arg, "--study"
    elif os.environ.get("MODALTUNE_STUDY"):
        name, source = os.environ["MODALTUNE_STUDY"], "$MODALTUNE_STUDY"
    else:
        name, source = str(DEMO_STUDY), "the default demo study"
    path = Path(name).expanduser()
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path, source


def choose_storage(arg: str | None, spec_storage: str | None) -> str:
    """``--storage``, else ``$MODALTUNE_STORAGE`` (set by a cluster config), else the spec's, else runs/studies."""
    return arg or os.environ.get("MODALTUNE_STORAGE") or spec_storage or DEFAULT_STORAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps/ablation.py", description="Run a ModalTune ablation study with Ray Tune + Optuna.")
    parser.add_argument("--study", help="study spec (YAML); default: $MODALTUNE_STUDY, else the demo study")
    parser.add_argument(
        "--storage",
        help="folder that holds studies, shared by every node on a cluster; "
        "default: $MODALTUNE_STORAGE, else the spec's 'storage', else runs/studies",
    )
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study in the storage folder")
    parser.add_argument(
        "--address",
        help="Ray cluster to join ('auto' on a cluster node, 'local' for an embedded Ray); "
        "default: $RAY_ADDRESS, else the cluster `ray start` started on this node, else an embedded Ray",
    )
    parser.add_argument(
        "--tune-table", action="store_true",
        help="show Ray Tune's status table every 30 s instead of the study's progress display (a new study only: a resumed one keeps its first run's choice)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Tune's classic reporter (--tune-table) shows our factor and metric columns; the new one ignores them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell otherwise

    from sweeps.spec import load_study_spec
    from sweeps.storage import StorageError, storage_folder
    from sweeps.study import StudyStalledError, run_study

    study, source = choose_study(args.study)
    print(f"study: {study} (from {source})", flush=True)
    try:
        spec = load_study_spec(study)
        storage = storage_folder(choose_storage(args.storage, spec.storage))
        outcome = run_study(spec, storage, resume=args.resume, address=args.address, tune_table=args.tune_table)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError) as exc:  # full or unwritable storage: what was written is kept
        print(f"error: {exc}\nwhat was written is kept; fix the storage, then run again with --resume", file=sys.stderr)
        return 3
    except StudyStalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4

    if not outcome.unfinished:  # an interrupted study is analysed when it is finished
        _conclude(outcome.study_dir)
    print(f"\nresults: {outcome.study_dir / 'results.parquet'}\ntrials:  {outcome.study_dir / 'trials.parquet'}")
    if outcome.unfinished:
        print(f"study interrupted: {outcome.unfinished} trials unfinished; continue it with --resume", file=sys.stderr)
        return 130
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trials failed; see trials.parquet", file=sys.stderr)
        return 1
    return 0


def _conclude(study_dir: Path) -> None:
    """The study's report and its selected model, as ``modaltune analyze`` and ``select`` make them.

    An analysis that cannot run (nothing finished yet) is reported, not fatal: the study's own
    results stand, and ``modaltune analyze`` can be run again later.
    """
    from analysis.export import export_selection
    from analysis.report import analyze_study
    from sweeps.trackers import study_trackers

    try:
        report = analyze_study(study_dir)
        print("\n" + report.console_text())
        for tracker in study_trackers(report.spec, study_dir):
            try:
                tracker.log_report(report.directory)
            except Exception as exc:  # noqa: BLE001 - an unreachable tracker server costs the upload, not the study's results
                print(f"could not log the report to {tracker.options.name}: {exc}", file=sys.stderr)
        if report.selection is not None:  # the report's own selection, not chosen a second time
            best = export_selection(study_dir, report.spec, report.selection, report.test_metrics)
            print(f"selected model exported to {best}")
    except (InputError, OSError) as exc:
        print(f"no report or model: {exc}; run `modaltune analyze {study_dir}` once fixed", file=sys.stderr)
