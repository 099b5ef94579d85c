"""The storage guard stops a study while there is still room for what it is about to write,
checked on every result (sweeps/storage.py); a real tmpfs filled by real writes."""

from __future__ import annotations

import pickle
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.storage import StorageGuard

MB = 2**20


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "storage"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)]
    mounted = subprocess.run(command, capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_the_guard_stops_the_study_before_its_next_epoch_would_fill_the_disk(tmpfs: Path) -> None:
    interrupts: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(signum))  # what Tune's handler would take
    try:
        layout = StudyLayout(tmpfs / "study")
        layout.root.mkdir()
        guard = StorageGuard(tmpfs, layout, min_free_mb=2)
        guard("t", {})  # the first result: how much is free
        for epoch in range(4):  # each epoch writes 3 MB, results in quick succession
            (tmpfs / f"epoch{epoch}").write_bytes(b"\0" * 3 * MB)
            guard("t", {})
            if interrupts:
                break
        # 16 MB: after 3 epochs about 7 MB are free, after 4 about 4: 4 MB is above min_free_mb but
        # below it plus the 3 MB the next epoch writes. Stopped then, not once the disk is full.
        assert interrupts == [signal.SIGINT] and epoch == 3
        assert "plus the 3 MB the study wrote at most between two checks" in layout.interrupted.read_text()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_resumed_guard_forgets_a_disk_another_program_filled(tmpfs: Path) -> None:
    # Another program fills the disk mid-study: the guard trips and Tune pickles it with the
    # experiment. The user deletes the filler and resumes: the unpickled guard must not count the
    # filler as the study's own writes, or every resume would trip at once.
    interrupts: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupts.append(signum))
    try:
        layout = StudyLayout(tmpfs / "study")
        layout.root.mkdir()
        guard = StorageGuard(tmpfs, layout, min_free_mb=2)
        guard("t", {})
        (tmpfs / "filler").write_bytes(b"\0" * 12 * MB)
        guard("t", {})
        assert interrupts == [signal.SIGINT] and guard.about_to_write_mb >= 12
        saved = pickle.dumps(guard)
        (tmpfs / "filler").unlink()  # space is back: about 16 MB free
        resumed = pickle.loads(saved)
        for epoch in range(2):  # the study's own epochs, 1 MB each
            (tmpfs / f"epoch{epoch}").write_bytes(b"\0" * MB)
            resumed("t", {})
        assert interrupts == [signal.SIGINT] and not resumed.tripped and resumed.about_to_write_mb < 2
    finally:
        signal.signal(signal.SIGINT, previous)
