"""Case-level, stratified cross-validation folds.

Folds are assigned to cases, never to slides, so two slides of one patient can never sit on
both sides of a split (the classic leakage in multi-slide TCGA cohorts).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from modaltune.errors import InputError


def assign_case_folds(
    cases: pd.DataFrame, n_folds: int, seed: int, strata: list[str], groups: str | None = None
) -> pd.Series:
    """Return fold per case (indexed by ``case_id``), stratified on the given case columns.

    ``cases`` has one row per case. Strata rarer than ``n_folds`` cases cannot be spread over
    every fold; sklearn's warning about that is expected for rare subtypes and is silenced.
    ``groups`` names a case column whose values must each stay in one fold: ``"site"`` gives
    site-preserved folds (Howard et al., Nat Commun 2021: TCGA's tissue source site leaks into
    slide features, and folds that mix sites inflate cross-validated scores), stratified as
    well as whole sites allow (sklearn's ``StratifiedGroupKFold``).
    """
    if cases["case_id"].duplicated().any():
        raise InputError("assign_case_folds needs one row per case")
    if len(cases) < n_folds:
        raise InputError(f"cannot make {n_folds} folds from {len(cases)} cases")
    stratum = cases[strata].astype(str).agg("|".join, axis=1).to_numpy()
    group_ids = None
    if groups is None:
        splitter: StratifiedKFold | StratifiedGroupKFold = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    else:
        group_ids = cases[groups].astype(str).to_numpy()
        if len(set(group_ids)) < n_folds:
            raise InputError(f"cannot keep each {groups} in one fold: {len(set(group_ids))} {groups}s for {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(len(cases), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test_index) in enumerate(splitter.split(np.zeros(len(cases)), stratum, group_ids)):
            folds[test_index] = fold
    return pd.Series(folds, index=cases["case_id"].to_numpy(), name="fold")


def sites_split_across_folds(slides: pd.DataFrame) -> dict[str, list[int]]:
    """Tissue source sites whose cases sit in more than one fold -> those folds (needs ``site``)."""
    folds = slides.dropna(subset=["site"]).groupby("site")["fold"].agg(lambda f: sorted({int(x) for x in f}))
    return {str(site): fs for site, fs in folds.items() if len(fs) > 1}
