"""What we know about the TCGA projects ModalTune is evaluated on.

Used as the default label descriptions for synthetic cohorts and for imported cohorts whose
user gives no ``labels.yaml``. Prevalences are rough TCGA class frequencies, so synthetic
cohorts are as imbalanced as the real ones (RCC: KICH is rare).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SubtypeInfo:
    name: str
    description: str
    prevalence: float


@dataclass(frozen=True)
class CohortInfo:
    name: str
    site: str
    subtypes: tuple[SubtypeInfo, ...]
    has_ajcc_stage: bool = True


TCGA_COHORTS: dict[str, CohortInfo] = {
    info.name: info
    for info in (
        CohortInfo(
            "BRCA",
            "breast",
            (
                SubtypeInfo("IDC", "invasive ductal carcinoma of the breast", 0.8),
                SubtypeInfo("ILC", "invasive lobular carcinoma of the breast", 0.2),
            ),
        ),
        CohortInfo(
            "NSCLC",
            "lung",
            (
                SubtypeInfo("LUAD", "adenocarcinoma of the lung", 0.5),
                SubtypeInfo("LUSC", "squamous cell carcinoma of the lung", 0.5),
            ),
        ),
        CohortInfo(
            "RCC",
            "kidney",
            (
                SubtypeInfo("KIRC", "clear cell renal cell carcinoma", 0.55),
                SubtypeInfo("KIRP", "papillary renal cell carcinoma", 0.3),
                SubtypeInfo("KICH", "chromophobe renal cell carcinoma", 0.15),
            ),
        ),
        CohortInfo(
            "GBMLGG",
            "brain",
            (
                SubtypeInfo("GBM", "glioblastoma multiforme", 0.4),
                SubtypeInfo("LGG", "lower grade glioma", 0.6),
            ),
            has_ajcc_stage=False,
        ),
        CohortInfo(
            "COADREAD",
            "colorectum",
            (
                SubtypeInfo("COAD", "adenocarcinoma of the colon", 0.7),
                SubtypeInfo("READ", "adenocarcinoma of the rectum", 0.3),
            ),
        ),
        CohortInfo(
            "BLCA",
            "bladder",
            (
                SubtypeInfo("PAP", "papillary urothelial carcinoma of the bladder", 0.35),
                SubtypeInfo("NONPAP", "non-papillary urothelial carcinoma of the bladder", 0.65),
            ),
        ),
    )
}
