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

Every file carries a checksum of its content (column names and types, every value, and the
part the compacted file holds through) in its Parquet metadata, verified on every read: a file
a disk or a person damaged (truncated, one byte flipped) is left out of what is read with one
warning naming it, never believed (a flipped byte in a trial id would add phantom rows, one in a
metric would change it silently) and never a traceback; ``set_aside_damaged()`` moves it out
of the way. Its rows are the study's to rebuild (sweeps/results.py: from the trials' own
records). Files written before checksums are read as they are.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
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
CHECKSUM_KEY = b"modaltune.sha256"  # in every file's metadata: see content_digest


class DamagedFileError(ValueError):
    """A table file that cannot be read, or whose content does not match its checksum."""


def content_digest(table: pa.Table, through: bytes = b"") -> str:
    """sha256 of the column names and types, every value (pandas' per-row hashes, which read the
    same from any chunking, null buffer or row-group layout of equal values) and ``through``."""
    digest = hashlib.sha256(repr([(field.name, str(field.type)) for field in table.schema]).encode() + b"|" + through)
    digest.update(pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_checked(path: Path, table: pa.Table, through: int | None = None) -> None:
    """``table`` at ``path`` (temp file and rename), its metadata only its checksum (and ``through``)."""
    extra = {THROUGH_KEY: str(through).encode()} if through is not None else {}
    clean = _plain(table)
    checksum = content_digest(clean, extra.get(THROUGH_KEY, b"")).encode()
    write_parquet_atomic(path, clean.replace_schema_metadata(extra | {CHECKSUM_KEY: checksum}))


def read_checked(path: Path) -> pa.Table:
    """The table at ``path`` without its metadata, its checksum verified; ``DamagedFileError``
    saying what is wrong (any failure to decode damaged bytes is one)."""
    try:
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        table = _plain(table)
        if CHECKSUM_KEY in metadata and content_digest(table, metadata.get(THROUGH_KEY, b"")) != metadata[CHECKSUM_KEY].decode():
            raise DamagedFileError("its content does not match its checksum")
    except DamagedFileError:
        raise
    except Exception as exc:  # whatever damaged bytes make pyarrow or pandas raise
        raise DamagedFileError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    return table


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
        """The last part the compacted file holds (its checksum covers it, verified when it is read)."""
        if not self.compacted.exists():
            return -1
        try:
            return int((pq.read_schema(self.compacted).metadata or {}).get(THROUGH_KEY, b"-1"))
        except (OSError, pa.ArrowException, ValueError):  # damaged: read() leaves it out, set_aside_damaged() moves it
            return -1

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` as a new part: O(len(rows)), whatever the table's size; then merge a full tier."""
        if not rows:
            return
        parts = self.parts()
        sequence = max([p[0] for p in parts] + [self._compacted_through()]) + 1
        self.folder.mkdir(parents=True, exist_ok=True)
        write_checked(self.folder / f"part-L0-{sequence:010d}.parquet", _table(pd.DataFrame(rows)))
        self._merge_full_tiers()

    def _merge_full_tiers(self) -> None:
        for level in range(self.top_level):
            tier = [p for p in self.parts() if p[1] == level]
            if len(tier) < self.fan_in:
                return
            # A tier's parts are consecutive in sequence (every newer part is of a lower level),
            # so the merged part takes the newest one's sequence and keeps the reading order.
            # Concatenated in order, not deduplicated: reads keep the last version of a key anyway.
            # A damaged part is set aside (only the driver, which holds the study, merges).
            tables = self._readable([path for _, _, path in tier], set_aside=True)
            if tables:
                merged = pa.concat_tables(tables, promote_options="permissive")
                write_checked(self.folder / f"part-L{level + 1}-{tier[-1][0]:010d}.parquet", merged)
            for _, _, path in tier:
                path.unlink(missing_ok=True)

    def exists(self) -> bool:
        """Whether anything has been written: the compacted file or a part."""
        return self.compacted.exists() or bool(self.parts())

    def read(self) -> pd.DataFrame:
        """The whole table, each key once (its latest version); damaged files left out, each with a warning."""
        tables = self._read_all(set_aside=False)
        return self._deduplicated(tables).to_pandas() if tables else pd.DataFrame()

    def set_aside_damaged(self) -> None:
        """Move every damaged file into ``set-aside/`` beside the table, one warning each. Only for
        the driver holding the study (a reader leaves them out), as are merges, ``compact`` and ``drop``."""
        self._read_all(set_aside=True)

    def _files(self) -> list[Path]:
        return ([self.compacted] if self.compacted.exists() else []) + [path for _, _, path in self.parts()]

    def _read_all(self, set_aside: bool) -> list[pa.Table]:
        return self._readable(self._files(), set_aside)

    def _readable(self, files: list[Path], set_aside: bool) -> list[pa.Table]:
        """The whole ones of ``files``, in order; each damaged one warned about (and set aside)."""
        tables = []
        for path in files:
            try:
                tables.append(read_checked(path))
            except DamagedFileError as exc:
                self._damaged(path, str(exc), set_aside)
        return tables

    def _damaged(self, path: Path, why: str, set_aside: bool) -> None:
        if not set_aside:
            logger.warning("%s is damaged (%s): left out of what is read", path, why)
            return
        aside = self.compacted.parent / "set-aside" / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}" / path.name
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, aside)
        logger.warning("%s is damaged (%s): set aside as %s; the study rebuilds its rows from the trials' own records", path, why, aside)

    def _deduplicated(self, tables: list[pa.Table]) -> pa.Table:
        if not tables:
            return pa.table({})
        frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        if self.sort_by_key:
            return _table(frame.drop_duplicates(self.key, keep="last").sort_values(self.key, kind="stable"))
        first_written = frame.groupby(self.key, sort=False).ngroup().rename("_first_written")
        latest = frame.join(first_written).drop_duplicates(self.key, keep="last")
        return _table(latest.sort_values("_first_written", kind="stable").drop(columns="_first_written"))

    def compact(self) -> None:
        """The whole table into ``compacted``; the parts it now holds are removed."""
        parts = self.parts()
        if parts:
            self._rewrite(self._deduplicated(self._read_all(set_aside=True)), parts)

    def drop(self, column: str, values: set[Any]) -> None:
        """Remove every row whose ``column`` is one of ``values`` (rows of trials set aside), by
        compacting the rest; nothing is written when no row matches."""
        parts = self.parts()
        table = self._deduplicated(self._read_all(set_aside=True))
        if column not in table.column_names:
            return
        frame = table.to_pandas()
        kept = frame[~frame[column].isin(values)]
        if len(kept) < len(frame):
            self._rewrite(_table(kept), parts)

    def _rewrite(self, table: pa.Table, parts: list[tuple[int, int, Path]]) -> None:
        """``table`` as the compacted file, holding ``parts``, which are then removed."""
        write_checked(self.compacted, table, through=max([p[0] for p in parts] + [self._compacted_through()]))
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


def _plain(table: pa.Table) -> pa.Table:
    """``table`` without metadata: the values alone are the table (pandas reads them the same)."""
    return table.replace_schema_metadata(None)
