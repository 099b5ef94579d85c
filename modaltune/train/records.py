"""Per-epoch result rows in Parquet, upserted atomically so readers never see a torn file.

A restarted or resumed run reports some epochs again; upserting on the key columns keeps each
epoch once, with the latest values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from modaltune.atomic import write_parquet_atomic


def upsert_epoch_rows(path: Path, rows: Sequence[Mapping[Any, Any]], key: Sequence[str] = ("epoch",)) -> pd.DataFrame:
    """Merge ``rows`` (records: column -> value) into the table at ``path`` (replacing rows with the same key); return it."""
    new = pd.DataFrame(list(rows))
    if path.exists():
        old = pd.read_parquet(path)
        merged = pd.concat([old, new], ignore_index=True).drop_duplicates(subset=list(key), keep="last")
    else:
        merged = new
    merged = merged.sort_values(list(key)).reset_index(drop=True)
    write_parquet_atomic(path, pa.Table.from_pandas(merged, preserve_index=False))
    return merged
