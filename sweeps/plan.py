"""A study made concrete: its cells, its repetitions (fold x seed) and every run config it will need.

``build_plan`` checks every cell's config against the cohort (folds, cancer types, modalities,
loss weights, text encoders, the ends of every search range) before Ray starts; trials then
only compose configs that are known to be valid. The plan is what every trial receives.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modaltune.data import Cohort, CohortInvalidError, generate_cohort, validate_cohort
from modaltune.data.fold_checks import TASKS_CHECKED, case_table, fold_shortfalls
from modaltune.data.folds import fold_fix, site_preserved, sites_split_across_folds
from modaltune.data.synthetic import CohortExistsError, SynthConfig
from modaltune.errors import InputError
from modaltune.metrics import METRICS
from modaltune.objectives import check_loss_weights
from modaltune.sweeps.cells import Cell, design_cells
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.resources import ResourcesSpec
from modaltune.sweeps.spec import Distribution, SearchSpec, StudySpec
from modaltune.train.config import TrainConfig, set_dotted, validate_train_config
from modaltune.train.label_banks import ensure_label_banks
from modaltune.train.preflight import RANDOM_ENCODER_WARNING, check_config_against_cohort

logger = logging.getLogger(__name__)

# Set by the study itself, or shared across trials (label banks are computed per text encoder,
# fold, cancer types and width before trials start), so they cannot be tuned per trial.
UNSEARCHABLE = ("fold", "test_fold", "seed", "cohorts", "text_encoder", "model.out_dim", "scaling")


@dataclass(frozen=True)
class Repetition:
    """One (fold, seed) every configuration is trained on; the same list for every cell."""

    index: int
    fold: int
    seed: int

    @property
    def name(self) -> str:
        return f"fold{self.fold}_seed{self.seed}"


@dataclass
class StudyPlan:
    spec: StudySpec
    study_dir: Path
    cells: list[Cell]
    repetitions: list[Repetition]

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.spec.search.metrics]

    @property
    def factor_names(self) -> list[str]:
        return list(self.spec.factors)

    @property
    def param_names(self) -> list[str]:
        """Every tuned key of any cell: the study's, then those only some method levels tune."""
        names = dict.fromkeys(self.spec.search.params)
        for cell in self.cells:
            names |= dict.fromkeys(cell.search_params)
        return list(names)

    def search_params(self, cell: Cell) -> dict[str, Distribution]:
        """What ``cell`` tunes: the study's ``search.params`` with its method level's own (by key)."""
        return self.spec.search.params | cell.search_params

    def search(self, cell: Cell) -> SearchSpec:
        """The study's search with ``cell``'s params; the same budget for every cell."""
        return self.spec.search.model_copy(update={"params": self.search_params(cell)}) if cell.search_params else self.spec.search

    def resources(self, cell: Cell) -> ResourcesSpec:
        """What each trial of ``cell`` reserves: the study's resources with its levels' own."""
        return cell.resources_in(self.spec.resources)

    @property
    def uses_gpu(self) -> bool:
        """Whether any cell's trials train on GPUs."""
        return any(self.resources(cell).use_gpu for cell in self.cells)

    def train_config(self, cell: Cell, params: dict[str, Any], repetition: Repetition) -> TrainConfig:
        """The run config of ``cell`` with tuned ``params`` on one repetition."""
        return validate_train_config(self.raw_train_config(cell, params, repetition), source=f"study {self.spec.name}, cell {cell.id}")

    def raw_train_config(self, cell: Cell, params: dict[str, Any], repetition: Repetition) -> dict[str, Any]:
        spec = self.spec
        raw = copy.deepcopy(spec.train)
        if spec.cohorts is not None:
            raw["cohorts"] = spec.cohorts
        if spec.tasks:
            raw["loss_weights"] = dict(spec.tasks)
        for override in cell.overrides:
            _merge(raw, override, replace=("loss_weights",))
        if "loss_weights" in raw and spec.tasks:
            raw["loss_weights"] = dict(spec.tasks) | raw["loss_weights"]
        for key, value in params.items():
            set_dotted(raw, key, value)
        raw["scaling"] = self.resources(cell).scaling()
        raw["fold"], raw["seed"], raw["test_fold"] = repetition.fold, repetition.seed, self.spec.test_fold
        return raw

    def label_bank_path(self, config: TrainConfig) -> Path:
        """Shared by every trial whose bank inputs are equal: text encoder, fold, cancer types, width."""
        key = [config.text_encoder, config.fold, sorted(config.cohorts) if config.cohorts else None, config.model.out_dim]
        if config.test_fold is not None:  # the bank is built from training cases; keeps old keys stable
            key.append(config.test_fold)
        digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]
        slug = "".join(c if c.isalnum() else "-" for c in config.text_encoder)[:40]
        return StudyLayout(self.study_dir).label_banks / f"{slug}-fold{config.fold}-{digest}.npz"

    def trial_dir(self, trial_id: str) -> Path:
        return StudyLayout(self.study_dir).runs / trial_id

    def run_dir(self, trial_id: str, repetition: Repetition) -> Path:
        return self.trial_dir(trial_id) / repetition.name

    def predictions_dir(self, trial_id: str, repetition: Repetition) -> Path:
        return StudyLayout(self.study_dir).predictions / trial_id / repetition.name


