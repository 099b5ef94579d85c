"""Ray Tune's saved experiment state, kept restorable through a crash or a full disk.

Tune saves its state (``experiment_state-<session>.json``, the searcher's
``searcher-state-<session>.pkl`` and ``search_gen_state-<session>.json``) into a local staging
folder, then copies it into the study folder over the previous copy. A disk that fills during
that copy leaves the files torn, and on ``--resume`` Tune then restarts the whole experiment:
it reruns finished configurations as new trials, fails the running ones in Optuna, and the
study never finishes. The study does not write these files, so it keeps a copy of its own:

- ``SavedSearch``, the search algorithm Tune saves, writes the set Tune has just saved (one
  consistent save, taken from the staging folder before Tune copies it anywhere) into
  ``tune-state.last-good``: one zip file, written atomically, only with the room for it;
- ``prepare_restore``, before ``Tuner.restore``, puts that copy back when Tune's own files are
  not one whole save (one torn, one of the newest save missing), setting Tune's aside.

A torn save then costs at most the trials started since the copy: the restored state does not
know them, so their folders and rows are set aside (``set-aside/``, nothing deleted) and their
configurations run again as new trials (the searcher's random state is restored with it, so
they are the same configurations).
"""

from __future__ import annotations

import json
import logging
import pickletools
import shutil
import time
import zipfile
from pathlib import Path

from ray.tune import ExperimentAnalysis
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator

from modaltune.atomic import atomic_path
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.result_parts import results_table, trial_states_table
from modaltune.sweeps.storage import free_mb
from modaltune.sweeps.trial import COMPLETED_FILE, TRIAL_FILE

logger = logging.getLogger(__name__)

EXPERIMENT_STATE = "experiment_state-{}.json"  # Tune's TuneController.CKPT_FILE_TMPL
TUNER_FILE = "tuner.pkl"  # written once when the Tuner starts; Tuner.restore needs it whole


def _session_files(session: str) -> list[str]:
    return [EXPERIMENT_STATE.format(session), SearchGenerator.CKPT_FILE_TMPL.format(session), Searcher.CKPT_FILE_TMPL.format(session)]


def whole(name: str, data: bytes) -> str | None:
    """None when ``data`` is a whole file of its kind (JSON, or a pickle that ends where its STOP
    is), else what is wrong with it. Pickles are walked, not loaded: nothing of them runs."""
    if name.endswith(".json") and name.startswith("experiment_state-"):
        try:
            json.loads(data)
        except ValueError as exc:
            return f"not whole JSON ({exc})"
        return None
    try:
        last = None
        for op in pickletools.genops(data):
            last = op
    except Exception as exc:  # noqa: BLE001 - any way a torn pickle fails to parse
        return f"not a whole pickle ({exc})"
    if last is None or last[0].name != "STOP" or last[2] + 1 != len(data):
        return "not a whole pickle"
    return None


class SavedSearch(SearchGenerator):
    """Tune's ``SearchGenerator`` over ``ConcurrencyLimiter(searcher)``, which also keeps the copy
    of every save Tune makes of the experiment in ``stage_dir`` (see the module docstring)."""

    def __init__(self, searcher: Searcher, max_concurrent: int, stage_dir: Path, min_free_mb: float) -> None:
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.stage_dir = stage_dir
        self.min_free_mb = min_free_mb
        self._copy_failed = False

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)  # Tune's experiment state is already there
        files = {name: (Path(dirpath) / name).read_bytes() for name in _session_files(session_str) if (Path(dirpath) / name).exists()}
        tuner = self.stage_dir / TUNER_FILE
        if tuner.exists() and whole(TUNER_FILE, data := tuner.read_bytes()) is None:
            files[TUNER_FILE] = data
        else:
            files |= {k: v for k, v in (read_copy(self.stage_dir) or {}).items() if k == TUNER_FILE}
        try:
            write_copy(self.stage_dir, files, self.min_free_mb)
        except OSError as exc:  # the study goes on; the previous copy stays
            if not self._copy_failed:
                logger.warning("could not keep a copy of Ray Tune's saved state in %s (%s); the previous copy stays", self.stage_dir, exc)
            self._copy_failed = True
        else:
            self._copy_failed = False


def write_copy(stage_dir: Path, files: dict[str, bytes], min_free_mb: float) -> None:
    """The copy, as one zip file written atomically; refused (OSError) without room for it and the margin."""
    size_mb = sum(len(data) for data in files.values()) / 2**20
    available = free_mb(stage_dir)
    if available - size_mb < min_free_mb:
        raise OSError(f"{available:.0f} MB free, {size_mb:.1f} MB needed above min_free_mb={min_free_mb:g}")
    with (
        atomic_path(StudyLayout(stage_dir).tune_state_copy) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
    ):
        for name, data in files.items():
            archive.writestr(name, data)


