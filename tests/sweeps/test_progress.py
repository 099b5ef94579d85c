"""Reading a study's progress record as another terminal would: whose driver is gone, and how it renders."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from modaltune.errors import InputError
from modaltune.sweeps.progress import STALE_AFTER_S, CellProgress, StageProgress, StudyProgress, read_progress, render


def _record(host: str, pid: int, age_s: float, state: str = "running") -> StudyProgress:
    now = 1_000_000.0
    cells = {
        "c000": CellProgress(
            levels={"modalities": "wsi"}, trials_total=2, finished=1, running=1, repetitions_done=7, repetitions_total=10,
            best=0.61, best_trial="a1",
        ),
        "c001": CellProgress(
            levels={"modalities": "wsi+rna"}, trials_total=2, finished=1, failed=1, repetitions_done=6, repetitions_total=6,
            best=0.72, best_trial="b1",
        ),
    }
    stage = StageProgress(metric="cv_c_index", mode="max", cells=cells, max_concurrent=2, started_at=now - 600, repetitions_this_run=12)
    return StudyProgress(study="s", state=state, host=host, pid=pid, started_at=now - 600, updated_at=now - age_s, stages={"search": stage})


def test_a_running_record_reads_as_interrupted_once_its_writer_is_gone() -> None:
    now = 1_000_000.0
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = socket.gethostname()
    assert _record(here, os.getpid(), 1.0).observed_state(now) == "running"
    assert _record(here, dead.pid, 1.0).observed_state(now) == "interrupted"  # same host: the pid says it
    assert _record("another-node", dead.pid, 10.0).observed_state(now) == "running"  # another host: only the heartbeat
    assert _record("another-node", dead.pid, STALE_AFTER_S + 1).observed_state(now) == "interrupted"
    assert _record(here, dead.pid, 1.0, state="finished").observed_state(now) == "finished"


def test_render_gives_counts_time_left_and_the_leading_cell(tmp_path: Path) -> None:
    record = _record("another-node", 1, 0.0)
    record.write(tmp_path / "progress.json")
    lines = render(read_progress(tmp_path), now=1_000_000.0)
    text = "\n".join(lines)
    assert lines[0] == "study s: running"
    # 13 of 16 repetitions in 600 s at 12 this run: 3 left take 150 s.
    assert "repetitions 13/16 (81%); trials 3/4 done (0 stopped early, 1 failed), 1 running, 0 pending" in text
    assert "left ~2m30s; leading c001 0.720 cv_c_index" in text
    assert "0.610 (a1)" in text and "0.720 (b1)" in text


def test_a_folder_without_a_record_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a study folder"):
        read_progress(tmp_path)
