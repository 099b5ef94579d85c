"""Clinical fields of a case: their vocabulary and their numeric encoding.

TCGA clinical records are incomplete (GBMLGG has no AJCC stage, many cases are "NX"), so every
field may be missing; the encoding carries an explicit missing flag per field rather than
imputing silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

CLINICAL_COLUMNS: tuple[str, ...] = ("age", "sex", "stage", "t_stage", "n_stage", "m_stage")

# Ordinal vocabularies: position in the tuple is the ordinal value; X-codes mean "not assessed".
CATEGORICAL_VOCAB: dict[str, tuple[str, ...]] = {
    "sex": ("female", "male"),
    "stage": ("Stage I", "Stage II", "Stage III", "Stage IV"),
    "t_stage": ("T1", "T2", "T3", "T4"),
    "n_stage": ("N0", "N1", "N2", "N3"),
    "m_stage": ("M0", "M1"),
}
NOT_ASSESSED: dict[str, str] = {"t_stage": "TX", "n_stage": "NX", "m_stage": "MX"}

AGE_RANGE = (0.0, 120.0)

CLINICAL_VECTOR_SIZE = 2 * len(CLINICAL_COLUMNS)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def clinical_value_problem(field: str, value: Any) -> str | None:
    """Why ``value`` is not acceptable for ``field``, or None if it is (missing is acceptable)."""
    if is_missing(value):
        return None
    if field == "age":
        if not isinstance(value, (int, float, np.integer, np.floating)) or not AGE_RANGE[0] <= value <= AGE_RANGE[1]:
            return f"age must be a number of years in {AGE_RANGE}, got {value!r}"
        return None
    allowed = CATEGORICAL_VOCAB[field] + ((NOT_ASSESSED[field],) if field in NOT_ASSESSED else ())
    if value not in allowed:
        return f"{field} must be one of {list(allowed)} or empty, got {value!r}"
    return None


def encode_clinical(record: Mapping[str, Any]) -> np.ndarray:
    """Fixed-size float32 vector: one scaled value then one missing flag per clinical field.

    Ordinals are scaled to [0, 1] so fields weigh alike at initialisation; "not assessed"
    codes (TX/NX/MX) count as missing.
    """
    values = np.zeros(len(CLINICAL_COLUMNS), dtype=np.float32)
    missing = np.zeros(len(CLINICAL_COLUMNS), dtype=np.float32)
    for i, field in enumerate(CLINICAL_COLUMNS):
        value: Any = record.get(field)
        if is_missing(value) or value == NOT_ASSESSED.get(field):
            missing[i] = 1.0
        elif field == "age":
            values[i] = float(value) / AGE_RANGE[1]
        else:
            vocab = CATEGORICAL_VOCAB[field]
            values[i] = vocab.index(value) / max(len(vocab) - 1, 1)
    return np.concatenate([values, missing])
