"""The modalities besides the slide, as a cohort holds them, chosen by name.

Each entry of ``COHORT_MODALITIES`` says where a cohort keeps one modality, which cases have it,
each case's vector (``None``: the case lacks it), the vector's segment sizes (the model's input
shape), what a model trained on it needs a new cohort to match, and how ``validate`` checks its
files. The model side of the same name is ``modaltune.models.modality_encoders.MODALITY_ENCODERS``.

Most modalities are a case table, ``<name>.parquet`` with ``case_id`` and one numeric column per
feature (``CaseTableModality``): RNA (genes, grouped into pathways by ``gene_groups.json``) and
mutations (0/1 per gene of a panel). A case without a row lacks the modality; the model gives it
learned missing tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from modaltune.data.clinical import CLINICAL_COLUMNS, CLINICAL_VECTOR_SIZE, encode_clinical
from modaltune.data.layout import CohortLayout, ManifestError, read_gene_groups
from modaltune.data.tcga_tables import case_id_from_barcode
from modaltune.errors import InputError
from modaltune.registry import Registry

if TYPE_CHECKING:
    from modaltune.data.cohort import Cohort


class Findings(Protocol):
    """Where a modality's checks report (``validate``'s checker)."""

    require_complete: bool

    def problem(self, path: Path, where: str, field_name: str, message: str) -> None: ...

    def warning(self, path: Path, where: str, field_name: str, message: str) -> None: ...


class CohortModality(ABC):
    """One modality's cohort side; subclasses are registered in ``COHORT_MODALITIES``."""

    name: ClassVar[str]
    normalised: ClassVar[bool] = False  # z-scored with the training split's statistics (RNA)

    @abstractmethod
    def source(self, layout: CohortLayout) -> Path:
        """The file that holds the modality (named in messages)."""

    @abstractmethod
    def present(self, layout: CohortLayout) -> bool:
        """Whether the cohort has this modality at all."""

    @abstractmethod
    def cases(self, cohort: Cohort) -> frozenset[str]:
        """The cases that have it."""

    @abstractmethod
    def vector(self, cohort: Cohort, case_id: str) -> np.ndarray | None:
        """The case's float32 vector, or None when the case lacks the modality."""

    @abstractmethod
    def segments(self, cohort: Cohort) -> tuple[int, ...]:
        """Segment sizes of the vector (RNA: genes per pathway; a plain vector: its width)."""

    @abstractmethod
    def signature(self, cohort: Cohort) -> Any:
        """JSON that a cohort scored by a trained model must reproduce (the columns, in order)."""

    def signature_problem(self, cohort: Cohort, trained: Any) -> str | None:
        """Why ``cohort`` cannot feed a model trained with ``trained``, or None."""
        if self.signature(cohort) != trained:
            return f"{self.source(cohort.layout)}: {self.name} columns differ from the ones the model was trained with"
        return None

    def validate(self, layout: CohortLayout, case_ids: set[str] | None, findings: Findings) -> None:
        """Report every problem of the modality's files (nothing to check by default).

        A default hook, not an abstract method: a modality whose files need checks overrides it.
        """
        return  # explicit: a concrete no-op, not an abstract method left empty

    def check_trainable(self, cohort: Cohort, training_cases: list[str], fold: int) -> None:
        """Refuse, before any worker starts, a run whose training split has none of this modality."""
        source = self.source(cohort.layout)
        if not self.present(cohort.layout):
            raise InputError(f"model.modalities includes {self.name!r} but {source} does not exist")
        if not self.cases(cohort).intersection(training_cases):
            raise InputError(f"model.modalities includes {self.name!r} but no training case of fold {fold} has a row in {source}")


COHORT_MODALITIES: Registry[CohortModality] = Registry("modality")


def _registered(cls: type[CohortModality]) -> type[CohortModality]:
    COHORT_MODALITIES.register(cls.name)(cls())
    return cls


