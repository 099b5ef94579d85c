"""Synthetic TCGA-like cohorts with planted, known effects.

No real TCGA data is reachable from tests or CI, so studies run on cohorts whose right answers
we know. The generative story (all of it recorded in ``truth.json``):

* **Tissue.** Each tile is a noisy copy of one tissue prototype (stroma, lymphocytes,
  necrosis, ... plus per-cancer-type tumour prototypes). A slide is a mixture of prototypes
  whose proportions depend on the case's subtype (so subtype is visible in the image) and on a
  latent tumour grade ``z_image`` (more necrosis and mitoses), plus a per-slide stain shift.
* **RNA.** Genes load on pathways; pathway activities are standard normal per case, shifted
  by subtype for a few pathways (subtype is partly visible in RNA) and, for the *risk
  pathways*, independent of everything in the image.
* **Clinical.** Age, sex, AJCC stage and TNM (absent for GBMLGG, as in TCGA).
* **Sites** (``n_sites``, off by default), as TCGA's tissue source sites: each case comes from
  one site; a site shifts the tile features of its slides (stain, scanner: ``site_stain_shift``)
  and its patients' baseline hazard (referral patterns: ``site_log_hazard``). A model can then
  score well by recognising the site, which does not carry over to new sites; with
  ``site_preserved_folds`` no site is split across folds, so cross-validation cannot reward it.
* **Missing RNA** (``rna_missing_fraction``, off by default), as in TCGA where about one case
  in six has no RNA-seq: those cases get no row in ``rna.parquet``, missing completely at
  random or, with ``rna_missing_age_log_odds_per_decade``, more often the older the patient
  (missing depending on a covariate).
* **Survival.** Weibull proportional hazards with log-hazard
  ``b_img*z_image + subtype effect + sum_p b_p*pathway_p + b_stage*stage + b_age*age
  - b_int*z_immune*pathway_int - b_main*(z_immune + pathway_int)``; censoring by an exponential
  drop-out whose rate is calibrated to the requested censored fraction.
* **Immune infiltrate** (``immune_logit_shift``, off by default): a latent ``z_immune`` of its
  own sets the share of lymphocyte tiles (from a few percent to about half of a slide), a
  pattern every slide shows at both ends of its scale.
* **Interaction** (``interaction_log_hazard``, off by default). The immune infiltrate is
  prognostic only through an *interaction pathway* of its own (not a risk pathway, not shifted
  by subtype): lymphocytes are protective where the pathway is active and harmful where it is
  not (log-hazard ``-b_int*z_immune*pathway_int``). Infiltrate and pathway are independent and
  centred, so the term's best additive approximation is zero: a late-fusion model, which scores
  the slide and the RNA separately and adds them, cannot use it, while a model in which the
  modalities meet (Modal Adapters' cross-attention, where lymphocyte tiles read the RNA) can.
  With ``interaction_main_effect`` each factor is also protective on its own (the infiltrate in
  the slide's component, the pathway in the RNA's), as "hot" tumours are: a hierarchy whose main
  effects give a learner a first-order reason to represent both factors before it can meet them.
* **Focal tiles** (``focal_tiles``, off by default): in a share of the cases
  (``focal_case_fraction``) every slide shows a rare tissue pattern of its own (a ``focal``
  prototype) on exactly ``focal_tiles`` tiles, which carries ``focal_log_hazard``. A handful of
  tiles among tens barely moves a slide's mean tile, so a model that reads the slide through a
  mean-like embedding (a frozen SLFM's, the linear probe) sees little of it, while attention over
  tiles (ABMIL, TransMIL) can find the few tiles that show it. truth.json lists them per slide.

Because the risk pathways are invisible in the image, a WSI+RNA model can beat a WSI-only
model; ``truth.json`` says by how much with oracle C-indices of each modality's true
log-hazard component, and by how much an interaction-aware model beats late fusion.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
from lifelines.utils import concordance_index

from modaltune.atomic import DirectoryExistsError, atomic_directory, write_json_atomic, write_parquet_atomic
from modaltune.data.clinical import CLINICAL_COLUMNS
from modaltune.data.features import write_slide_features
from modaltune.data.folds import assign_case_folds
from modaltune.data.labels import default_labels, save_labels
from modaltune.data.layout import SLIDE_COLUMNS, CohortLayout, CohortManifest, write_manifest
from modaltune.data.tcga import TCGA_COHORTS, CohortInfo
from modaltune.errors import InputError

logger = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T]], Iterable[T]]

SHARED_PROTOTYPES = ("stroma", "lymphocytes", "necrosis", "adipose", "blood", "mitotic_tumour")
SHARED_PROTOTYPE_LOGITS = (1.0, 0.3, -1.2, -0.6, -1.0, -1.5)
HIGH_GRADE_PROTOTYPES = ("necrosis", "mitotic_tumour")
IMMUNE_PROTOTYPE = "lymphocytes"
FOCAL_PROTOTYPE = "focal"
FOCAL_COMPONENT = "wsi_focal"  # the focal tiles' part of the log-hazard (truth.json's oracle C-indices)
FOCAL_KNOBS = ("focal_tiles", "focal_case_fraction", "focal_log_hazard")

# Log-hazard ratios of subtypes relative to the cohort's first subtype (GBM is far deadlier than LGG).
# The mutation panel's genes, most often mutated pan-cancer drivers first (TCGA PanCancer Atlas).
DRIVER_GENES = ("TP53", "PIK3CA", "KRAS", "PTEN", "ARID1A", "EGFR", "BRAF", "CDKN2A", "NF1", "RB1", "IDH1", "VHL")
SUBTYPE_LOG_HAZARD: dict[str, float] = {"GBM": 1.2, "LGG": 0.0, "KIRP": -0.2, "KICH": -0.6, "LUSC": 0.15}

HALLMARK_NAMES = (
    "HYPOXIA", "GLYCOLYSIS", "EMT", "INFLAMMATORY_RESPONSE", "IFN_GAMMA_RESPONSE", "P53_PATHWAY",
    "MYC_TARGETS", "E2F_TARGETS", "G2M_CHECKPOINT", "ANGIOGENESIS", "APOPTOSIS", "DNA_REPAIR",
    "KRAS_SIGNALING", "TNFA_SIGNALING", "ESTROGEN_RESPONSE", "ANDROGEN_RESPONSE", "OXPHOS",
    "FATTY_ACID_METABOLISM", "WNT_SIGNALING", "NOTCH_SIGNALING", "HEDGEHOG_SIGNALING",
    "TGF_BETA_SIGNALING", "IL6_JAK_STAT3", "PI3K_AKT_MTOR", "MTORC1_SIGNALING", "UV_RESPONSE",
    "COMPLEMENT", "COAGULATION", "XENOBIOTIC_METABOLISM", "PEROXISOME", "ALLOGRAFT_REJECTION",
    "APICAL_JUNCTION",
)


@dataclass(frozen=True)
class SynthConfig:
    """Size and strength knobs of a synthetic cohort; defaults mimic TCGA + GigaPath features."""

    cohorts: tuple[str, ...] = ("BRCA", "NSCLC", "RCC", "GBMLGG")
    slides_per_cohort: int = 100
    seed: int = 0
    feature_dim: int = 1536
    min_tiles: int = 50
    max_tiles: int = 5000
    tile_size_px: int = 256
    n_genes: int = 400
    n_pathways: int = 20
    n_folds: int = 5
    censored_fraction: float = 0.68
    # Signal strengths (log-hazard coefficients per standard deviation, or logit shifts).
    image_log_hazard: float = 0.7
    rna_log_hazard: float = 0.9
    n_risk_pathways: int = 2
    interaction_log_hazard: float = 0.0  # per SD of the immune infiltrate x SD of the interaction pathway
    interaction_main_effect: float = 0.0  # protective log-hazard per SD of the infiltrate, and of the pathway, on its own
    immune_logit_shift: float = 0.0  # lymphocyte logit per SD of the immune latent
    stage_log_hazard: float = 0.35
    age_log_hazard_per_decade: float = 0.15
    subtype_logit_shift: float = 0.9
    grade_logit_shift: float = 0.8
    subtype_rna_shift: float = 0.6
    tile_noise: float = 1.5
    extra_slide_probability: float = 0.2  # expected extra slides per case (at most two each)
    weibull_shape: float = 1.3
    median_survival_months: float = 45.0
    gene_overlap_probability: float = 0.1
    rna_missing_fraction: float = 0.0  # share of cases without an RNA row (at age 60 when age-dependent)
    rna_missing_age_log_odds_per_decade: float = 0.0
    n_mutation_genes: int = 0  # a somatic mutation panel (mutations.parquet) of this many driver genes; 0: none
    mutation_prevalence: float = 0.15  # each panel gene's share of mutated tumours
    mutation_log_hazard: float = 0.0  # log-hazard of a mutation in the panel's first gene (TP53)
    mutation_missing_fraction: float = 0.0  # share of cases not sequenced (no row), completely at random
    n_sites: int = 0
    site_log_hazard: float = 0.0  # SD of the sites' baseline log-hazards
    site_stain_shift: float = 0.0  # SD of the sites' shift of every tile feature
    site_preserved_folds: bool = False
    focal_tiles: int = 0  # tiles per slide of a focal case that show the focal prototype; 0: none
    focal_case_fraction: float = 0.5  # share of cases whose slides show it
    focal_log_hazard: float = 0.0  # log-hazard of a focal case against the others

    def __post_init__(self) -> None:
        unknown = [c for c in self.cohorts if c not in TCGA_COHORTS]
        if unknown:
            raise InputError(f"unknown cohort(s) {unknown}; choose from {sorted(TCGA_COHORTS)}")
        if not self.cohorts:
            raise InputError("at least one cohort is needed")
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise InputError(f"need 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}")
        if not 0.0 < self.censored_fraction < 1.0:
            raise InputError(f"censored_fraction must be in (0, 1), got {self.censored_fraction}")
        if self.has_interaction_pathway and self.immune_logit_shift <= 0:
            raise InputError(
                "interaction_log_hazard and interaction_main_effect need immune_logit_shift > 0: they act through "
                "the immune infiltrate, which only immune_logit_shift makes visible in the slides"
            )
        fewest = self.n_risk_pathways + 2 + self.has_interaction_pathway
        if self.n_pathways > len(HALLMARK_NAMES) or self.n_pathways < fewest:
            raise InputError(f"n_pathways must be in [{fewest}, {len(HALLMARK_NAMES)}], got {self.n_pathways}")
        if self.n_genes < 2 * self.n_pathways:
            raise InputError(f"n_genes must be at least 2 per pathway ({2 * self.n_pathways}), got {self.n_genes}")
        if not 0.0 <= self.rna_missing_fraction < 1.0:
            raise InputError(f"rna_missing_fraction must be in [0, 1), got {self.rna_missing_fraction}")
        if not 0 <= self.n_mutation_genes <= len(DRIVER_GENES):
            raise InputError(f"n_mutation_genes must be in [0, {len(DRIVER_GENES)}], got {self.n_mutation_genes}")
        for name in ("mutation_prevalence", "mutation_missing_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.site_preserved_folds and self.n_sites < self.n_folds:
            raise InputError(f"site_preserved_folds needs at least n_folds ({self.n_folds}) sites, got n_sites={self.n_sites}")
        if not 0 <= self.focal_tiles <= self.min_tiles:
            raise InputError(f"focal_tiles must be in [0, min_tiles ({self.min_tiles})], got {self.focal_tiles}")
        if not 0.0 < self.focal_case_fraction < 1.0:
            raise InputError(f"focal_case_fraction must be in (0, 1), got {self.focal_case_fraction}")
        if self.focal_log_hazard and not self.focal_tiles:
            raise InputError("focal_log_hazard needs focal_tiles > 0: the focal cases are told apart only by those tiles")
        if self.slides_per_cohort < self.n_folds:
            raise InputError(f"slides_per_cohort must be at least n_folds ({self.n_folds})")

    @property
    def has_interaction_pathway(self) -> bool:
        """An interaction, or its main effects alone (the null twin of an interaction cohort)."""
        return bool(self.interaction_log_hazard or self.interaction_main_effect)


@dataclass
class _World:
    """Everything shared by all cases: prototypes, gene-pathway structure, effect sizes."""

    prototype_names: list[str]
    prototypes: np.ndarray  # (K, D)
    cohort_prototypes: dict[str, list[int]]  # cohort -> indices of prototypes present in it
    subtype_prototype: dict[tuple[str, str], int]
    pathways: list[str]
    gene_names: list[str]
    gene_groups: dict[str, list[str]]
    gene_loadings: np.ndarray  # (G, P), sparse
    gene_baseline: np.ndarray  # (G,)
    risk_pathways: list[str]
    risk_coefficients: np.ndarray  # (n_risk,)
    subtype_pathways: dict[str, list[str]] = field(default_factory=dict)
    interaction_pathway: str | None = None  # the last pathway, kept free of subtype shifts


@dataclass
class _Sites:
    """Tissue source sites: each one's baseline log-hazard and feature shift."""

    names: list[str]
    log_hazard: dict[str, float]
    stain_shift: dict[str, np.ndarray]

    @classmethod
    def sample(cls, config: SynthConfig, rng: np.random.Generator) -> _Sites:
        names = [f"S{i:02d}" for i in range(config.n_sites)]
        hazards = rng.normal(0.0, config.site_log_hazard, len(names)) if config.site_log_hazard else np.zeros(len(names))
        shifts = config.site_stain_shift * rng.standard_normal((len(names), config.feature_dim))
        return cls(names, dict(zip(names, map(float, hazards), strict=True)), dict(zip(names, shifts, strict=True)))


