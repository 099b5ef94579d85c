"""What a run's driver checks before Ray starts: a config against its cohort.

Kept free of Ray, so that a study's plan (``modaltune plan``) checks every cell's configs on a
machine without it.
"""

from __future__ import annotations

from modaltune.data import Cohort
from modaltune.data.modalities import COHORT_MODALITIES
from modaltune.errors import InputError
from modaltune.models import IMAGE, SLIDE_ENCODER_PRESETS
from modaltune.models.encoder_weights import check_encoder_checkpoint
from modaltune.train.config import TrainConfig
from modaltune.train.engines import resolve_precision

# Said once by the driver (a study's plan, `modaltune train`), not by every worker of every run.
RANDOM_ENCODER_WARNING = (
    "no slide encoder checkpoint configured (model.encoder_checkpoint / encoder_hub_id): the frozen SLFM is randomly "
    "initialised; fine for tests and demos, not for results"
)


def check_config_against_cohort(config: TrainConfig, cohort: Cohort) -> None:
    """The parts of a config that only make sense for a given cohort."""
    if not cohort.labelled:
        raise InputError(
            f"{cohort.layout.manifest}: imported for prediction (import-h5 --for-prediction): "
            "its cases have no outcomes to train on; use it with `modaltune predict`"
        )
    for name, fold in (("fold", config.fold), ("test_fold", config.test_fold)):
        if fold is not None and fold >= cohort.manifest.n_folds:
            raise InputError(f"{name}: {fold} but the cohort has folds 0..{cohort.manifest.n_folds - 1}")
    if config.test_fold == config.fold:
        raise InputError(f"test_fold: {config.test_fold} is also the validation fold")
    unknown = sorted(set(config.cohorts or []) - set(cohort.cohort_names))
    if unknown:
        raise InputError(f"cohorts: {unknown} are not in the cohort (it has {cohort.cohort_names})")
    train_ids, _ = cohort.split(config.fold, config.cohorts, config.test_fold)
    for name in config.model.modalities:
        if name != IMAGE:
            COHORT_MODALITIES[name].check_trainable(cohort, train_ids, config.fold)
    check_tile_features(config, cohort)
    if config.model.encoder_checkpoint is not None:
        check_encoder_checkpoint(config.model.for_cohort(cohort).encoder, config.model.encoder_checkpoint)
    resolve_precision(config)


def check_tile_features(config: TrainConfig, cohort: Cohort) -> None:
    """A cohort holds the features of one tile encoder, and a pretrained SLFM reads only its own
    tile encoder's: refuse the pair, naming both, when the widths differ (before any worker
    starts). A study has one cohort, so it can cross pretrained SLFMs only if they read the same
    tile features; crossing them with cohorts of their own tile encoders is not supported yet."""
    model, width = config.model, cohort.manifest.feature_dim
    takes = model.for_cohort(cohort).encoder.in_dim
    if takes != width:
        raise InputError(f"model.encoder_overrides sets in_dim {takes}, but {cohort.layout.manifest} has {width}-wide tile features")
    preset = SLIDE_ENCODER_PRESETS[model.encoder]
    pretrained = model.encoder_checkpoint is not None or model.encoder_hub_id is not None
    if pretrained and preset.feature_dim is not None and preset.feature_dim != width:
        raise InputError(
            f"model.encoder {model.encoder!r} (pretrained) reads {preset.feature_dim}-wide {preset.tile_encoder} tile features, "
            f"but {cohort.layout.manifest} has {width}-wide ones: give this SLFM a cohort made with {preset.tile_encoder}"
        )
