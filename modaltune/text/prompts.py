"""Per-case prompts written from the clinical record and ``labels.yaml``, as in ModalTune.

Three tasks, one prompt each per case: *general* (site, diagnosis, stage, TNM, survival),
*diagnosis* (site + diagnosis) and *survival* (site + stage + survival). Each prompt also
carries its structured fields, so the "no text" control (one-hot labels) sees exactly the
same information as a language model, without the language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modaltune.data.clinical import NOT_ASSESSED, is_missing
from modaltune.data.cohort import CaseRecord
from modaltune.data.labels import LabelSpec
from modaltune.errors import InputError

TASKS: tuple[str, ...] = ("general", "diagnosis", "survival")

STAGE_WORDS = {"Stage I": "stage one", "Stage II": "stage two", "Stage III": "stage three", "Stage IV": "stage four"}
NODE_WORDS = {"N0": "no regional lymph node metastasis", "N1": "N1", "N2": "N2", "N3": "N3"}
METASTASIS_WORDS = {"M0": "no distant metastasis", "M1": "distant metastasis present"}


@dataclass(frozen=True)
class Prompt:
    """A label written as text, with the structured fields it was written from."""

    text: str
    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SurvivalBins:
    """Quantile bins of survival time, fitted on a training split only.

    Edges are quantiles of the *uncensored* training times (as in discrete-time survival
    models such as PORPOISE and SurvPath), so each bin holds about the same number of deaths;
    the first bin starts at 0 and the last is open-ended.
    """

    edges: tuple[float, ...]  # n_bins + 1 values: 0, q1, ..., inf

    @classmethod
    def fit(cls, times: Sequence[float], events: Sequence[int], n_bins: int) -> SurvivalBins:
        times_arr, events_arr = np.asarray(times, dtype=float), np.asarray(events, dtype=int)
        uncensored = times_arr[events_arr == 1]
        if uncensored.size < n_bins:
            raise InputError(f"need at least {n_bins} deaths in the training split to make {n_bins} survival bins, got {uncensored.size}")
        inner = np.quantile(uncensored, np.linspace(0, 1, n_bins + 1)[1:-1])
        return cls(edges=(0.0, *map(float, inner), float("inf")))

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def bin_of(self, time: float) -> int:
        return int(np.clip(np.searchsorted(self.edges, time, side="right") - 1, 0, self.n_bins - 1))

    def bins_of(self, times: Sequence[float]) -> np.ndarray:
        return np.clip(np.searchsorted(self.edges, np.asarray(times, float), side="right") - 1, 0, self.n_bins - 1)


class PromptBuilder:
    """Writes every prompt of a study from the label descriptions and the fitted bins."""

    def __init__(self, labels: LabelSpec, bins: SurvivalBins) -> None:
        if bins.n_bins != labels.survival.n_bins:
            raise InputError(f"labels.yaml survival.n_bins is {labels.survival.n_bins} but {bins.n_bins} bins were fitted")
        self.labels = labels
        self.bins = bins

    def case_prompts(self, record: CaseRecord) -> tuple[Prompt, Prompt, Prompt]:
        """(general, diagnosis, survival) prompts of one case."""
        if record.subtype is None or record.event is None:
            raise InputError(f"case {record.case_id}: no subtype or survival event, which its prompts need")
        site = self._site(record.cohort)
        diagnosis = self._diagnosis(record.cohort, record.subtype)
        stage = _clinical_field(record.clinical, "stage", "Overall stage", STAGE_WORDS)
        tnm = [
            _clinical_field(record.clinical, "t_stage", "Tumor stage", {}),
            _clinical_field(record.clinical, "n_stage", "Lymph node status", NODE_WORDS),
            _clinical_field(record.clinical, "m_stage", "Distant metastasis", METASTASIS_WORDS),
        ]
        survival = self._survival_sentence(record.time, record.event)
        return (
            _join(site, diagnosis, stage, *tnm, survival),
            _join(site, diagnosis),
            _join(site, stage, survival),
        )

    def class_prompts(self, cohort: str) -> list[Prompt]:
        """One diagnosis prompt per subtype of ``cohort``, in labels.yaml order."""
        return [_join(self._site(cohort), self._diagnosis(cohort, s)) for s in self.labels.subtypes_of(cohort)]

    def bin_prompts(self, cohort: str) -> list[Prompt]:
        """One survival prompt per bin of ``cohort``, shortest survival first."""
        return [
            _join(self._site(cohort), Prompt(f"Survival status: {description}", (("survival_bin", str(k)),)))
            for k, description in enumerate(self.labels.survival.bins)
        ]

    def _site(self, cohort: str) -> Prompt:
        return Prompt(f"Cancer location: {self.labels.cohorts[cohort].site}", (("cohort", cohort),))

    def _diagnosis(self, cohort: str, subtype: str) -> Prompt:
        return Prompt(f"Cancer diagnosis: {self.labels.cohorts[cohort].subtypes[subtype]}", (("subtype", f"{cohort}/{subtype}"),))

    def _survival_sentence(self, time: float, event: int) -> Prompt:
        survival = self.labels.survival
        k = self.bins.bin_of(time)
        low, high = self.bins.edges[k], self.bins.edges[k + 1]
        status = survival.event_status if event else survival.censored_status
        if np.isinf(high):
            text = f"{status} after more than {low:.0f} months"
        else:
            text = survival.sentence.format(status=status, low=f"{low:.0f}", high=f"{high:.0f}")
        return Prompt(f"Survival status: {text}", (("survival_bin", str(k)), ("event", str(int(event)))))


def _clinical_field(clinical: dict, field: str, title: str, words: dict[str, str]) -> Prompt | None:
    """One clinical field as a phrase; None when it is missing or not assessed (left out of the prompt)."""
    value = clinical.get(field)
    if is_missing(value) or value == NOT_ASSESSED.get(field):
        return None
    text = str(value)
    return Prompt(f"{title}: {words.get(text, text)}", ((field, text),))


def _join(*parts: Prompt | None) -> Prompt:
    kept = [p for p in parts if p is not None]
    return Prompt("; ".join(p.text for p in kept), tuple(f for p in kept for f in p.fields))