def build_plan(spec: StudySpec, study_dir: Path) -> StudyPlan:
    """Validate the cohort, its folds for this study (``check_study_folds``) and every config the
    study will run; generate a synthetic cohort if asked."""
    ensure_cohort(spec)
    report = validate_cohort(spec.cohort, check_folds=False)  # the study's own folds and tasks are checked below
    if not report.ok:
        raise CohortInvalidError(report)
    cohort = Cohort(spec.cohort)
    check_fold_grouping(cohort, spec.folds_by)
    cells = design_cells(spec.factors, spec.design)
    repetitions = [
        Repetition(index, fold, seed) for index, (seed, fold) in enumerate(itertools.product(spec.seeds, spec.fold_indices))
    ]
    plan = StudyPlan(spec=spec, study_dir=study_dir, cells=cells, repetitions=repetitions)
    _check_search_keys(spec, cells)
    random_encoder: set[str] = set()
    for cell in cells:
        for params in _corner_params(plan.search_params(cell)):
            for repetition in repetitions:
                config = plan.train_config(cell, params, repetition)
                if config.model.encoder_checkpoint is None and config.model.encoder_hub_id is None:
                    random_encoder.add(cell.id)
                try:
                    check_config_against_cohort(config, cohort)
                    check_loss_weights(config.objective, config.loss_weights)
                except InputError as exc:
                    raise InputError(f"study {spec.name}, cell {cell.id} {cell.levels}: {exc}") from exc
    for warning in check_study_folds(spec, cohort):
        logger.warning("study %s: %s", spec.name, warning)
    if random_encoder:
        logger.warning("%s: %s", ", ".join(sorted(random_encoder)), RANDOM_ENCODER_WARNING)
    return plan


def check_study_folds(spec: StudySpec, cohort: Cohort) -> list[str]:
    """Refuse a study whose folds cannot all be scored (``modaltune.data.fold_checks``): each
    validation fold (search, confirm stage, test fold) must hold, per cancer type of the study,
    what its tasks and metrics need, and so must its training folds. Returns what no split of
    the cohort can give (warnings)."""
    cases = case_table(cohort.slides)
    cancer_types = _study_cancer_types(spec)
    if cancer_types is not None:
        cases = cases[cases["cohort"].isin(cancer_types)]
    metrics = [METRICS[m.name] for m in spec.search.metrics if m.name in METRICS]
    tasks = _trained_tasks(spec) | {m.task for m in metrics if m.task is not None}
    folds = set(spec.fold_indices) | ({spec.test_fold} if spec.test_fold is not None else set())
    if spec.confirm is not None:
        folds |= set(spec.confirmation().fold_indices)
    every_class = any(m.every_class for m in metrics)
    shortfalls = fold_shortfalls(cases, sorted(folds), test_fold=spec.test_fold, tasks=tasks, every_class=every_class)
    problems = [str(s) for s in shortfalls if s.fold is not None]
    for metric in spec.search.metrics:
        task = METRICS[metric.name].task if metric.name in METRICS else None
        short = {s.cohort for s in shortfalls if s.fold is None and s.task in (task, "")}
        if task is not None and not set(cases["cohort"]) - short:
            problems.append(
                f"{metric.name}: no cancer type of the study has what it needs in every fold (below), so a fold may score "
                "n/a and leave no trial to select"
            )
    if problems:
        raise InputError(
            f"study {spec.name}: its folds {sorted(folds)} cannot all be scored ({cohort.layout.slides}):\n  "
            + "\n  ".join([*problems, *(str(s) for s in shortfalls if s.fold is None)])
            + f"\n{fold_fix(cases, cohort.manifest.n_folds, site_preserved(cohort.slides))}"
        )
    return [str(s) for s in shortfalls if s.fold is None]


def _study_cancer_types(spec: StudySpec) -> set[str] | None:
    """The cancer types any cell trains on; None: every cancer type of the cohort."""
    if "cohorts" in spec.factors:
        return {c for level in spec.factors["cohorts"] for c in ([level] if isinstance(level, str) else level)}
    return set(spec.cohorts) if spec.cohorts is not None else None


def _trained_tasks(spec: StudySpec) -> set[str]:
    """Tasks with a positive loss weight (every task when the study sets none)."""
    return {task for task, weight in spec.tasks.items() if weight > 0} if spec.tasks else set(TASKS_CHECKED)


