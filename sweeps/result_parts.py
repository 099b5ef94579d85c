"""A keyed table that grows by appending: Parquet part files, merged in tiers, compacted at the end.

Why: a study's results grow to hundreds of thousands of rows, and rewriting the whole table at
every flush makes the driver's cost per result grow with the study (O(n^2) writes in all). Here
a flush writes only the rows that arrived since the last one, as a new part file under
``folder/`` (``part-L0-<seq>.parquet``); when ``fan_in`` parts of one level exist they are merged
into one part of the next level, up to ``top_level`` (a log-structured merge: each row is
rewritten at most ``top_level`` times, not n times, and no merge holds more than
``fan_in ** top_level`` flushes, so no flush waits long on one; top-level parts accumulate,
one per ``fan_in ** top_level`` flushes, until the compaction; at fan-in 4 the largest merge, of 16
flushes, stays under 100 ms at 2,000 trials: benchmarks/bench_driver.py). ``compact()`` writes the whole table, deduplicated, to one
Parquet file (``compacted``) and removes the parts it holds; a study does that when a stage's
Tune run ends.

Rows are keyed: a later version of a row (a resumed study re-reporting an epoch) replaces the
earlier one when the table is read, in part order. Every file is written by temp file and
rename, and the compacted file records the last part it holds, so a driver killed between a
write and a delete leaves a table that reads the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modaltune.atomic import write_parquet_atomic

logger = logging.getLogger(__name__)

PART = re.compile(r"part-L(\d+)-(\d{10})\.parquet")
THROUGH_KEY = b"modaltune.compacted_through"  # in the compacted file's metadata: the last part it holds


class PartitionedTable:
    def __init__(
        self, folder: Path, compacted: Path, key: Sequence[str], fan_in: int = 4, top_level: int = 2, sort_by_key: bool = True,
    ) -> None:
        """``sort_by_key=False`` keeps keys in the order they were first written instead."""
        self.folder = folder
        self.compacted = compacted
        self.key = list(key)
        self.fan_in = fan_in
        self.top_level = top_level
        self.sort_by_key = sort_by_key

    def parts(self) -> list[tuple[int, int, Path]]:
        """(sequence, level, path) of every part newer than the compacted file, oldest first."""
        through = self._compacted_through()
        found = []
        for path in self.folder.glob("part-L*.parquet") if self.folder.is_dir() else []:
            match = PART.fullmatch(path.name)
            if match and int(match.group(2)) > through:
                found.append((int(match.group(2)), int(match.group(1)), path))
        return sorted(found)

    def _compacted_through(self) -> int:
        if not self.compacted.exists():
            return -1
        metadata = pq.read_schema(self.compacted).metadata or {}
        return int(metadata.get(THROUGH_KEY, b"-1"))

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` as a new part: O(len(rows)), whatever the table's size; then merge a full tier."""
        if not rows:
            return
        parts = self.parts()
        sequence = max([p[0] for p in parts] + [self._compacted_through()]) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(self.folder / f"part-L0-{sequence:010d}.parquet", _table(pd.DataFrame(rows)))
        self._merge_full_tiers()

    def _merge_full_tiers(self) -> None:
        for level in range(self.top_level):
            tier = [p for p in self.parts() if p[1] == level]
            if len(tier) < self.fan_in:
                return
            # A tier's parts are consecutive in sequence (every newer part is of a lower level),
            # so the merged part takes the newest one's sequence and keeps the reading order.
            # Concatenated in order, not deduplicated: reads keep the last version of a key anyway.
            merged = pa.concat_tables([pq.read_table(path) for _, _, path in tier], promote_options="permissive")
            write_parquet_atomic(self.folder / f"part-L{level + 1}-{tier[-1][0]:010d}.parquet", merged)
            for _, _, path in tier:
                path.unlink(missing_ok=True)

    def exists(self) -> bool:
        """Whether anything has been written: the compacted file or a part."""
        return self.compacted.exists() or bool(self.parts())

    def read(self) -> pd.DataFrame:
        """The whole table, each key once (its latest version)."""
        files = ([self.compacted] if self.compacted.exists() else []) + [path for _, _, path in self.parts()]
        if not files:
            return pd.DataFrame()
        return self._deduplicated(files).to_pandas()

    def _deduplicated(self, files: list[Path]) -> pa.Table:
        tables = [pq.read_table(path) for path in files]
        frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        if self.sort_by_key:
            return _table(frame.drop_duplicates(self.key, keep="last").sort_values(self.key, kind="stable"))
        first_written = frame.groupby(self.key, sort=False).ngroup().rename("_first_written")
        latest = frame.join(first_written).drop_duplicates(self.key, keep="last")
        return _table(latest.sort_values("_first_written", kind="stable").drop(columns="_first_written"))

    def compact(self) -> None:
        """The whole table into ``compacted``; the parts it now holds are removed."""
        parts = self.parts()
        if not parts:
            return
        table = self._deduplicated(([self.compacted] if self.compacted.exists() else []) + [path for _, _, path in parts])
        metadata = (table.schema.metadata or {}) | {THROUGH_KEY: str(parts[-1][0]).encode()}
        write_parquet_atomic(self.compacted, table.replace_schema_metadata(metadata))
        for _, _, path in parts:
            path.unlink(missing_ok=True)
        logger.debug("compacted %d parts into %s (%d rows)", len(parts), self.compacted, table.num_rows)


RESULT_KEY = ("trial_id", "fold", "seed", "epoch")


def results_table(results: Path) -> PartitionedTable:
    """A study's results: ``results.parquet`` (compacted when a stage's run ends) plus the parts
    under ``results/`` written since; ``read()`` gives both as one table."""
    return PartitionedTable(results.with_suffix(""), results, RESULT_KEY)


TRIAL_KEY = ("trial_id",)


def trial_states_table(trials: Path) -> PartitionedTable:
    """A study's trial table: ``trials.parquet`` (compacted when a stage's run ends) plus parts
    under ``trial-states/`` holding the rows of the trials that changed since the last flush
    (``trials/`` beside it is the trials' run folders). Rows stay in the order trials started."""
    return PartitionedTable(trials.with_name("trial-states"), trials, TRIAL_KEY, sort_by_key=False)


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
