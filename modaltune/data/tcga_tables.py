"""TCGA / cBioPortal slide tables as they come: their values mapped onto the cohort's vocabulary.

GDC and cBioPortal clinical exports write missing values as bracketed words ("[Not Available]"),
sex in capitals, AJCC stages with substages ("Stage IIIA", "T1b", "cM0 (i+)") and vital status
as words ("1:DECEASED"). One such word in the age column turns it into strings, and a strict
reader then reports every age as "not a number". ``normalise_tcga_table`` maps what is
unambiguous (every rule is listed in the README) and leaves anything else as it was, so the
validator still names it; ``case_id_from_barcode`` derives the patient from a TCGA barcode, and
``match_case_ids`` finds the case of an RNA or mutation row keyed by a sample barcode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from modaltune.data.clinical import CLINICAL_COLUMNS, is_missing

# Compared lower-cased and stripped; GDC's bracketed codes and cBioPortal's words.
MISSING_WORDS = frozenset(
    {
        "[not available]", "[not applicable]", "[discrepancy]", "[unknown]", "[not evaluated]",
        "[not reported]", "[completed]", "not reported", "not available", "unknown", "na", "n/a", "nan", "",
    }
)
SEX_WORDS = {"male": "male", "m": "male", "female": "female", "f": "female"}
EVENT_WORDS = {"1:deceased": 1, "deceased": 1, "dead": 1, "0:living": 0, "living": 0, "alive": 0}

# "Stage IIIA" -> "Stage III"; "Stage 0", "Stage X" and "IS" are not in the ordinal vocabulary.
_STAGE = re.compile(r"^stage\s+(iv|iii|ii|i)[a-c]?\d?$", re.IGNORECASE)
# "T1b", "pT2a", "cN1mi", "N0 (i+)", "cM0 (i+)", "M1a": prefix c/p/y/r, grade, then any suffix.
_TNM = {
    field: re.compile(rf"^[cpyr]*{letter}(x|\d)[a-z]*\d?\s*(\(.*\))?$", re.IGNORECASE)
    for field, letter in (("t_stage", "T"), ("n_stage", "N"), ("m_stage", "M"))
}
_TNM_MAX = {"t_stage": 4, "n_stage": 3, "m_stage": 1}
_TNM_MIN = {"t_stage": 1, "n_stage": 0, "m_stage": 0}
# cBioPortal's clinical column names (TCGA PanCancer Atlas studies) -> ours; a column we already
# have wins. TCGA-CDR's OS.time is in days and is not renamed (see ``missing_time_hint``).
CBIOPORTAL_COLUMNS = {
    "PATIENT_ID": "case_id", "OS_MONTHS": "time", "OS_STATUS": "event", "AGE": "age", "SEX": "sex",
    "AJCC_PATHOLOGIC_TUMOR_STAGE": "stage", "PATH_T_STAGE": "t_stage", "PATH_N_STAGE": "n_stage", "PATH_M_STAGE": "m_stage",
}
DAYS_COLUMNS = ("OS.time", "days_to_death", "days_to_last_follow_up")
_BARCODE = re.compile(r"^(TCGA-([A-Z0-9]{2})-[A-Z0-9]{4})", re.IGNORECASE)
# A sample or aliquot barcode: patient, sample type (two digits), vial letter, then the portion,
# analyte, plate and centre of an aliquot (TCGA-A1-A0SB-01A-11R-A144-07).
_SAMPLE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})([A-Z])?(?:-|$)", re.IGNORECASE)
# TCGA sample types that are a patient's tumour: 01 primary solid tumour, 02 recurrent, 03 primary
# blood-derived cancer, 05 additional new primary, 06 metastatic, ... 09, 40 recurrent blood-derived;
# 10-19 are normal tissue, 20 controls, 50 cell lines, 60-61 xenografts.
TUMOUR_SAMPLE_TYPES = frozenset([*range(1, 10), 40])


def case_id_from_barcode(slide_id: str) -> str | None:
    """``TCGA-A1-A0SB-01Z-00-DX1.<uuid>`` -> ``TCGA-A1-A0SB`` (the patient); None if not a barcode."""
    match = _BARCODE.match(slide_id) if isinstance(slide_id, str) else None
    return match.group(1).upper() if match else None


def sample_type(barcode: str) -> int | None:
    """``TCGA-A1-A0SB-06A...`` -> 6; None if not a sample or aliquot barcode."""
    match = _SAMPLE.match(barcode) if isinstance(barcode, str) else None
    return int(match.group(1)) if match else None


def sample_preference(barcode: str) -> tuple[int, str, str]:
    """Sort key among one patient's tumour samples: the primary tumour (01) first, then the lowest
    sample type, then vial A before B; the barcode itself breaks ties (aliquots of one vial)."""
    match = _SAMPLE.match(barcode)
    assert match is not None, barcode
    return int(match.group(1)), (match.group(2) or "").upper(), barcode


def match_case_ids(ids: Sequence[str], cases: Iterable[str]) -> list[str | None]:
    """Each id's case among ``cases``: the id itself, the id in another letter case, or the
    patient of a TCGA sample or aliquot barcode (``TCGA-A1-A0SB-01A`` -> ``TCGA-A1-A0SB``); None
    when none is (or when two cases differ only in letter case)."""
    exact = set(cases)
    folded: dict[str, list[str]] = {}
    for case in exact:
        folded.setdefault(case.lower(), []).append(case)

    def case_of(key: str) -> str | None:
        same = folded.get(key.lower(), [])
        return same[0] if len(same) == 1 else None

    def match(id_: str) -> str | None:
        if id_ in exact:
            return id_
        patient = case_id_from_barcode(id_)
        return case_of(id_) or (case_of(patient) if patient is not None else None)

    return [match(id_) for id_ in ids]


def site_from_barcode(slide_id: str) -> str | None:
    """``TCGA-A1-A0SB-...`` -> ``A1``, the tissue source site; None if not a barcode."""
    match = _BARCODE.match(slide_id) if isinstance(slide_id, str) else None
    return match.group(2).upper() if match else None


def tcga_clinical_value(field: str, value: Any) -> Any:
    """One clinical value in the cohort's vocabulary, missing (None), or unchanged if unknown."""
    if is_missing(value):
        return None
    text = str(value).strip()
    if text.lower() in MISSING_WORDS:
        return None
    if field == "age":
        try:
            return float(text)
        except ValueError:
            return value
    if field == "sex":
        return SEX_WORDS.get(text.lower(), value)
    if field == "stage":
        match = _STAGE.match(text)
        if match:
            return f"Stage {match.group(1).upper()}"
        return None if text.lower() in {"stage 0", "stage x", "is", "stage is"} else value
    if field == "t_stage" and re.match(r"^[cpyr]*tis\b", text, re.IGNORECASE):
        return None  # carcinoma in situ: not on the T1..T4 scale
    match = _TNM[field].match(text)
    if not match:
        return value
    grade = match.group(1).upper()
    letter = field[0].upper()
    if grade == "X":
        return f"{letter}X"
    number = int(grade)
    if not _TNM_MIN[field] <= number <= _TNM_MAX[field]:
        return None  # T0 (no evidence of primary tumour) has no place on the T1..T4 scale
    return f"{letter}{number}"


