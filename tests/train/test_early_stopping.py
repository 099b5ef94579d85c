"""Early stopping tracks the best epoch on the configured metric and stops after `patience`."""

from __future__ import annotations

import math

from modaltune.train.checkpoints import TrainState
from modaltune.train.config import load_train_config
from modaltune.train.worker import _early_stopping


def _run(values: list[float], overrides: list[str]) -> tuple[TrainState, int | None]:
    config = load_train_config(None, overrides)
    state = TrainState()
    for epoch, value in enumerate(values):
        if _early_stopping(state, config, epoch, {f"val_{config.early_stopping.metric}": value}):
            return state, epoch
    return state, None


def test_stops_after_patience_epochs_without_improvement() -> None:
    state, stopped = _run([0.6, 0.7, 0.65, 0.69, 0.7, 0.9], ["early_stopping.metric=c_index", "early_stopping.patience=3"])
    assert stopped == 4 and state.best_epoch == 1 and state.best_value == 0.7


def test_min_mode_nan_and_no_patience() -> None:
    state, stopped = _run([2.0, math.nan, 1.5, 1.7], ["early_stopping.metric=loss", "early_stopping.mode=min"])
    assert stopped is None and state.best_epoch == 2 and state.epochs_without_improvement == 1
