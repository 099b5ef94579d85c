"""What a study's result rows and trials table carry, by name, and the first thing read from them:
each cell's chosen trial.

Kept free of Ray and Optuna, so that the analysis (``modaltune analyze``, ``select``) reads a
study on a machine without them.
"""

from __future__ import annotations

import pandas as pd

from modaltune.sweeps.spec import StudySpec

CELL_KEY = "cell"
KIND_KEY = "kind"  # "epoch" (one epoch of one repetition) or "repetition" (a repetition finished)
DONE_KEY = "repetitions_done"


def cv_key(metric: str) -> str:
    """The reported running mean over finished repetitions of ``val_<metric>``."""
    return f"cv_{metric}"


def best_trials(spec: StudySpec, trials: pd.DataFrame) -> dict[str, str]:
    """Each cell's best finished trial by the study's primary cross-validated metric: the
    configuration the search chose (the confirm stage retrains it, the analysis scores it)."""
    primary = spec.search.primary
    column = cv_key(primary.name)
    done = trials[(trials["state"] == "finished") & trials[column].notna()]
    ordered = done.sort_values(column, ascending=primary.direction == "min", kind="stable")
    return dict(ordered.groupby("cell")["trial_id"].first())
