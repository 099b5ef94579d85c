"""Cohort format: slide table, memory-mapped tile features, RNA, labels as text, validation.

The names below are loaded on first use (PEP 562), so that importing one light submodule,
as the command line does to build its parser, does not import torch, scikit-learn and
every reader of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "modaltune.data.clinical": ("CLINICAL_COLUMNS", "CLINICAL_VECTOR_SIZE", "encode_clinical"),
    "modaltune.data.cohort": ("CaseRecord", "CaseSample", "Cohort"),
    "modaltune.data.features": ("FeatureFileError", "SlideFeatures", "read_slide_features", "write_slide_features"),
    "modaltune.data.folds": ("assign_case_folds",),
    "modaltune.data.h5_import": ("H5ImportError", "import_h5_cohort"),
    "modaltune.data.import_options": ("H5ImportOptions",),
    "modaltune.data.labels": ("LabelsFileError", "LabelSpec", "default_labels", "load_labels", "save_labels"),
    "modaltune.data.layout": ("CohortLayout", "CohortManifest", "ManifestError", "read_manifest"),
    "modaltune.data.modalities": ("modality_inputs",),
    "modaltune.data.synthetic": ("SynthConfig", "generate_cohort"),
    "modaltune.data.validate": ("CohortInvalidError", "Problem", "ValidationReport", "validate_cohort"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CLINICAL_COLUMNS",
    "CLINICAL_VECTOR_SIZE",
    "CaseRecord",
    "CaseSample",
    "Cohort",
    "CohortInvalidError",
    "CohortLayout",
    "CohortManifest",
    "FeatureFileError",
    "H5ImportError",
    "H5ImportOptions",
    "LabelSpec",
    "LabelsFileError",
    "ManifestError",
    "Problem",
    "SlideFeatures",
    "SynthConfig",
    "ValidationReport",
    "assign_case_folds",
    "default_labels",
    "encode_clinical",
    "generate_cohort",
    "import_h5_cohort",
    "load_labels",
    "modality_inputs",
    "read_manifest",
    "read_slide_features",
    "save_labels",
    "validate_cohort",
    "write_slide_features",
]

if TYPE_CHECKING:
    from modaltune.data.clinical import CLINICAL_COLUMNS, CLINICAL_VECTOR_SIZE, encode_clinical
    from modaltune.data.cohort import CaseRecord, CaseSample, Cohort
    from modaltune.data.features import FeatureFileError, SlideFeatures, read_slide_features, write_slide_features
    from modaltune.data.folds import assign_case_folds
    from modaltune.data.h5_import import H5ImportError, import_h5_cohort
    from modaltune.data.import_options import H5ImportOptions
    from modaltune.data.labels import LabelsFileError, LabelSpec, default_labels, load_labels, save_labels
    from modaltune.data.layout import CohortLayout, CohortManifest, ManifestError, read_manifest
    from modaltune.data.modalities import modality_inputs
    from modaltune.data.synthetic import SynthConfig, generate_cohort
    from modaltune.data.validate import CohortInvalidError, Problem, ValidationReport, validate_cohort


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
