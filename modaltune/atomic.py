"""Atomic file writes: a reader sees the old version or the new one, never a torn file.

Every output a long study depends on (cohort tables, results, checkpoints, reports) goes
through here, so an interrupted writer leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


_FILE_MODE = 0o666 & ~_umask()  # the mode open() gives a new file
_DIR_MODE = 0o777 & ~_umask()  # the mode mkdir() gives a new folder


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary file lives in the same directory so ``os.replace`` is a same-filesystem
    rename (atomic on POSIX). On any exception the temporary file is removed and the
    target is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; the result should be as readable as any file written here
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(target: str | os.PathLike[str], payload: Any) -> None:
    write_text_atomic(target, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_parquet_atomic(target: str | os.PathLike[str], table: pa.Table) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)


class DirectoryExistsError(FileExistsError):
    """The target of ``atomic_directory`` holds something already; nothing was replaced."""


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; rename it onto ``target`` on success.

    A reader (another process waiting for the same generated cohort, say) sees no folder or a
    complete one, never one being written. ``target`` may be absent or an empty folder; one
    that holds anything, also one another writer finished first, is never replaced: the staged
    copy is removed and ``DirectoryExistsError`` raised. On any exception the staging folder is
    removed and ``target`` left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.writing-", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, _DIR_MODE)  # mkdtemp makes 0700
        try:
            os.rename(staging, target)  # onto an absent or empty folder only (POSIX rename)
        except OSError as exc:
            if target.exists():
                raise DirectoryExistsError(f"{target} is not empty; it was left as it is") from exc
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
