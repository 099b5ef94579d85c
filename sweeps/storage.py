"""The study's storage: writable and with room to spare, checked before and during a study.

A study that fills its disk half-way through a checkpoint leaves torn files behind; so the
driver checks the storage before anything starts and a ``StorageGuard`` stops the whole study
while there is still room for what it is about to write and ``min_free_mb`` more, with Tune's
state saved, so ``--resume`` continues once space is back. (What a disk filled faster than
that still tears, Tune's own saved state above all, the driver repairs on ``--resume``:
sweeps/tune_state.py, sweeps/result_parts.py.)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

from ray.tune.stopper import Stopper

from modaltune.errors import InputError
from modaltune.sweeps.interrupt import interrupt_study
from modaltune.sweeps.layout import StudyLayout

logger = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The study's storage is unwritable or (nearly) full; the message says which and how much."""


def storage_folder(value: str) -> Path:
    """The study storage as a folder; an object-store URI (``s3://``, ``gs://``) is refused.

    Why not a URI: every Ray Train worker writes its run folder (checkpoints, metrics,
    predictions) and the driver rewrites ``results.parquet`` with temp-file-and-rename, all
    through the file system. On a cluster the folder must be one every node mounts (NFS, EFS,
    FSx); that is what makes results and checkpoints survive the loss of a node.
    """
    if "://" in value:
        raise InputError(
            f"storage {value!r} is a URI; a study needs a folder every node mounts (e.g. EFS or NFS at "
            "/mnt/data/studies): its workers write checkpoints, metrics and predictions as files"
        )
    return Path(value).expanduser()


def free_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**20


def check_storage(storage: Path, min_free_mb: float) -> None:
    """Raise ``StorageError`` unless ``storage`` can be written and has ``min_free_mb`` free."""
    try:
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage, prefix=".modaltune-probe-"):
            pass
    except OSError as exc:
        raise StorageError(f"storage {storage} is not writable: {exc.strerror or exc}") from exc
    available = free_mb(storage)
    if available < min_free_mb:
        raise StorageError(f"storage {storage} has {available:.0f} MB free, less than min_free_mb={min_free_mb:g}")


class StorageGuard(Stopper):
    """Interrupts the study (``sweeps.interrupt``: resumable, as after Ctrl-C) once the storage
    has less free than ``min_free_mb`` plus what the study is about to write: the most it wrote
    between two checks so far (an epoch's checkpoints and predictions, Tune's saved state, the
    results). Checked on every result, the moment a worker has written an epoch and its next
    writes are the next ones, and at most every ``every_s`` seconds on the other turns of Tune's
    loop. A Stopper only because Tune calls one on every result and every turn of its loop; it
    never stops a trial itself."""

    def __init__(self, storage: Path, layout: StudyLayout, min_free_mb: float, every_s: float = 5.0) -> None:
        self.storage = storage
        self.layout = layout
        self.min_free_mb = min_free_mb
        self.every_s = every_s
        self._checked = 0.0
        self._last_free: float | None = None
        self.about_to_write_mb = 0.0
        self.tripped = False

    def __setstate__(self, state: dict) -> None:
        # Tune pickles the stopper with the experiment, possibly right after it tripped; a
        # resumed study starts with a guard that checks again and learns its writes again: the
        # drop it last saw may have been another program filling the disk, which the user has
        # since cleared, and would otherwise refuse every resume.
        self.__dict__.update(state | {"tripped": False, "_checked": 0.0, "_last_free": None, "about_to_write_mb": 0.0})

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._check(every_s=0.0)
        return False

    def stop_all(self) -> bool:
        self._check(self.every_s)
        return False

    def _check(self, every_s: float) -> None:
        if self.tripped or time.monotonic() - self._checked < every_s:
            return
        self._checked = time.monotonic()
        available = free_mb(self.storage)
        if self._last_free is not None:
            self.about_to_write_mb = max(self.about_to_write_mb, self._last_free - available)
        self._last_free = available
        if available < self.min_free_mb + self.about_to_write_mb:
            self.tripped = True
            interrupt_study(
                self.layout, "storage",
                f"storage {self.storage} has {available:.0f} MB free, less than min_free_mb={self.min_free_mb:g} plus the "
                f"{self.about_to_write_mb:.0f} MB the study wrote at most between two checks",
            )
