"""The append-only results table: a flush writes only new rows, tiers merge, reads deduplicate by key, and no damaged file is believed."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from modaltune.sweeps.result_parts import PartitionedTable, trial_states_table


def _rows(trial: str, epochs: range, value: float) -> list[dict]:
    return [{"trial_id": trial, "fold": 0, "seed": 0, "epoch": e, "val_c_index": value} for e in epochs]


def test_appends_merge_in_tiers_and_read_keeps_the_latest_version(tmp_path: Path) -> None:
    keys = ["trial_id", "fold", "seed", "epoch"]
    table = PartitionedTable(tmp_path / "results", tmp_path / "results.parquet", keys, fan_in=3, top_level=2)
    for flush in range(21):
        table.append(_rows(f"t{flush}", range(3), 0.5))
        parts = table.parts()
        # Fewer than fan_in parts per merged level; one top-level part per fan_in ** 2 flushes.
        assert all(sum(1 for p in parts if p[1] == level) < 3 for level in range(2))
        assert sum(1 for p in parts if p[1] == 2) == (flush + 1) // 9
    table.append(_rows("t3", range(2), 0.9))  # a resumed study re-reports t3's first two epochs
    table.append([{"trial_id": "t0", "fold": 0, "seed": 0, "epoch": 9, "val_c_index": 0.1, "new_column": 1.0}])
    frame = table.read()
    assert len(frame) == 21 * 3 + 1 and not frame.duplicated(["trial_id", "fold", "seed", "epoch"]).any()
    t3 = frame[frame["trial_id"] == "t3"].set_index("epoch")["val_c_index"]
    assert list(t3) == [0.9, 0.9, 0.5]
    assert frame["new_column"].notna().sum() == 1  # columns that appear later are kept

    table.compact()
    assert table.parts() == [] and not list((tmp_path / "results").glob("*.parquet"))
    compacted = pd.read_parquet(tmp_path / "results.parquet")  # one file, as pandas / DuckDB / Polars read it
    pd.testing.assert_frame_equal(compacted.reset_index(drop=True), frame.reset_index(drop=True))
    assert ds.dataset(tmp_path / "results.parquet").count_rows() == len(frame)

    # After compaction new rows go to new parts again and read on top of the compacted file.
    table.append(_rows("t0", range(1), 0.7))
    again = table.read()
    assert len(again) == len(frame) and again.loc[(again["trial_id"] == "t0") & (again["epoch"] == 0), "val_c_index"].item() == 0.7


def test_a_compaction_interrupted_before_its_deletes_reads_the_same(tmp_path: Path) -> None:
    table = PartitionedTable(tmp_path / "results", tmp_path / "results.parquet", ["trial_id", "fold", "seed", "epoch"])
    table.append(_rows("a", range(3), 0.5))
    table.append(_rows("a", range(1), 0.8))
    before = table.read()
    kept = {p.name: p.read_bytes() for p in (tmp_path / "results").glob("*.parquet")}
    table.compact()
    for name, data in kept.items():  # as if the driver died after writing the compacted file
        (tmp_path / "results" / name).write_bytes(data)
    pd.testing.assert_frame_equal(table.read().reset_index(drop=True), before.reset_index(drop=True))
    assert table.parts() == []  # the compacted file says which parts it already holds


def test_the_trial_table_keeps_trials_in_the_order_they_started(tmp_path: Path) -> None:
    table = trial_states_table(tmp_path / "trials.parquet")
    assert not table.exists()
    table.append([{"trial_id": "zz", "state": "running"}, {"trial_id": "aa", "state": "pending"}])
    table.append([{"trial_id": "aa", "state": "running"}])
    table.append([{"trial_id": "zz", "state": "finished", "error": None}, {"trial_id": "mm", "state": "running"}])
    assert table.exists() and table.folder.name == "trial-states"  # trials/ is the run folders
    expected = [("zz", "finished"), ("aa", "running"), ("mm", "running")]
    assert list(table.read()[["trial_id", "state"]].itertuples(index=False, name=None)) == expected
    table.compact()
    assert list(pd.read_parquet(tmp_path / "trials.parquet")[["trial_id", "state"]].itertuples(index=False, name=None)) == expected


def _study_rows(trial: str) -> list[dict]:
    return [
        {"trial_id": trial, "fold": 0, "seed": 0, "epoch": e, "val_c_index": 0.5 + e / 100, "hostname": "node-1", "time_total_s": 3.5 * e}
        for e in range(5)
    ]


def test_no_damage_to_a_part_is_believed_and_none_is_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every single-byte change of a part, all through its data and footer: the table reads either
    the rows as written or leaves the part out with a warning naming it; never a changed value,
    a phantom row or a traceback."""
    table = PartitionedTable(tmp_path / "results", tmp_path / "results.parquet", ["trial_id", "fold", "seed", "epoch"])
    table.append(_study_rows("186548ab"))
    table.append(_study_rows("6ae2ef9d"))
    part = table.parts()[-1][2]
    written, original = table.read(), part.read_bytes()
    first_rows = written[written["trial_id"] == "186548ab"].reset_index(drop=True)
    left_out = 0
    for position in range(0, len(original), max(1, len(original) // 120)):  # every part of the file, 120 changes
        damaged = bytearray(original)
        damaged[position] ^= 0x5A
        part.write_bytes(bytes(damaged))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="modaltune.sweeps.result_parts"):
            read = table.read()
        if len(read) == len(first_rows):
            pd.testing.assert_frame_equal(read.reset_index(drop=True), first_rows)
            assert part.name in caplog.text and "damaged" in caplog.text
            left_out += 1
        else:
            pd.testing.assert_frame_equal(read.reset_index(drop=True), written.reset_index(drop=True))
    assert left_out > 25  # most bytes of a part are its data: their damage is seen
    part.write_bytes(original[: len(original) // 2])  # truncated, as by a full disk before atomic writes
    assert len(table.read()) == len(first_rows)


def test_the_driver_sets_damaged_files_aside_and_old_files_read_as_they_are(tmp_path: Path) -> None:
    table = PartitionedTable(tmp_path / "results", tmp_path / "results.parquet", ["trial_id", "fold", "seed", "epoch"])
    table.append(_study_rows("aaaaaaaa"))
    table.compact()
    table.append(_study_rows("bbbbbbbb"))
    compacted = tmp_path / "results.parquet"
    compacted.write_bytes(compacted.read_bytes()[:-20])  # torn footer
    table.set_aside_damaged()
    assert not compacted.exists() and len(list((tmp_path / "set-aside").glob("damaged-*/results.parquet"))) == 1
    assert set(table.read()["trial_id"]) == {"bbbbbbbb"}
    pq.write_table(pa.Table.from_pylist(_study_rows("cccccccc")), compacted)  # written before checksums
    assert set(table.read()["trial_id"]) == {"bbbbbbbb", "cccccccc"}
