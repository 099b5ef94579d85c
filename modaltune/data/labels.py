"""``labels.yaml``: every label of a cohort as natural language.

ModalTune encodes labels as text with a language model, so each class and each survival bin
needs a description. The file is per cohort folder and covers every cancer type in it, so a
pan-cancer model scores each slide only against its own cancer type's classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modaltune.atomic import write_text_atomic
from modaltune.data.tcga import TCGA_COHORTS
from modaltune.errors import InputError, describe_validation_error, read_yaml_mapping


class CohortLabels(BaseModel):
    """One cancer type: its anatomical site and subtype -> description."""

    model_config = ConfigDict(extra="forbid")
    site: str = Field(min_length=1)
    subtypes: dict[str, str] = Field(min_length=1)


class SurvivalLabels(BaseModel):
    """How survival is written as text: quantile bins of follow-up time.

    ``sentence`` is filled per case with ``status`` (from ``event_status``/``censored_status``)
    and the bin's ``low``/``high`` months; the bin edges are computed on the training split.
    ``bins`` describes each bin, shortest survival first.
    """

    model_config = ConfigDict(extra="forbid")
    n_bins: int = Field(default=4, ge=2)
    sentence: str = "{status} between {low} and {high} months"
    event_status: str = "The patient died"
    censored_status: str = "The patient was alive at last follow-up"
    bins: list[str]

    @field_validator("bins")
    @classmethod
    def _non_empty_descriptions(cls, bins: list[str]) -> list[str]:
        if any(not text.strip() for text in bins):
            raise ValueError("every survival bin needs a non-empty description")
        return bins

    def model_post_init(self, context: object, /) -> None:
        if len(self.bins) != self.n_bins:
            raise ValueError(f"survival.bins has {len(self.bins)} descriptions but n_bins is {self.n_bins}")


class LabelSpec(BaseModel):
    """The whole ``labels.yaml``."""

    model_config = ConfigDict(extra="forbid")
    cohorts: dict[str, CohortLabels] = Field(min_length=1)
    survival: SurvivalLabels

    def subtypes_of(self, cohort: str) -> list[str]:
        return list(self.cohorts[cohort].subtypes)


DEFAULT_SURVIVAL_BINS = [
    "very short survival, a poor prognosis",
    "short survival, an intermediate-poor prognosis",
    "long survival, an intermediate-good prognosis",
    "very long survival, a good prognosis",
]


class LabelsFileError(InputError):
    """``labels.yaml`` is missing, unreadable or does not match the schema."""


def load_labels(path: str | os.PathLike[str]) -> LabelSpec:
    path = Path(path)
    raw = read_yaml_mapping(path, "labels file", LabelsFileError)
    try:
        return LabelSpec.model_validate(raw)
    except ValidationError as exc:
        raise LabelsFileError(f"{path}: {describe_validation_error(exc)}") from exc


def save_labels(path: str | os.PathLike[str], spec: LabelSpec) -> None:
    text = yaml.safe_dump(spec.model_dump(), sort_keys=False, allow_unicode=True, width=100)
    write_text_atomic(path, text)


def default_labels(cohorts: list[str]) -> LabelSpec:
    """Label descriptions for known TCGA projects; raises naming any unknown cohort."""
    unknown = [name for name in cohorts if name not in TCGA_COHORTS]
    if unknown:
        raise LabelsFileError(
            f"no built-in label descriptions for cohort(s) {unknown}; known: {sorted(TCGA_COHORTS)}. "
            "Write a labels.yaml for them."
        )
    return LabelSpec(
        cohorts={
            name: CohortLabels(
                site=TCGA_COHORTS[name].site,
                subtypes={s.name: s.description for s in TCGA_COHORTS[name].subtypes},
            )
            for name in cohorts
        },
        survival=SurvivalLabels(bins=list(DEFAULT_SURVIVAL_BINS)),
    )