def read_copy(stage_dir: Path) -> dict[str, bytes] | None:
    """The files of the copy (its zip CRCs checked), or None when there is no whole copy."""
    path = StudyLayout(stage_dir).tune_state_copy
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            files = {name: archive.read(name) for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        logger.warning("the copy of Ray Tune's state %s is unreadable (%s); not used", path, exc)
        return None
    return files if all(whole(name, data) is None for name, data in files.items()) else None


STATE_TEMPLATES = (EXPERIMENT_STATE, SearchGenerator.CKPT_FILE_TMPL, Searcher.CKPT_FILE_TMPL)


def _session(files: dict[str, bytes] | list[str]) -> str | None:
    """The Tune session whose experiment state is among ``files`` (the newest)."""
    states = sorted(name for name in files if name.startswith("experiment_state-"))
    return states[-1].removeprefix("experiment_state-").removesuffix(".json") if states else None


def _problems(stage_dir: Path) -> dict[str, str]:
    """What keeps Tune from restoring ``stage_dir`` as one save: a torn file, or one of the newest
    save missing (Tune restores the newest file of each kind, sessions mixed)."""
    states = sorted(p.name for p in stage_dir.glob(EXPERIMENT_STATE.format("*")))
    if not states:
        return {EXPERIMENT_STATE.format("*"): "none saved"}
    names = [*_session_files(_session(states) or ""), TUNER_FILE]
    problems = {name: "missing" for name in names if not (stage_dir / name).exists()}
    problems |= {name: why for name in names if (stage_dir / name).exists() and (why := whole(name, (stage_dir / name).read_bytes()))}
    later = [p.name for t in STATE_TEMPLATES[1:] for p in stage_dir.glob(t.format("*")) if p.name > t.format(_session(states))]
    return problems | dict.fromkeys(later, "newer than the newest experiment state")


def prepare_restore(stage_dir: Path) -> bool:
    """Make Tune's saved state in ``stage_dir`` one whole save before ``Tuner.restore``, and set
    aside the trials it does not know. Tune's own files are used when they are one whole save
    (they may be newer than the copy, when the copy had no room); otherwise the study's copy is
    put back. False when there is nothing to restore (the stage starts afresh)."""
    layout = StudyLayout(stage_dir)
    problems = _problems(stage_dir)
    copy = read_copy(stage_dir) if problems else None
    nothing_saved = set(problems) == {EXPERIMENT_STATE.format("*")} and copy is None  # stopped before Tune saved
    if problems and not nothing_saved:
        said = "; ".join(f"{name}: {why}" for name, why in problems.items())
        session = _session(list(copy)) if copy is not None else None
        later = [p for t in STATE_TEMPLATES for p in stage_dir.glob(t.format("*")) if session is None or p.name > t.format(session)]
        aside = _set_aside(layout, "tune-state", [*(stage_dir / name for name in problems), *later])
        if copy is not None and session is not None:
            for name, data in copy.items():
                with atomic_path(stage_dir / name) as tmp:
                    tmp.write_bytes(data)
            logger.warning(
                "Ray Tune's saved state in %s is not one whole save (%s): restored the study's copy of its last whole save "
                "(Tune's files moved to %s); trials started after that save run again", stage_dir, said, aside,
            )
        else:
            logger.warning(
                "Ray Tune's saved state in %s is not one whole save (%s) and the study has no copy of one (Tune's files moved to %s): "
                "the stage starts again", stage_dir, said, aside,
            )
    restorable = not _problems(stage_dir)
    restored = {trial.trial_id: trial.status for trial in ExperimentAnalysis(str(stage_dir)).trials} if restorable else {}
    _reconcile_trials(layout, restored)
    return restorable


def _reconcile_trials(layout: StudyLayout, restored: dict[str, str]) -> None:
    """The trials' folders agree with the state Tune restores (trial id -> status): a trial it
    holds unfinished loses any mark of having completed (a later save, not restored, said so),
    and trials it does not know at all are set aside with their rows."""
    for trial, status in restored.items():
        if status != "TERMINATED":
            (layout.runs / trial / COMPLETED_FILE).unlink(missing_ok=True)
    orphans = sorted(path.parent.name for path in layout.runs.glob(f"*/{TRIAL_FILE}") if path.parent.name not in restored)
    if not orphans:
        return
    aside = _set_aside(layout, "orphaned-trials", [layout.runs / trial for trial in orphans])
    for trial in orphans:
        if (layout.predictions / trial).exists():
            shutil.move(layout.predictions / trial, aside / trial / "predictions")
    for table in (results_table(layout.results), trial_states_table(layout.trials)):
        table.drop("trial_id", set(orphans))
    logger.warning(
        "trials %s ran after the last state Ray Tune can restore: set aside with their rows in %s (nothing deleted); "
        "their configurations run again as new trials", ", ".join(orphans), aside,
    )


def _set_aside(layout: StudyLayout, what: str, paths: list[Path]) -> Path:
    """Move ``paths`` into a new folder ``set-aside/<what>-<time>/``; returns it."""
    aside = layout.set_aside / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True, exist_ok=True)
    for path in paths:
        if path.exists():
            shutil.move(path, aside / path.name)
    return aside
