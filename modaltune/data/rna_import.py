"""The user's RNA table and gene-group map, read and checked by ``import-h5`` before any slide is
converted; every problem names the user's files (not the cohort's ``rna.parquet``).

A row reaches a case of the slide table by its ``case_id``: the case itself, the case in another
letter case, or a TCGA sample or aliquot barcode read as its patient (``TCGA-A1-A0SB-01A`` ->
``TCGA-A1-A0SB``, as the mutation import reads them: ``modaltune.data.tcga_tables``). Samples that
are not a tumour (TCGA sample types 10-19 normal tissue, controls, cell lines) are left out: a
case's RNA is its tumour's. A patient with several tumour samples keeps one, the primary tumour
(-01) first (``sample_preference``), and a log line says which. Rows for cases without slides are
left out with one warning line.

A table whose ids do not correspond to the slide table's is refused: when under half of the cases
get a row *and* under half of the table's rows match a case. A real table fails at most one of the
two: a larger study's table used for a subset of its cases covers most cases, and a table for a
subset of the cases (TCGA lacks RNA for about one case in six) matches with most of its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from modaltune.data.layout import read_gene_groups
from modaltune.data.modalities import gene_group_problems, preview
from modaltune.data.tcga_tables import TUMOUR_SAMPLE_TYPES, match_case_ids, sample_preference, sample_type
from modaltune.errors import InputError

logger = logging.getLogger(__name__)

MIN_MATCHED = 0.5  # of the cases with a row, or of the table's rows (see the module docstring)


class RnaInputError(InputError):
    """The user's RNA table or gene-group map cannot be imported; the message names them."""


@dataclass(frozen=True)
class RnaInput:
    """What the cohort's ``rna.parquet`` and ``gene_groups.json`` will hold."""

    table: pd.DataFrame  # case_id (the slide table's) + one column per gene, one row per case
    groups: dict[str, list[str]]


