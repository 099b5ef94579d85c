"""Cohort format: slide table, memory-mapped tile features, RNA, labels as text, validation."""

from modaltune.data.clinical import CLINICAL_COLUMNS, CLINICAL_VECTOR_SIZE, encode_clinical
from modaltune.data.cohort import CaseRecord, CaseSample, Cohort
from modaltune.data.features import FeatureFileError, SlideFeatures, read_slide_features, write_slide_features
from modaltune.data.folds import assign_case_folds
from modaltune.data.h5_import import H5ImportError, H5ImportOptions, import_h5_cohort
from modaltune.data.labels import LabelsFileError, LabelSpec, default_labels, load_labels, save_labels
from modaltune.data.layout import CohortLayout, CohortManifest, ManifestError, read_manifest
from modaltune.data.modalities import modality_inputs
from modaltune.data.synthetic import SynthConfig, generate_cohort
from modaltune.data.validate import CohortInvalidError, Problem, ValidationReport, validate_cohort

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
