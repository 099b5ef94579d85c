"""Command line of ``sweeps/ablation.py``: parse, run the study, print its headline, report and selected model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from modaltune.errors import InputError

if TYPE_CHECKING:
    from modaltune.sweeps.spec import StudySpec

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


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a study run, shared by ``sweeps/ablation.py`` and ``modaltune study``."""
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
        help="show Ray Tune's status table every 30 s instead of the study's progress display "
        "(a new study only: a resumed one keeps its first run's choice)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sweeps/ablation.py", description="Run a ModalTune ablation study with Ray Tune + Optuna.")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_study_command(args)


def run_study_command(args: argparse.Namespace) -> int:
    """Run the study ``args`` name (logging already configured); the exit code (module docstring of sweeps/ablation.py)."""
    # Tune's classic reporter (--tune-table) shows our factor and metric columns; the new one ignores them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    from modaltune.sweeps.interrupt import INTERRUPTS

    INTERRUPTS.install()  # any number of Ctrl-C: the state saved, exit 130, no traceback
    try:
        return _run(args)
    except KeyboardInterrupt:  # before the study was known
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per cell otherwise

    from modaltune.sweeps.layout import StudyLayout
    from modaltune.sweeps.spec import load_study_spec
    from modaltune.sweeps.storage import StorageError, storage_folder
    from modaltune.sweeps.study import StudyStalledError, run_study

    study, source = choose_study(args.study)
    print(f"study: {study} (from {source})", flush=True)
    study_dir: Path | None = None

    def what_is_kept(fix: str) -> str:
        """What is true of the study folder now, and so what to do next."""
        if study_dir is not None and StudyLayout(study_dir).spec.exists():
            return f"the study's state is saved; {fix}continue it with --resume"
        return f"nothing of the study was written; {fix}run it again"

    try:
        spec = load_study_spec(study)
        storage = storage_folder(choose_storage(args.storage, spec.storage))
        study_dir = storage.resolve() / spec.name
        outcome = run_study(
            spec, storage, resume=args.resume, address=args.address, tune_table=args.tune_table, conclude=_conclude, source=str(study),
        )
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError) as exc:  # full or unwritable storage
        print(f"error: {exc}\n{what_is_kept('fix the storage, then ')}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"study interrupted (Ctrl-C): {what_is_kept('')}", file=sys.stderr)
        return 130
    except StudyStalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4

    print(f"\nresults: {outcome.study_dir / 'results.parquet'}\ntrials:  {outcome.study_dir / 'trials.parquet'}")
    if outcome.unfinished:
        print(f"study interrupted: {outcome.unfinished} trials unfinished; continue it with --resume", file=sys.stderr)
        return 130
    if outcome.errors:
        print(f"{outcome.errors} of {outcome.trials} trials failed; see trials.parquet", file=sys.stderr)
    if outcome.problem is not None:
        print(f"error: the study selected no model: {outcome.problem}", file=sys.stderr)
    return 1 if outcome.errors or outcome.problem is not None else 0


def _conclude(study_dir: Path, spec: StudySpec) -> str | None:
    """The study's report and its selected model, as ``modaltune analyze`` and ``select`` make
    them; returns why no model was selected (None when the model is exported). A storage
    failure propagates: the study then stops with its state saved, and ``--resume`` concludes it.
    """
    from modaltune.analysis.export import export_selection
    from modaltune.analysis.report import analyze_study
    from modaltune.analysis.selection import select_model
    from modaltune.analysis.summary import load_study
    from modaltune.sweeps.trackers import study_trackers

    try:
        report = analyze_study(study_dir)
    except InputError as exc:
        print(f"no report or model: {exc}", file=sys.stderr)
        return str(exc)
    print("\n" + report.console_text())
    for tracker in study_trackers(spec, study_dir):  # the trackers of the spec this driver runs
        try:
            tracker.log_report(report.directory)
        except Exception as exc:  # noqa: BLE001 - an unreachable tracker server costs the upload, not the study's results
            print(f"could not log the report to {tracker.options.name}: {exc}", file=sys.stderr)
    if report.selection is None:  # the report says why; so does the terminal
        try:
            select_model(study_dir, *load_study(study_dir))
        except InputError as exc:
            return str(exc)
        return "the report selected none"
    best = export_selection(study_dir, report.spec, report.selection, report.test_metrics)  # the report's own selection
    print(f"selected model exported to {best}")
    return None
