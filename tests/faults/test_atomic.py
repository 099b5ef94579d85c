"""A writer killed mid-write leaves the previous version whole (temp file + rename)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from modaltune.atomic import write_text_atomic

WRITER = """
import sys, numpy as np, pyarrow as pa
from modaltune.atomic import write_parquet_atomic
target, version = sys.argv[1], 0
while True:
    version += 1
    rows = 400_000
    table = pa.table({"version": np.full(rows, version), "value": np.arange(rows, dtype=np.float64)})
    write_parquet_atomic(target, table)
    print(version, flush=True)
"""


def test_killed_writer_leaves_a_whole_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert writer.stdout is not None
        for _ in range(3):  # a few whole versions, then kill it somewhere inside the next write
            writer.stdout.readline()
        time.sleep(0.05)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
    table = pd.read_parquet(target)
    assert len(table) == 400_000 and table["version"].nunique() == 1
    assert (table["value"].to_numpy() == range(400_000)).all()


def test_atomic_files_are_as_readable_as_plain_ones(tmp_path: Path) -> None:
    """Results on shared storage must be readable by the cluster's other users, as the umask allows."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_text_atomic(tmp_path / "atomic.txt", "x")
    assert (tmp_path / "atomic.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