def modality_inputs(cohort: Cohort, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The segment sizes in ``cohort`` of each of ``names`` held here (the model's
    ``ModalTuneConfig.modality_inputs``; the slide, not a case vector, is skipped)."""
    return {name: COHORT_MODALITIES[name].segments(cohort) for name in names if name in COHORT_MODALITIES}


def normalised_modalities(names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are z-scored with the training split's statistics."""
    return [name for name in names if name in COHORT_MODALITIES and COHORT_MODALITIES[name].normalised]


@_registered
class ClinicalModality(CohortModality):
    """The clinical fields of ``slides.parquet`` (checked with the slide rows), every case."""

    name = "clinical"

    def source(self, layout: CohortLayout) -> Path:
        return layout.slides

    def present(self, layout: CohortLayout) -> bool:
        return True

    def cases(self, cohort: Cohort) -> frozenset[str]:
        return frozenset(cohort.case_ids)

    def vector(self, cohort: Cohort, case_id: str) -> np.ndarray:
        return encode_clinical(cohort.record(case_id).clinical)

    def segments(self, cohort: Cohort) -> tuple[int, ...]:
        return (CLINICAL_VECTOR_SIZE,)

    def signature(self, cohort: Cohort) -> Any:
        return list(CLINICAL_COLUMNS)


class CaseTableModality(CohortModality):
    """``<name>.parquet``: ``case_id`` and one numeric column per feature, one row per case."""

    label: ClassVar[str]  # how messages name the modality ("RNA")
    value_name: ClassVar[str]  # what its values are ("expression")

    def source(self, layout: CohortLayout) -> Path:
        return layout.root / f"{self.name}.parquet"

    def present(self, layout: CohortLayout) -> bool:
        return self.source(layout).exists()

    def columns(self, cohort: Cohort) -> list[str]:
        """The vector's columns, in order: the file's own order by default."""
        return [name for name in pq.read_schema(self.source(cohort.layout)).names if name != "case_id"]

    def cases(self, cohort: Cohort) -> frozenset[str]:
        return frozenset(self._table(cohort)[0]) if self.present(cohort.layout) else frozenset()

    def vector(self, cohort: Cohort, case_id: str) -> np.ndarray | None:
        rows, values = self._table(cohort)
        return values[rows[case_id]] if case_id in rows else None

    def segments(self, cohort: Cohort) -> tuple[int, ...]:
        return (len(self.columns(cohort)),)

    def _table(self, cohort: Cohort) -> tuple[dict[str, int], np.ndarray]:
        return cohort.case_table(self.source(cohort.layout), lambda: self.columns(cohort))

    def signature(self, cohort: Cohort) -> Any:
        return self.columns(cohort)

    def validate(self, layout: CohortLayout, case_ids: set[str] | None, findings: Findings) -> None:
        path = self.source(layout)
        if not path.exists():
            return
        try:
            table = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            findings.problem(path, "", "", f"not a readable Parquet file ({exc})")
            return
        schema = table.schema_arrow
        if "case_id" not in schema.names:
            findings.problem(path, "", "case_id", "required column is missing")
            return
        columns = [name for name in schema.names if name != "case_id"]
        for column in columns:
            if not is_numeric(schema.field(column).type):
                findings.problem(path, "", column, f"{self.value_name} must be numeric, got {schema.field(column).type}")
        present = self._check_rows(path, table, [c for c in columns if is_numeric(schema.field(c).type)], findings)
        self.check_columns(layout, columns, findings)
        if case_ids is not None:
            self._check_coverage(path, case_ids, present, findings)

    def check_columns(self, layout: CohortLayout, columns: list[str], findings: Findings) -> None:
        """Checks of the columns against other files (RNA: the gene group map)."""

    def value_problem(self, values: np.ndarray) -> np.ndarray:
        """Per value of a row, whether it is not a valid value of this modality."""
        return ~np.isfinite(values)

    def _check_rows(self, path: Path, table: pq.ParquetFile, numeric: list[str], findings: Findings) -> set[str]:
        """Stream the rows in batches: invalid values per case, duplicate cases. Returns the case ids."""
        seen: set[str] = set()
        for batch in table.iter_batches(batch_size=1024, columns=["case_id", *numeric]):
            case_ids = batch.column("case_id").to_pylist()
            values = np.column_stack(
                [np.zeros(len(case_ids))] + [batch.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in numeric]
            )[:, 1:]
            bad = self.value_problem(values)
            for row, case_id in enumerate(case_ids):
                if case_id in seen:
                    findings.problem(path, f"case {case_id}", "case_id", f"duplicate {self.label} row for this case")
                seen.add(str(case_id))
                if bad[row].any():
                    columns = [numeric[j] for j in np.flatnonzero(bad[row])]
                    findings.problem(path, f"case {case_id}", preview(columns), self.bad_value_message(len(columns)))
        return seen

    def bad_value_message(self, count: int) -> str:
        return f"NaN or Inf {self.value_name} in {count} column(s)"

    def _check_coverage(self, path: Path, case_ids: set[str], present: set[str], findings: Findings) -> None:
        without = sorted(case_ids - present)
        if findings.require_complete:
            for case_id in without:
                findings.problem(path, f"case {case_id}", "case_id", f"case has slides but no {self.label} row (complete cases required)")
        elif without:
            findings.warning(
                path, f"{len(without)} of {len(case_ids)} cases ({len(without) / len(case_ids):.0%})", "",
                f"no {self.label} row (e.g. {preview(without, 3)}): models with {self.label} give these cases a learned "
                f"missing-{self.label} token (validate --require-complete refuses them)",
            )


@_registered
class RnaModality(CaseTableModality):
    """Bulk RNA-seq (``rna.parquet``, one column per gene) grouped into pathways by
    ``gene_groups.json``; the vector is each pathway's genes in turn (a gene in two pathways
    appears twice) and is z-scored with the training split's statistics."""

    name = "rna"
    label = "RNA"
    value_name = "expression"
    normalised = True

    def source(self, layout: CohortLayout) -> Path:
        return layout.rna

    def columns(self, cohort: Cohort) -> list[str]:
        return [gene for genes in cohort.gene_groups.values() for gene in genes]

    def segments(self, cohort: Cohort) -> tuple[int, ...]:
        return tuple(len(genes) for genes in cohort.gene_groups.values())

    def signature(self, cohort: Cohort) -> Any:
        return cohort.gene_groups

    def signature_problem(self, cohort: Cohort, trained: Any) -> str | None:
        if cohort.gene_groups != trained:
            return f"{cohort.layout.gene_groups}: gene groups differ from the ones the model was trained with"
        return None

    def bad_value_message(self, count: int) -> str:
        return f"NaN or Inf expression in {count} gene(s)"

    def validate(self, layout: CohortLayout, case_ids: set[str] | None, findings: Findings) -> None:
        if not layout.rna.exists() and layout.gene_groups.exists():
            findings.warning(layout.gene_groups, "", "", "gene group map without rna.parquet (ignored)")
        super().validate(layout, case_ids, findings)

    def check_columns(self, layout: CohortLayout, columns: list[str], findings: Findings) -> None:
        groups_path = layout.gene_groups
        try:
            groups = read_gene_groups(groups_path)
        except ManifestError as exc:
            findings.problem(groups_path, "", "", str(exc).split(": ", 1)[-1] + " (rna.parquet needs a gene group map)")
            return
        for where, genes, message in gene_group_problems(groups, columns, layout.rna.name):
            findings.problem(groups_path, where, genes, message)


def gene_group_problems(groups: dict[str, list[str]], genes: list[str], table: str) -> list[tuple[str, str, str]]:
    """(where, genes, message) for each way a gene group map and an RNA table's gene columns
    disagree; ``table`` names the RNA table in the messages (the cohort's or the user's file)."""
    grouped = {gene for members in groups.values() for gene in members}
    ungrouped = [g for g in genes if g not in grouped]
    problems = [("", preview(ungrouped), f"{len(ungrouped)} RNA gene(s) of {table} are missing from the group map")] if ungrouped else []
    present = set(genes)
    for name, members in groups.items():
        absent = [g for g in members if g not in present]
        if not members:
            problems.append((f"group {name}", "", "group has no genes"))
        elif absent:
            problems.append((f"group {name}", preview(absent), f"{len(absent)} gene(s) of this group are not columns of {table}"))
    return problems


@_registered
class MutationModality(CaseTableModality):
    """Somatic mutation status of a gene panel (``mutations.parquet``: 1 = the case's tumour
    carries a non-silent mutation in the gene, 0 = sequenced and wild-type; a case without a
    row was not sequenced). ``modaltune import-h5 --mutations`` writes it from a table of that
    shape or from a cBioPortal MAF (``data_mutations.txt``)."""

    name = "mutations"
    label = "mutation"
    value_name = "mutation status"

    def value_problem(self, values: np.ndarray) -> np.ndarray:
        return (values != 0) & (values != 1)

    def bad_value_message(self, count: int) -> str:
        return f"mutation status must be 0 or 1, not in {count} gene(s)"


# MAF variant classes that do not change the protein (left out of a mutation panel's status).
SILENT_VARIANTS = frozenset({"Silent", "Intron", "3'UTR", "5'UTR", "3'Flank", "5'Flank", "IGR", "RNA"})


def read_mutation_table(
    path: Path, genes: list[str] | None = None, min_fraction: float = 0.05, sequenced: list[str] | None = None,
) -> pd.DataFrame:
    """A user's mutations as ``mutations.parquet`` holds them: either already a case x gene 0/1
    table (``case_id`` column; CSV or Parquet) or a MAF such as cBioPortal's ``data_mutations.txt``
    (``Hugo_Symbol``, ``Tumor_Sample_Barcode``, ``Variant_Classification``), pivoted to 1 where a
    case's tumour has a non-silent mutation in the gene. A MAF lists only mutations, so a sequenced
    tumour without any is absent from it: ``sequenced`` (``read_case_list`` of cBioPortal's
    ``cases_sequenced.txt``) names every sequenced sample, which then gets a row (of 0s where the
    MAF has nothing); without it, the MAF's own samples are taken as the sequenced ones. A TCGA
    sample barcode becomes its patient's (``TCGA-05-4244-01`` -> ``TCGA-05-4244``). The panel is
    ``genes``, or the genes mutated in at least ``min_fraction`` of the sequenced cases."""
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t", comment="#", low_memory=False)
    if "case_id" in table.columns:
        if sequenced is not None:
            raise InputError(f"{path}: a case x gene table says itself which cases were sequenced (its rows); a case list goes with a MAF")
        return table
    needed = ["Hugo_Symbol", "Tumor_Sample_Barcode"]
    if any(column not in table.columns for column in needed):
        raise InputError(f"{path}: neither a case x gene table (a case_id column) nor a MAF (columns {needed})")
    table = table.assign(case_id=_patients(table["Tumor_Sample_Barcode"].astype(str)))
    cases = sorted(table["case_id"].unique())
    if sequenced is not None:
        listed = set(_patients(pd.Series(sequenced, dtype=str)))
        unlisted = sorted(set(cases) - listed)
        if unlisted:
            raise InputError(f"{path}: {len(unlisted)} case(s) with mutations are not in the list of sequenced cases ({preview(unlisted)})")
        cases = sorted(listed)
    if "Variant_Classification" in table.columns:
        table = table[~table["Variant_Classification"].isin(SILENT_VARIANTS)]
    mutated = table.groupby("Hugo_Symbol")["case_id"].agg(set)
    if genes is None:
        genes = sorted(str(g) for g, carriers in mutated.items() if len(carriers) >= min_fraction * len(cases))
        if not genes:
            raise InputError(
                f"{path}: no gene is mutated in {min_fraction:.0%} of its {len(cases)} cases; name the panel with --mutation-genes"
            )
    status = {g: [int(c in mutated.get(g, set())) for c in cases] for g in genes}
    return pd.DataFrame({"case_id": cases, **status}).astype({g: np.int8 for g in genes})


def read_case_list(path: Path) -> list[str]:
    """The sample IDs of a cBioPortal case list (``case_lists/cases_sequenced.txt``: a
    ``case_list_ids:`` line, tab-separated), or of a plain file with one ID per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the case list ({exc})") from exc
    keyed = [line.split(":", 1)[1] for line in lines if line.startswith("case_list_ids:")]
    ids = keyed[0].split() if keyed else [line.strip() for line in lines if line.strip()]
    if not ids:
        raise InputError(f"{path}: the case list names no case (a 'case_list_ids:' line or one ID per line)")
    return ids


def _patients(barcodes: pd.Series) -> pd.Series:
    """TCGA sample barcodes as patient IDs; any other ID unchanged."""
    return barcodes.map(lambda barcode: case_id_from_barcode(barcode) or barcode)


def preview(names: list[str], limit: int = 5) -> str:
    """The first few names of a long list, so one message stays one line."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)