def generate_cohort(
    out_dir: str | os.PathLike[str], config: SynthConfig, progress: Progress | None = None
) -> CohortLayout:
    """Write a complete cohort folder for ``config`` at ``out_dir``; deterministic in the seed.

    It is written beside ``out_dir`` and renamed into place whole, so a process waiting for the
    same cohort never reads a half-written one, and a folder that holds anything is refused
    (``CohortExistsError``), never written into.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CohortExistsError(f"{out} exists and is not empty: a synthetic cohort is written only into a new or empty folder")
    logger.info("writing a synthetic cohort to %s", out)
    try:
        with atomic_directory(out) as staging:
            _write_cohort(CohortLayout(staging), config, progress)
    except DirectoryExistsError as exc:
        raise CohortExistsError(str(exc)) from exc
    return CohortLayout(out)


class CohortExistsError(InputError):
    """The output folder of a synthetic cohort holds something already (perhaps the same cohort,
    finished first by another process); nothing was written there."""


def _write_cohort(layout: CohortLayout, config: SynthConfig, progress: Progress | None) -> None:
    layout.features_dir.mkdir()
    seeds = np.random.SeedSequence(config.seed)
    world_seed, case_seed, slide_seed, tile_seed, rna_seed = seeds.spawn(5)
    (site_seed,) = seeds.spawn(1)  # spawned after the others, so cohorts without sites are unchanged
    (mutation_seed,) = seeds.spawn(1)  # likewise for cohorts without a mutation panel
    (immune_seed,) = seeds.spawn(1)  # likewise for cohorts without an immune infiltrate
    (focal_seed,) = seeds.spawn(1)  # likewise for cohorts without focal tiles
    world = _build_world(config, np.random.default_rng(world_seed))
    site_rng = np.random.default_rng(site_seed)
    sites = _Sites.sample(config, site_rng) if config.n_sites else None
    mutation_rng = np.random.default_rng(mutation_seed)
    focal_rng = np.random.default_rng(focal_seed)
    focal_prototype = focal_rng.standard_normal(config.feature_dim)  # as every prototype of _build_world
    cases = _sample_cases(
        config, world, np.random.default_rng(case_seed), sites, site_rng, mutation_rng, np.random.default_rng(immune_seed),
        focal_rng,
    )
    slides = _sample_slides(config, cases, np.random.default_rng(slide_seed))
    logger.info("synthesising %d slides of %d cases", len(slides), len(cases))

    slide_seeds = tile_seed.spawn(len(slides))
    focal_seeds = focal_seed.spawn(len(slides))
    focal_tiles: dict[str, list[int]] = {}
    rows: Iterable[tuple[int, Any]] = list(enumerate(slides.itertuples(index=False)))  # (index, the slide's named tuple)
    for index, slide in (progress or _identity)(rows):
        rng = np.random.default_rng(slide_seeds[index])
        case = cases.loc[slide.case_id]
        features, coords = _slide_tiles(config, world, case, slide.n_tiles, rng)
        if case["focal"]:
            features, focal_tiles[slide.slide_id] = _with_focal_tiles(
                config, features, focal_prototype, np.random.default_rng(focal_seeds[index])
            )
        if sites is not None:
            features = (features + sites.stain_shift[case["site"]]).astype(np.float16)
        write_slide_features(layout.feature_file(slide.slide_id), features, coords, slide_id=slide.slide_id)

    slide_table = slides.drop(columns=["n_tiles"]).merge(
        cases.drop(columns=["case_id", "z_image", "z_immune", "focal", *world.pathways]), left_on="case_id", right_index=True
    )[[*SLIDE_COLUMNS, *CLINICAL_COLUMNS, *(["site"] if sites else [])]]
    write_parquet_atomic(layout.slides, pa.Table.from_pandas(slide_table, preserve_index=False))
    rna_rng = np.random.default_rng(rna_seed)
    rna = _rna_table(world, cases, rna_rng)
    rna = rna[~_rna_missing(config, cases, rna_rng)]
    write_parquet_atomic(layout.rna, pa.Table.from_pandas(rna, preserve_index=False))
    write_json_atomic(layout.gene_groups, world.gene_groups)
    if config.n_mutation_genes:
        mutations = _mutation_table(config, cases, mutation_rng)
        write_parquet_atomic(layout.root / "mutations.parquet", pa.Table.from_pandas(mutations, preserve_index=False))
    save_labels(layout.labels, default_labels(list(config.cohorts)))
    write_json_atomic(layout.truth, _truth(config, world, cases, sites, focal_tiles))
    write_manifest(
        layout, CohortManifest(feature_dim=config.feature_dim, tile_size_px=config.tile_size_px, n_folds=config.n_folds)
    )


def _identity(items: Iterable[T]) -> Iterator[T]:
    yield from items


def _build_world(config: SynthConfig, rng: np.random.Generator) -> _World:
    names = list(SHARED_PROTOTYPES)
    cohort_prototypes: dict[str, list[int]] = {}
    subtype_prototype: dict[tuple[str, str], int] = {}
    for cohort in config.cohorts:
        info = TCGA_COHORTS[cohort]
        indices = list(range(len(SHARED_PROTOTYPES)))
        for subtype in info.subtypes:
            subtype_prototype[(cohort, subtype.name)] = len(names)
            indices.append(len(names))
            names.append(f"{cohort}_{subtype.name}_tumour")
        indices.append(len(names))
        names.append(f"{cohort}_normal_epithelium")
        cohort_prototypes[cohort] = indices
    prototypes = rng.standard_normal((len(names), config.feature_dim))

    pathways = list(HALLMARK_NAMES[: config.n_pathways])
    gene_names = [f"GENE{i:05d}" for i in range(config.n_genes)]
    primary = np.concatenate([np.arange(config.n_pathways), rng.integers(0, config.n_pathways, config.n_genes - config.n_pathways)])
    loadings = np.zeros((config.n_genes, config.n_pathways))
    loadings[np.arange(config.n_genes), primary] = rng.uniform(0.6, 1.2, config.n_genes) * rng.choice([-1, 1], config.n_genes)
    overlap = rng.random(config.n_genes) < config.gene_overlap_probability
    second = rng.integers(0, config.n_pathways, config.n_genes)
    overlap &= second != primary
    loadings[np.flatnonzero(overlap), second[overlap]] = rng.uniform(0.3, 0.6, int(overlap.sum()))
    gene_groups = {p: [gene_names[g] for g in np.flatnonzero(loadings[:, j])] for j, p in enumerate(pathways)}

    risk_pathways = pathways[: config.n_risk_pathways]
    risk_coefficients = config.rna_log_hazard / math.sqrt(config.n_risk_pathways) * np.array(
        [(-1) ** i for i in range(config.n_risk_pathways)], dtype=float
    )
    interaction_pathway = pathways[-1] if config.has_interaction_pathway else None
    free_pathways = [p for p in pathways[config.n_risk_pathways :] if p != interaction_pathway]
    subtype_pathways = {cohort: [free_pathways[i % len(free_pathways)]] for i, cohort in enumerate(config.cohorts)}
    return _World(
        prototype_names=names,
        prototypes=prototypes,
        cohort_prototypes=cohort_prototypes,
        subtype_prototype=subtype_prototype,
        pathways=pathways,
        gene_names=gene_names,
        gene_groups=gene_groups,
        gene_loadings=loadings,
        gene_baseline=rng.uniform(2.0, 10.0, config.n_genes),
        risk_pathways=risk_pathways,
        risk_coefficients=risk_coefficients,
        subtype_pathways=subtype_pathways,
        interaction_pathway=interaction_pathway,
    )


def _sample_cases(
    config: SynthConfig, world: _World, rng: np.random.Generator, sites: _Sites | None, site_rng: np.random.Generator,
    mutation_rng: np.random.Generator, immune_rng: np.random.Generator, focal_rng: np.random.Generator,
) -> pd.DataFrame:
    """One row per case (indexed by case_id): labels, latents, clinical fields, mutation status, survival."""
    frames = []
    for cohort in config.cohorts:
        info = TCGA_COHORTS[cohort]
        # Enough cases that their slides (1 + a few extras) cover slides_per_cohort.
        n_cases = max(config.n_folds, round(config.slides_per_cohort / (1 + config.extra_slide_probability)))
        prevalence = np.array([s.prevalence for s in info.subtypes])
        subtype_index = rng.choice(len(info.subtypes), size=n_cases, p=prevalence / prevalence.sum())
        frame = pd.DataFrame(
            {
                "case_id": [f"SYN-{cohort}-{i:04d}" for i in range(n_cases)],
                "cohort": cohort,
                "subtype": [info.subtypes[i].name for i in subtype_index],
                "z_image": rng.standard_normal(n_cases),
            }
        )
        activities = rng.standard_normal((n_cases, len(world.pathways)))
        for pathway in world.subtype_pathways[cohort]:
            j = world.pathways.index(pathway)
            activities[:, j] += config.subtype_rna_shift * (subtype_index - subtype_index.mean()) / max(len(info.subtypes) - 1, 1) * 2
        frame[world.pathways] = activities
        frame = pd.concat([frame, _clinical(info, n_cases, rng)], axis=1)
        frames.append(frame)
    cases = pd.concat(frames, ignore_index=True).set_index("case_id", drop=False)
    panel = list(DRIVER_GENES[: config.n_mutation_genes])
    cases[panel] = (mutation_rng.random((len(cases), len(panel))) < config.mutation_prevalence).astype(np.int8)
    cases["z_immune"] = immune_rng.standard_normal(len(cases)) if config.immune_logit_shift else 0.0
    cases["focal"] = focal_rng.random(len(cases)) < config.focal_case_fraction if config.focal_tiles else False
    log_hazard = _log_hazard_components(config, world, cases)
    if sites is not None:
        cases["site"] = site_rng.choice(sites.names, size=len(cases))
        log_hazard["site"] = cases["site"].map(sites.log_hazard)
    cases["time"], cases["event"] = _survival(config, log_hazard.sum(axis=1).to_numpy(), rng)
    groups = "site" if config.site_preserved_folds else None
    columns = ["case_id", "cohort", "subtype", "event", *(["site"] if sites is not None else [])]
    cases["fold"] = assign_case_folds(
        cases[columns].reset_index(drop=True), config.n_folds, config.seed, ["cohort", "subtype", "event"], groups
    ).reindex(cases.index).to_numpy()
    return cases


def _clinical(info: CohortInfo, n: int, rng: np.random.Generator) -> pd.DataFrame:
    age = np.clip(np.round(rng.normal(60, 12, n)), 20, 90)
    female_probability = 0.99 if info.name == "BRCA" else 0.5
    sex = np.where(rng.random(n) < female_probability, "female", "male")
    if not info.has_ajcc_stage:
        return pd.DataFrame({"age": age, "sex": sex, "stage": None, "t_stage": None, "n_stage": None, "m_stage": None})
    stage = rng.choice(4, size=n, p=[0.25, 0.35, 0.28, 0.12])
    t_stage = np.clip(stage + rng.integers(-1, 2, n), 0, 3)
    n_stage = np.where(stage == 0, 0, np.clip(stage - 1 + rng.integers(0, 2, n), 0, 3))
    m_stage = (stage == 3).astype(int)
    frame = pd.DataFrame(
        {
            "age": age,
            "sex": sex,
            "stage": [("Stage I", "Stage II", "Stage III", "Stage IV")[s] for s in stage],
            "t_stage": [f"T{t + 1}" for t in t_stage],
            "n_stage": [f"N{v}" for v in n_stage],
            "m_stage": [f"M{v}" for v in m_stage],
        }
    )
    not_assessed = rng.random(n) < 0.05
    frame.loc[not_assessed, "n_stage"] = "NX"
    return frame


def _stage_ordinal(stage: pd.Series) -> np.ndarray:
    """Stage I..IV -> -1.5..1.5 (centred); missing -> 0, i.e. no stage information."""
    mapping = {"Stage I": -1.5, "Stage II": -0.5, "Stage III": 0.5, "Stage IV": 1.5}
    return stage.map(mapping).fillna(0.0).to_numpy(dtype=float)


def _log_hazard_components(config: SynthConfig, world: _World, cases: pd.DataFrame) -> pd.DataFrame:
    """The true log-hazard split by the modality that carries each part."""
    subtype_effect = cases["subtype"].map(SUBTYPE_LOG_HAZARD).fillna(0.0).to_numpy()
    rna = cases[world.risk_pathways].to_numpy() @ world.risk_coefficients
    clinical = config.stage_log_hazard * _stage_ordinal(cases["stage"]) + config.age_log_hazard_per_decade * (
        cases["age"].to_numpy() - 60.0
    ) / 10.0
    immune = cases["z_immune"].to_numpy()
    program = cases[world.interaction_pathway].to_numpy() if world.interaction_pathway else np.zeros(len(cases))
    interaction = -config.interaction_log_hazard * immune * program
    components = {
        "wsi": config.image_log_hazard * cases["z_image"].to_numpy() + subtype_effect - config.interaction_main_effect * immune,
        "rna": rna - config.interaction_main_effect * program,
        "clinical": clinical,
        "wsi_x_rna": interaction,
    }
    if config.n_mutation_genes:
        driver = cases[DRIVER_GENES[0]].to_numpy()
        components["mutations"] = config.mutation_log_hazard * (driver - driver.mean())
    if config.focal_tiles:
        focal = cases["focal"].to_numpy(dtype=float)
        components[FOCAL_COMPONENT] = config.focal_log_hazard * (focal - focal.mean())
    return pd.DataFrame(components, index=cases.index)


def _survival(config: SynthConfig, log_hazard: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weibull event times and exponential drop-out calibrated to the censored fraction."""
    shape = config.weibull_shape
    scale = config.median_survival_months / math.log(2) ** (1 / shape)
    event_time = scale * (rng.exponential(size=log_hazard.size) / np.exp(log_hazard - log_hazard.mean())) ** (1 / shape)
    unit_dropout = rng.exponential(size=log_hazard.size)
    low, high = 1e-3, 1e4
    for _ in range(100):  # bisection on the drop-out scale; censored fraction falls as it grows
        mid = math.sqrt(low * high)
        if np.mean(mid * unit_dropout < event_time) > config.censored_fraction:
            low = mid
        else:
            high = mid
    dropout_time = math.sqrt(low * high) * unit_dropout
    time = np.maximum(np.minimum(event_time, dropout_time), 0.1)
    return np.round(time, 2), (event_time <= dropout_time).astype(np.int64)