def read_rna_input(rna: Path, gene_groups: Path, case_ids: Iterable[str], slides: Path) -> RnaInput:
    """The RNA of the slide table's cases (``case_ids``, from ``slides``), checked whole.

    Raises ``RnaInputError`` listing every problem, each naming the file it is in.
    """
    groups = read_gene_groups(gene_groups)
    table = _read_table(rna)
    if "case_id" not in table.columns:
        columns = preview([str(c) for c in table.columns])
        raise RnaInputError(f"{rna}: no case_id column (columns: {columns}); name the column of case ids case_id")
    cases = sorted(set(case_ids))
    ids = table["case_id"].astype(str).str.strip()
    matched = pd.Series(match_case_ids(ids.tolist(), cases), index=table.index, dtype=object)
    _refuse_unrelated(rna, slides, ids, matched, cases)
    unknown = ids[matched.isna()].tolist()
    if unknown:
        logger.warning("%s: %d RNA row(s) for no case of %s left out (e.g. %s)", rna, len(unknown), slides, preview(unknown, 3))
    not_tumour = matched.notna() & ids.map(lambda i: sample_type(i) not in (None, *TUMOUR_SAMPLE_TYPES))
    if not_tumour.any():
        logger.warning(
            "%s: %d RNA row(s) are TCGA samples of normal tissue or controls (sample type 10-29, 50+), not a tumour: left out (e.g. %s)",
            rna, int(not_tumour.sum()), preview(ids[not_tumour].tolist(), 3),
        )
    keep = matched.notna() & ~not_tumour
    table, ids, matched = table[keep], ids[keep], matched[keep]
    problems: list[str] = []
    chosen = _one_sample_per_case(rna, ids, matched, problems)
    genes = [c for c in table.columns if c != "case_id"]
    problems += _value_problems(rna, table.loc[chosen, genes], ids[chosen])
    table = table.loc[chosen].assign(case_id=matched[chosen].to_numpy()).reset_index(drop=True)
    renamed = [f"{i} -> {c}" for i, c in zip(ids[chosen], matched[chosen], strict=True) if i != c]
    if renamed:
        logger.info("%s: %d RNA id(s) read as a case of %s (e.g. %s)", rna, len(renamed), slides, preview(renamed, 3))
    problems += [
        f"{gene_groups}: {f'{where}: ' if where else ''}{message}{f' ({names})' if names else ''}"
        for where, names, message in gene_group_problems(groups, [str(g) for g in genes], rna.name)
    ]
    if problems:
        raise RnaInputError(f"cannot import the RNA: {len(problems)} problem(s), nothing written:\n  " + "\n  ".join(problems))
    return RnaInput(table, groups)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",", dtype={"case_id": str})
    except FileNotFoundError as exc:
        raise RnaInputError(f"{path}: file not found") from exc
    except (pd.errors.EmptyDataError, pd.errors.ParserError, pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        raise RnaInputError(f"{path}: not a readable RNA table ({exc})") from exc


def _refuse_unrelated(rna: Path, slides: Path, ids: pd.Series, matched: pd.Series, cases: list[str]) -> None:
    """A table keyed by something other than the slide table's cases (see the module docstring)."""
    covered = set(matched.dropna())
    rows = int(matched.notna().sum())
    if covered and (len(covered) >= MIN_MATCHED * len(cases) or rows >= MIN_MATCHED * len(ids)):
        return
    raise RnaInputError(
        f"{rna}: only {rows} of its {len(ids)} row(s) match a case of {slides} ({len(covered)} of the {len(cases)} cases would have "
        f"RNA): its case_id values look like {preview(ids[matched.isna()].tolist(), 3)}, the cases like "
        f"{preview([c for c in cases if c not in covered], 3)}; key the table by the slide table's case_id (or TCGA sample barcodes)"
    )


def _one_sample_per_case(rna: Path, ids: pd.Series, matched: pd.Series, problems: list[str]) -> list[int]:
    """The row kept for each case (index labels): TCGA samples by ``sample_preference``; two rows
    of one case that are not two samples of it are a problem."""
    chosen, several = [], []
    for case, rows in ids.groupby(matched, sort=False):
        if len(rows) == 1:
            chosen.append(rows.index[0])
        elif rows.map(sample_type).notna().all() and rows.str.upper().is_unique:
            ranked = sorted(rows.index, key=lambda label: sample_preference(rows[label]))
            chosen.append(ranked[0])
            several.append(f"{case}: {rows[ranked[0]]} over {', '.join(rows[label] for label in ranked[1:])}")
        else:
            problems.append(f"{rna}: {len(rows)} rows for case {case} ({preview(rows.tolist(), 3)}): one row per case")
    if several:
        logger.info(
            "%s: %d case(s) have RNA of several tumour samples; kept one each, the primary tumour (-01) first, then the lowest "
            "sample type and vial (%s)", rna, len(several), preview(several, 3),
        )
    return chosen


def _value_problems(rna: Path, values: pd.DataFrame, ids: pd.Series) -> list[str]:
    """Expression must be numbers, and finite (the validator's rule for ``rna.parquet``); rows
    are named by the ids the user's file has."""
    text = [str(g) for g in values.columns if not pd.api.types.is_numeric_dtype(values[g]) or pd.api.types.is_bool_dtype(values[g])]
    problems = [f"{rna}: {len(text)} column(s) are not numbers ({preview(text, 3)}): expression must be numeric"] if text else []
    numeric = [g for g in values.columns if str(g) not in text]
    bad = ~np.isfinite(values[numeric].to_numpy(np.float64))
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows):
        examples = [f"{ids.iloc[r]}: {preview([str(numeric[j]) for j in np.flatnonzero(bad[r])], 3)}" for r in rows[:3]]
        problems.append(f"{rna}: {len(rows)} row(s) have NaN or Inf expression ({'; '.join(examples)}{'; ...' if len(rows) > 3 else ''})")
    return problems