def check_fold_grouping(cohort: Cohort, folds_by: str) -> None:
    """``folds_by: site`` needs folds that keep each tissue source site whole (site-specific
    stain and patients otherwise inflate scores, Howard et al. 2021); with ``case`` folds that
    split sites are only warned about."""
    has_sites = "site" in cohort.slides.columns
    if folds_by == "site" and not has_sites:
        raise InputError(
            f"folds_by: site but {cohort.layout.slides} has no site column; re-import with "
            "`modaltune import-h5 ... --folds-by site` (sites from a 'site' column or TCGA barcodes)"
        )
    split = sites_split_across_folds(cohort.slides) if has_sites else {}
    if not split:
        return
    example = ", ".join(f"{site} in folds {folds}" for site, folds in list(split.items())[:3])
    message = f"{len(split)} tissue source site(s) of {cohort.layout.slides} are split across folds (e.g. {example})"
    if folds_by == "site":
        raise InputError(f"folds_by: site but {message}; re-import with `modaltune import-h5 ... --folds-by site`")
    logger.warning("%s: cross-validated scores may be inflated by site effects; `folds_by: site` refuses such folds", message)


def prepare_label_banks(plan: StudyPlan) -> list[Path]:
    """Compute every label bank the study needs once, before any trial starts (Ray connected:
    those of a large text encoder go to a GPU node when the study trains on GPUs)."""
    banks: dict[Path, TrainConfig] = {}
    for cell in plan.cells:
        first_params = _corner_params(plan.search_params(cell))[0]
        for repetition in plan.repetitions:
            config = plan.train_config(cell, first_params, repetition)
            banks.setdefault(plan.label_bank_path(config), config)
    StudyLayout(plan.study_dir).label_banks.mkdir(parents=True, exist_ok=True)
    ensure_label_banks(Cohort(plan.spec.cohort), banks, plan.uses_gpu)
    logger.info("label banks ready: %d (text encoder x fold x cancer types)", len(banks))
    return list(banks)


def ensure_cohort(spec: StudySpec) -> None:
    """Generate the spec's synthetic cohort when it names one and the folder does not exist yet;
    refuse an existing one that was generated with other settings (stale results otherwise)."""
    if spec.cohort.exists():
        _check_generated_with(spec)
        return
    if spec.synthetic is None:
        raise InputError(f"cohort: {spec.cohort} does not exist (and the study has no 'synthetic' section to generate it)")
    settings = dict(spec.synthetic)
    if "cohorts" in settings:
        settings["cohorts"] = tuple(settings["cohorts"])
    try:
        config = SynthConfig(**settings)
    except (TypeError, ValueError) as exc:
        raise InputError(f"synthetic: {exc}") from exc
    logger.info("generating the synthetic cohort at %s", spec.cohort)
    try:
        generate_cohort(spec.cohort, config)
    except CohortExistsError:  # another study on this machine generated it meanwhile
        _check_generated_with(spec)


def _check_generated_with(spec: StudySpec) -> None:
    truth = spec.cohort / "truth.json"
    if spec.synthetic is None or not truth.exists():
        return
    generated = json.loads(truth.read_text(encoding="utf-8")).get("config", {})
    for key, value in spec.synthetic.items():
        if key in generated and generated[key] != value:
            raise InputError(
                f"synthetic.{key}: {value!r}, but {spec.cohort} was generated with {generated[key]!r}; "
                "delete that folder to regenerate it, or point 'cohort' elsewhere"
            )


def _check_search_keys(spec: StudySpec, cells: list[Cell]) -> None:
    """The study's search keys, then each method level's own (named by its cell's levels)."""
    set_by_factors = {"adapter_depth": "model.adapter_depth", "modalities": "model.modalities", "loss_weights": "loss_weights"}
    keys = dict.fromkeys((key, "") for key in spec.search.params)
    for cell in cells:
        keys |= dict.fromkeys((key, f"factors.method level {cell.levels.get('method')!r}: ") for key in cell.search_params)
    for key, prefix in keys:
        blocked = next((u for u in UNSEARCHABLE if key == u or key.startswith(u + ".")), None)
        if blocked:
            raise InputError(
                f"{prefix}search.params.{key}: cannot be tuned per trial; the study sets '{blocked}' "
                "(use factors, folds, seeds or resources)"
            )
        for factor, target in set_by_factors.items():
            if factor in spec.factors and (key == target or key.startswith(target + ".")):
                raise InputError(f"{prefix}search.params.{key}: conflicts with factor '{factor}', which sets it")


def _corner_params(params: dict[str, Distribution]) -> list[dict[str, Any]]:
    """Param sets that together visit every end of every range (others at their first value)."""
    base = {key: dist.corners()[0] for key, dist in params.items()}
    sets = [base]
    for key, dist in params.items():
        sets += [base | {key: value} for value in dist.corners()[1:]]
    return sets


def _merge(target: dict[str, Any], override: dict[str, Any], replace: tuple[str, ...] = ()) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict) and key not in replace:
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
