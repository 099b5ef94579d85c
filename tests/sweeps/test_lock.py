"""One driver per study (sweeps/lock.py): held by a live process, taken over only from a dead one.

The holders are real processes (a record lock is the process's); the lease-only path, what a
file system without record locks (NFS without lockd, Lustre without ``flock``) leaves, is
forced by making ``lockf`` answer ENOLCK as such a file system does.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modaltune.sweeps import lock as study_lock
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.lock import STALE_AFTER_S, Lease, StudyLock, StudyLockedError, read_lease

HOLDER = """
import sys, time
from pathlib import Path
from modaltune.sweeps import lock
from modaltune.sweeps.layout import StudyLayout
if sys.argv[2] == "lease-only":
    def no_record_locks(*args):
        raise OSError(lock.errno.ENOLCK, "No locks available")
    lock.fcntl.lockf = no_record_locks
lock.StudyLock(StudyLayout(Path(sys.argv[1]))).acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(study: Path, mode: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(study), mode], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.parametrize("mode", ["record-lock", "lease-only"])
def test_a_live_driver_keeps_the_study_and_a_dead_one_loses_it(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if mode == "lease-only":
        def no_record_locks(*args: object) -> None:
            raise OSError(errno.ENOLCK, "No locks available")
        monkeypatch.setattr(study_lock.fcntl, "lockf", no_record_locks)
    layout = StudyLayout(tmp_path / "study")
    holder = _holder(layout.root, mode)
    try:
        with pytest.raises(StudyLockedError, match=f"pid {holder.pid} on .*driving it since"):
            StudyLock(layout).acquire()
    finally:
        _kill(holder)  # SIGKILL: no chance to release anything
    taken = StudyLock(layout)
    taken.acquire()  # its pid is gone from this host: provably dead
    lease = read_lease(layout.driver_lease)
    assert lease is not None and lease.pid == os.getpid()
    taken.release()
    assert not layout.driver_lease.exists()


def test_a_lease_from_another_host_is_respected_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    layout = StudyLayout(tmp_path / "study")
    layout.root.mkdir()
    now = time.time()
    other = Lease(host="another-node", pid=1, pid_started=None, since=now - 3600, heartbeat=now - 4, token="x")
    layout.driver_lease.write_text(json.dumps(dataclasses.asdict(other)))
    with pytest.raises(StudyLockedError, match="pid 1 on another-node.*heartbeat 4s ago"):
        StudyLock(layout).acquire()  # the record lock is free (another host may not enforce it): the lease still holds
    layout.driver_lease.write_text(json.dumps(dataclasses.asdict(other) | {"heartbeat": now - STALE_AFTER_S - 1}))
    taken = StudyLock(layout)
    taken.acquire()
    taken.release()