def _sample_slides(config: SynthConfig, cases: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Exactly ``slides_per_cohort`` slides per cohort: one per case, extras spread over cases."""
    rows = []
    for cohort in config.cohorts:
        cohort_cases = cases.index[cases["cohort"] == cohort].to_numpy()
        n_extra = config.slides_per_cohort - len(cohort_cases)
        extra_slots = rng.choice(2 * len(cohort_cases), size=n_extra, replace=False) % len(cohort_cases)
        slides_per_case = 1 + np.bincount(extra_slots, minlength=len(cohort_cases))
        for case_id, n_slides in zip(cohort_cases, slides_per_case, strict=True):
            for j in range(n_slides):
                n_tiles = round(math.exp(rng.uniform(math.log(config.min_tiles), math.log(config.max_tiles))))
                rows.append({"slide_id": f"{case_id}-DX{j + 1}", "case_id": case_id, "n_tiles": n_tiles})
    return pd.DataFrame(rows)


def _slide_tiles(
    config: SynthConfig, world: _World, case: pd.Series, n_tiles: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Tile features (a prototype mixture) and unique grid coordinates for one slide."""
    indices = world.cohort_prototypes[case["cohort"]]
    logits = np.array([_base_logit(world.prototype_names[k], case, world, config) for k in indices])
    logits += 0.3 * rng.standard_normal(logits.size)  # slide-to-slide variation within a case
    proportions = np.exp(logits - logits.max())
    proportions /= proportions.sum()
    labels = rng.choice(indices, size=n_tiles, p=proportions)
    stain_shift = 0.3 * rng.standard_normal(config.feature_dim)
    features = world.prototypes[labels] + stain_shift + config.tile_noise * rng.standard_normal((n_tiles, config.feature_dim))

    side = math.ceil(math.sqrt(n_tiles * 1.6))
    cells = rng.choice(side * side, size=n_tiles, replace=False)
    origin = rng.integers(0, max(1, 900 - side), size=2)
    grid = np.stack([cells // side + origin[0], cells % side + origin[1]], axis=1)
    return features.astype(np.float16), (grid * config.tile_size_px).astype(np.int32)


def _with_focal_tiles(
    config: SynthConfig, features: np.ndarray, prototype: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[int]]:
    """``features`` with ``focal_tiles`` of its tiles, chosen at random, redrawn as noisy copies of
    the focal prototype (the slide's stain shift is dropped on them: a few tiles of a pattern that
    is rare anyway); returns them and the chosen tiles' indices."""
    chosen = np.sort(rng.choice(len(features), size=config.focal_tiles, replace=False))
    focal = features.copy()
    focal[chosen] = prototype + config.tile_noise * rng.standard_normal((len(chosen), config.feature_dim))
    return focal, [int(i) for i in chosen]


def _base_logit(name: str, case: pd.Series, world: _World, config: SynthConfig) -> float:
    if name in SHARED_PROTOTYPES:
        logit = SHARED_PROTOTYPE_LOGITS[SHARED_PROTOTYPES.index(name)]
        if name in HIGH_GRADE_PROTOTYPES:
            logit += config.grade_logit_shift * case["z_image"]
        if name == IMMUNE_PROTOTYPE:
            logit += config.immune_logit_shift * case["z_immune"]
        return logit
    if name.endswith("_normal_epithelium"):
        return -0.5
    own = world.subtype_prototype[(case["cohort"], case["subtype"])]
    return 0.5 + (config.subtype_logit_shift if world.prototype_names[own] == name else -config.subtype_logit_shift)


def _config_record(config: SynthConfig) -> dict[str, Any]:
    """``config`` as a dict, without the focal knobs when there are no focal tiles: the truth.json
    of every cohort without them stays byte for byte what it was before they existed."""
    record = asdict(config)
    if not config.focal_tiles:
        for name in FOCAL_KNOBS:
            del record[name]
    return record


def _focal_truth(config: SynthConfig, cases: pd.DataFrame, focal_tiles: dict[str, list[int]]) -> dict:
    """Where the focal tiles are (tile indices per slide, in its feature file's order) and which
    methods can see them."""
    return {
        "prototype": FOCAL_PROTOTYPE,
        "tiles_per_slide": config.focal_tiles,
        "case_fraction": config.focal_case_fraction,
        "log_hazard": config.focal_log_hazard,
        "cases": int(cases["focal"].sum()),
        "seen_by": "attention over tiles: abmil, transmil, mcat, survpath; modaltune's adapters may (their extractors "
        "attend over tiles)",
        "not_seen_by": "a frozen SLFM's slide embedding (linear_probe): a few tiles barely move it; methods without "
        "the slide (snn)",
        "slides": focal_tiles,
    }


def _rna_table(world: _World, cases: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """log2-expression-like values: baseline + pathway loadings x activities + gene noise."""
    activities = cases[world.pathways].to_numpy()
    expression = world.gene_baseline + activities @ world.gene_loadings.T + 0.7 * rng.standard_normal(
        (len(cases), len(world.gene_names))
    )
    table = pd.DataFrame(expression.astype(np.float32), columns=world.gene_names)
    table.insert(0, "case_id", cases.index.to_numpy())
    return table


def _rna_missing(config: SynthConfig, cases: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Which cases have no RNA row: a logistic model in age around ``rna_missing_fraction``."""
    if not config.rna_missing_fraction:
        return np.zeros(len(cases), dtype=bool)
    base = math.log(config.rna_missing_fraction / (1 - config.rna_missing_fraction))
    log_odds = base + config.rna_missing_age_log_odds_per_decade * (cases["age"].to_numpy() - 60.0) / 10.0
    return rng.random(len(cases)) < 1.0 / (1.0 + np.exp(-log_odds))


def _mutation_table(config: SynthConfig, cases: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """``mutations.parquet``: 0/1 per panel gene; the cases not sequenced have no row."""
    panel = list(DRIVER_GENES[: config.n_mutation_genes])
    sequenced = rng.random(len(cases)) >= config.mutation_missing_fraction
    return cases.loc[sequenced, ["case_id", *panel]].reset_index(drop=True)


def _truth(
    config: SynthConfig, world: _World, cases: pd.DataFrame, sites: _Sites | None, focal_tiles: dict[str, list[int]]
) -> dict:
    components = _log_hazard_components(config, world, cases)
    total_variance = float(components.sum(axis=1).var())
    time, event = cases["time"].to_numpy(), cases["event"].to_numpy()

    def oracle(columns: list[str]) -> float:
        return float(concordance_index(time, -components[columns].sum(axis=1).to_numpy(), event))

    # A model that sees both the slide and the RNA may use their interaction; one that sees
    # either alone, or scores them separately and adds (late fusion), cannot.
    wsi = ["wsi", FOCAL_COMPONENT] if config.focal_tiles else ["wsi"]
    oracle_c_index = {
        "wsi": oracle(wsi),
        "rna": oracle(["rna"]),
        "clinical": oracle(["clinical"]),
        "wsi+rna": oracle([*wsi, "rna", "wsi_x_rna"]),
        "wsi+clinical": oracle([*wsi, "clinical"]),
        "wsi+rna+clinical": oracle([*wsi, "rna", "clinical", "wsi_x_rna"]),
    }
    late_fusion_c_index = {
        "wsi+rna": oracle([*wsi, "rna"]),
        "wsi+rna+clinical": oracle([*wsi, "rna", "clinical"]),
    }
    focal: dict[str, Any] = {}
    if config.focal_tiles:
        oracle_c_index |= {FOCAL_COMPONENT: oracle([FOCAL_COMPONENT]), "wsi_without_focal": oracle(["wsi"])}
        focal = {"focal_tiles": _focal_truth(config, cases, focal_tiles)}
    mutations = {}
    if config.n_mutation_genes:
        oracle_c_index["wsi+rna+clinical+mutations"] = oracle([str(c) for c in components.columns])
        mutations = {
            "mutations": {
                "driver": DRIVER_GENES[0],
                "log_hazard": config.mutation_log_hazard,
                "panel": list(DRIVER_GENES[: config.n_mutation_genes]),
            }
        }
    return {
        "config": _config_record(config),
        "n_cases": len(cases),
        "censored_fraction": float(1.0 - cases["event"].mean()),
        "hazard": {
            "model": "Weibull proportional hazards",
            "weibull_shape": config.weibull_shape,
            "image_latent_log_hazard": config.image_log_hazard,
            "subtype_log_hazard": {k: v for k, v in SUBTYPE_LOG_HAZARD.items()},
            "risk_pathways": dict(zip(world.risk_pathways, map(float, world.risk_coefficients), strict=True)),
            "interaction": {
                "pathway": world.interaction_pathway,
                "main_effect_log_hazard_per_sd": -config.interaction_main_effect,
                "log_hazard_per_sd_infiltrate_x_sd_pathway": -config.interaction_log_hazard,
                "image_latent": f"z_immune (immune infiltrate: {IMMUNE_PROTOTYPE} proportion)",
            },
            "stage_log_hazard_per_step": config.stage_log_hazard,
            "age_log_hazard_per_decade": config.age_log_hazard_per_decade,
            "variance_share": {k: float(components[k].var() / total_variance) for k in components},
            "oracle_c_index": oracle_c_index,
            "late_fusion_oracle_c_index": late_fusion_c_index,
            **mutations,
        },
        "expected": {
            "rna_adds_c_index_over_wsi": oracle_c_index["wsi+rna"] - oracle_c_index["wsi"],
            "clinical_adds_c_index_over_wsi": oracle_c_index["wsi+clinical"] - oracle_c_index["wsi"],
            "interaction_adds_c_index_over_late_fusion": oracle_c_index["wsi+rna+clinical"]
            - late_fusion_c_index["wsi+rna+clinical"],
            **(
                {
                    "mutations_add_c_index_over_wsi_rna_clinical": oracle_c_index["wsi+rna+clinical+mutations"]
                    - oracle_c_index["wsi+rna+clinical"]
                }
                if config.n_mutation_genes
                else {}
            ),
            **(
                {"focal_adds_c_index_over_wsi_without_it": oracle_c_index["wsi"] - oracle_c_index["wsi_without_focal"]}
                if config.focal_tiles
                else {}
            ),
        },
        "subtype_signal": {
            "image": "prototype proportions: each subtype's own tumour prototype gets "
            f"+{config.subtype_logit_shift} logit, the others -{config.subtype_logit_shift}",
            "rna_pathways": world.subtype_pathways,
        },
        "image_risk": {"high_grade_prototypes": list(HIGH_GRADE_PROTOTYPES), "logit_per_sd": config.grade_logit_shift},
        "immune_infiltrate": {"prototype": IMMUNE_PROTOTYPE, "logit_per_sd": config.immune_logit_shift},
        "prototypes": world.prototype_names,
        **focal,
        "sites": None
        if sites is None
        else {
            "log_hazard": sites.log_hazard,
            "stain_shift_sd": config.site_stain_shift,
            "cases": {k: int(v) for k, v in cases["site"].value_counts().sort_index().items()},
            "site_preserved_folds": config.site_preserved_folds,
            "note": "the site is a confounder, not biology: it is in no oracle C-index",
        },
    }