def rename_cbioportal_columns(slides: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """cBioPortal column names as ours (``CBIOPORTAL_COLUMNS``); returns the table and what was renamed."""
    renamed = {theirs: ours for theirs, ours in CBIOPORTAL_COLUMNS.items() if theirs in slides.columns and ours not in slides.columns}
    return slides.rename(columns=renamed), renamed


def missing_time_hint(columns: Iterable[str]) -> str:
    """What to do when ``time`` is missing but a survival time in days is there."""
    days = [c for c in DAYS_COLUMNS if c in set(columns)]
    return f"; {days[0]} is in days: add a time column in months ({days[0]} / 30.4375)" if days else ""


def normalise_tcga_table(slides: pd.DataFrame) -> pd.DataFrame:
    """The table with TCGA / cBioPortal values mapped (clinical fields, vital status, times).

    ``case_id`` and ``site`` (the tissue source site) are derived from TCGA barcodes in
    ``slide_id`` where the table has none.
    """
    slides = slides.copy()
    if "case_id" not in slides.columns:
        slides["case_id"] = [case_id_from_barcode(s) for s in slides["slide_id"]]
    if "site" not in slides.columns and all(site_from_barcode(s) for s in slides["slide_id"]):
        slides["site"] = [site_from_barcode(s) for s in slides["slide_id"]]
    if "stage" in slides.columns and "stage_detail" not in slides.columns:  # the substage, kept for the record
        slides["stage_detail"] = pd.Series(
            [
                str(v).strip() if tcga_clinical_value("stage", v) is not None and _STAGE.match(str(v).strip()) else None
                for v in slides["stage"]
            ],
            slides.index, object,
        )
    for column in CLINICAL_COLUMNS:
        if column in slides.columns:
            values = [tcga_clinical_value(column, v) for v in slides[column]]
            slides[column] = _numeric_or_object(values, slides.index) if column == "age" else pd.Series(values, slides.index, object)
    if "subtype" in slides.columns:  # unknown for new patients: "[Not Available]" like any other field
        slides["subtype"] = pd.Series(
            [None if is_missing(v) or str(v).strip().lower() in MISSING_WORDS else v for v in slides["subtype"]], slides.index, object
        )
    if "event" in slides.columns:
        slides["event"] = _numeric_or_object([EVENT_WORDS.get(str(v).strip().lower(), v) for v in slides["event"]], slides.index)
    if "time" in slides.columns:
        times = [np.nan if str(v).strip().lower() in MISSING_WORDS else v for v in slides["time"]]
        slides["time"] = _numeric_or_object(times, slides.index)
    return slides


def _numeric_or_object(values: list[Any], index: pd.Index) -> pd.Series:
    """Numbers where every value is one (missing -> NaN); otherwise the values as they are,
    so that the validator names the ones that are not."""
    raw = pd.Series(values, index=index, dtype=object)
    converted = pd.to_numeric(raw, errors="coerce")
    unconvertible = converted.isna() & ~raw.map(is_missing)
    return raw if unconvertible.any() else converted
