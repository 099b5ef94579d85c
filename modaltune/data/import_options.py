"""What ``import-h5`` can be asked to do: its options and their choices.

Kept apart from the importer, which reads h5, Parquet and torch files, so that the command
line can build its parser (choices, defaults, help) without importing any of that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class H5ImportOptions:
    labels: Path | None = None
    rna: Path | None = None
    gene_groups: Path | None = None
    mutations: Path | None = None  # case x gene 0/1 table or a MAF (modalities.read_mutation_table)
    mutation_genes: list[str] | None = None  # the panel; None: the genes mutated in 5% of the MAF's cases
    sequenced_cases: Path | None = None  # with a MAF: cBioPortal's cases_sequenced.txt (who was sequenced)
    n_folds: int = 5
    seed: int = 0
    tile_size_px: int | None = None  # level-0 pixels per tile of files without attributes; None: the slide table's tile_size_px, else 256
    clinical_dialect: str = "tcga"  # "tcga": map TCGA / cBioPortal values (README); "strict": take them as they are
    zero_time: str = "refuse"  # a survival time of 0 (TCGA's OS.time = 0): "refuse", "drop" the slides, or "epsilon"
    overwrite: bool = False
    folds_by: str = "case"  # "site": no tissue source site in two folds (needs a site column or TCGA barcodes)
    for_prediction: bool = False  # new patients for `predict`: subtype, time, event optional; no folds; cannot be trained on
    feature_format: str | None = None  # a name of FEATURE_FORMATS; None: detected from the folder


CLINICAL_DIALECTS = ("tcga", "strict")
FOLD_GROUPINGS = ("case", "site")
ZERO_TIME_POLICIES = ("refuse", "drop", "epsilon")
ZERO_TIME_EPSILON = 0.01  # months (about seven hours): an event on the day of diagnosis, ordered first
