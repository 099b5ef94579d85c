"""Case-level, stratified cross-validation folds, and site-preserved folds that balance the
events and subtypes of every fold.

Folds are assigned to cases, never to slides, so two slides of one patient can never sit on
both sides of a split (the classic leakage in multi-slide TCGA cohorts).

Site-preserved folds keep each tissue source site in one fold (Howard et al., "The impact of
site-specific digital histology signatures on deep learning model accuracy and bias", Nat Commun
2021: TCGA's site leaks into slide features, and folds that mix sites inflate cross-validated
scores). Whole sites are coarse: TCGA's sites each belong to one project and differ in size, so
a generic grouped splitter can leave a fold without a cancer type's deaths or with one subtype
only. Howard et al. assign sites to folds by integer quadratic programming, minimising the
squared deviation of each fold's count of each class from its share. Here the same objective
(each stratum's term divided by its share, a chi-square statistic, so a rare subtype weighs as
much as a common one) is minimised by a greedy assignment and local search (moves and swaps of
sites), under the needs of ``modaltune.data.fold_checks`` first: an assignment leaving fewer
folds unscorable always wins. Deterministic for a seed.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from modaltune.data.fold_checks import FoldNeeds, Shortfall, fold_shortfalls
from modaltune.errors import InputError

STRATA = ["cohort", "subtype", "event"]
RESTARTS = 4  # greedy starts (largest sites first, then shuffled orders), each improved by local search
SWAP_CANDIDATES = 256  # groups a group may swap with per step: all of a TCGA project's sites, a sample of many single cases


class UnscorableFoldsError(InputError):
    """No site-preserved assignment found gives every fold what it needs to be scored."""


def assign_case_folds(
    cases: pd.DataFrame, n_folds: int, seed: int, strata: list[str], groups: str | None = None
) -> pd.Series:
    """Return fold per case (indexed by ``case_id``), stratified on the given case columns.

    ``cases`` has one row per case. Strata rarer than ``n_folds`` cases cannot be spread over
    every fold; sklearn's warning about that is expected for rare subtypes and is silenced.
    ``groups`` names a case column whose values must each stay in one fold: ``"site"`` gives
    site-preserved folds balanced as described in the module docstring (``cases`` then needs
    ``cohort``, ``subtype`` and ``event``; ``strata[0]`` is balanced and each other stratum
    within it); a case without a site is a group of its own. When no assignment found lets
    every fold be scored, ``UnscorableFoldsError`` says which folds fall short and what would fix it.
    """
    if cases["case_id"].duplicated().any():
        raise InputError("assign_case_folds needs one row per case")
    if len(cases) < n_folds:
        raise InputError(f"cannot make {n_folds} folds from {len(cases)} cases")
    if groups is None:
        return pd.Series(_case_folds(cases, n_folds, seed, strata), index=cases["case_id"].to_numpy(), name="fold")
    group_ids = _group_ids(cases, groups)
    if len(set(group_ids)) < n_folds:
        raise InputError(f"cannot keep each {groups} in one fold: {len(set(group_ids))} {groups}s for {n_folds} folds")
    folds = _balanced_group_folds(cases, n_folds, seed, strata, group_ids)
    unscorable = _fold_shortfalls(cases, folds, n_folds)
    if unscorable:
        raise UnscorableFoldsError(
            f"no assignment of whole {groups}s to {n_folds} folds found lets every fold be scored:\n  "
            + "\n  ".join([*map(str, unscorable), *_too_few_groups(cases, group_ids, n_folds, groups)])
            + f"\n{fold_fix(cases, n_folds, by_site=True, seed=seed, groups=groups)}"
        )
    return pd.Series(folds, index=cases["case_id"].to_numpy(), name="fold")


def fold_fix(cases: pd.DataFrame, n_folds: int, by_site: bool, seed: int = 0, groups: str = "site") -> str:
    """What would let every fold of ``cases`` be scored: fewer folds, case folds, or neither."""
    fewer = _scorable_fold_count(cases, range(n_folds - 1, 1, -1), seed, groups if by_site else None)
    how = "--folds-by site " if by_site else ""
    if fewer is not None:
        return f"fix: {how}--folds {fewer} lets every fold be scored (re-import with it)"
    if by_site:
        by_case = _scorable_fold_count(cases, range(n_folds, 1, -1), seed, None)
        if by_case is not None:
            return (
                f"fix: no split of whole {groups}s into 2 or more folds scores every fold; --folds-by case --folds {by_case} does "
                f"(re-import with it), at the price of {groups}s shared between training and validation"
            )
    return "fix: no split into 2 or more folds scores every fold: add cases, or leave out the cancer types or tasks named above"


def _scorable_fold_count(cases: pd.DataFrame, counts: range, seed: int, groups: str | None) -> int | None:
    """The first fold count whose assignment leaves every fold scorable."""
    for n_folds in counts:
        if groups is None:
            folds = _case_folds(cases, n_folds, seed, STRATA)
        else:
            group_ids = _group_ids(cases, groups)
            if len(set(group_ids)) < n_folds:
                continue
            folds = _balanced_group_folds(cases, n_folds, seed, STRATA, group_ids)
        if not _fold_shortfalls(cases, folds, n_folds):
            return n_folds
    return None


def _fold_shortfalls(cases: pd.DataFrame, folds: np.ndarray, n_folds: int) -> list[Shortfall]:
    """The folds' own shortfalls (what another split could fix)."""
    return [s for s in fold_shortfalls(cases.assign(fold=folds), range(n_folds)) if s.fold is not None]


def _too_few_groups(cases: pd.DataFrame, group_ids: np.ndarray, n_folds: int, groups: str) -> list[str]:
    """Cancer types whose cases come from fewer groups than there are folds: why some folds lack them."""
    per_cohort = pd.Series(group_ids).groupby(cases["cohort"].astype(str).to_numpy()).nunique()
    return [
        f"{cohort}: its {int((cases['cohort'] == cohort).sum())} cases come from {n} {groups}(s), so at most {n} of {n_folds} folds hold it"
        for cohort, n in per_cohort.items() if n < n_folds
    ]


def _case_folds(cases: pd.DataFrame, n_folds: int, seed: int, strata: list[str]) -> np.ndarray:
    """Stratified k-fold on the joint strata; where that leaves a fold unscorable (a rare
    subtype's few cases split across strata land in one fold), the balanced assignment with each
    case a group of its own, if it leaves fewer shortfalls. Cohorts that score stay as before."""
    folds = _stratified_folds(cases, n_folds, seed, strata)
    unscorable = _fold_shortfalls(cases, folds, n_folds) if {"cohort", "subtype", "event"} <= set(cases.columns) else []
    if not unscorable:
        return folds
    balanced = _balanced_group_folds(cases, n_folds, seed, strata, cases["case_id"].astype(str).to_numpy())
    return balanced if len(_fold_shortfalls(cases, balanced, n_folds)) < len(unscorable) else folds


def _stratified_folds(cases: pd.DataFrame, n_folds: int, seed: int, strata: list[str]) -> np.ndarray:
    stratum = cases[strata].astype(str).agg("|".join, axis=1).to_numpy()
    folds = np.empty(len(cases), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test_index) in enumerate(splitter.split(np.zeros(len(cases)), stratum)):
            folds[test_index] = fold
    return folds


def _group_ids(cases: pd.DataFrame, groups: str) -> np.ndarray:
    """Each case's group; a case without one (no site recorded) is a group of its own."""
    values = cases[groups]
    return np.where(values.isna(), "\0case:" + cases["case_id"].astype(str), values.astype(str)).astype(str)


def _balanced_group_folds(cases: pd.DataFrame, n_folds: int, seed: int, strata: list[str], group_ids: np.ndarray) -> np.ndarray:
    """Whole groups to folds: fewest unmet fold needs, then the most even strata (module docstring)."""
    needs = FoldNeeds(cases)
    groups, group_of_case = np.unique(group_ids, return_inverse=True)
    case_counts = np.hstack([needs.matrix, _strata_matrix(cases, strata)])
    counts = np.zeros((len(groups), case_counts.shape[1]))
    np.add.at(counts, group_of_case, case_counts)
    balance = counts[:, needs.matrix.shape[1] :]
    cost = _FoldCost(needs, balance.sum(axis=0), n_folds)
    rng = np.random.default_rng(seed)
    orders = [np.lexsort((rng.random(len(groups)), -balance.sum(axis=1)))]  # largest first, ties at random
    orders += [rng.permutation(len(groups)) for _ in range(RESTARTS - 1)]
    best, best_total = np.zeros(len(groups), np.int64), np.full(4, np.inf)
    for order in orders:
        assignment = _greedy(counts, order, cost, n_folds)
        total = _local_search(counts, assignment, cost, n_folds, rng)
        if _key(best_total - total) > (0, 0, 0, 0):
            best, best_total = assignment, total
    return best[group_of_case]


def _strata_matrix(cases: pd.DataFrame, strata: list[str]) -> np.ndarray:
    """One column per value of ``strata[0]`` and per (value, other stratum's value) within it."""
    top = cases[strata[0]].astype(str)
    frames = [pd.get_dummies(top)]
    for column in strata[1:]:
        frames.append(pd.get_dummies(top + "|" + column + "=" + cases[column].astype(str)))
    return pd.concat(frames, axis=1).to_numpy(dtype=float)


class _FoldCost:
    """A fold's cost from its counts (the needs' columns, then the strata's), in tiers compared
    in order: empty, unmet needs, subtypes missing from it while every fold could hold them, and
    the chi-square of its strata against their shares."""

    def __init__(self, needs: FoldNeeds, strata_totals: np.ndarray, n_folds: int) -> None:
        self.needs, self.n_needs = needs, needs.matrix.shape[1]
        self.expected = strata_totals / n_folds
        self.used = self.expected > 0
        cohorts = sorted({cohort for cohort, _ in needs.columns})
        self.spread = [i for c in cohorts for i in needs.subtype_columns(c) if needs.totals[i] >= n_folds]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Rows of counts (m x columns) -> each row's cost tiers (m x 4)."""
        need_rows, strata_rows = rows[:, : self.n_needs], rows[:, self.n_needs :]
        deviation = strata_rows[:, self.used] - self.expected[self.used]
        return np.column_stack([
            need_rows.sum(axis=1) == 0,
            self.needs.unmet(need_rows, self.needs.totals - need_rows),
            (need_rows[:, self.spread] == 0).sum(axis=1),
            (deviation**2 / self.expected[self.used]).sum(axis=1),
        ]).astype(np.float64)


def _key(gain: np.ndarray) -> tuple[float, ...]:
    """A gain in cost tiers as a tuple that compares lexicographically, rounding-safe."""
    return (*map(float, gain[:3]), float(gain[3]) if abs(gain[3]) > 1e-9 else 0.0)


def _best(gains: np.ndarray) -> int | None:
    """The row of the largest gain (lexicographic in the tiers), if it lowers the cost."""
    if not len(gains):
        return None
    chi = np.where(np.abs(gains[:, 3]) > 1e-9, gains[:, 3], 0.0)
    best = int(np.lexsort((chi, gains[:, 2], gains[:, 1], gains[:, 0]))[-1])
    return best if _key(gains[best]) > (0, 0, 0, 0) else None


def _greedy(counts: np.ndarray, order: np.ndarray, cost: _FoldCost, n_folds: int) -> np.ndarray:
    """Each group in ``order`` to the fold where it adds least cost (ties: the smallest fold so far)."""
    folds = np.zeros((n_folds, counts.shape[1]))
    assignment = np.empty(len(counts), dtype=np.int64)
    for group in order:
        added = cost(folds + counts[group]) - cost(folds)
        chi = np.where(np.abs(added[:, 3]) > 1e-9, added[:, 3], 0.0)
        fold = int(np.lexsort((np.arange(n_folds), folds[:, cost.n_needs :].sum(axis=1), chi, added[:, 2], added[:, 1], added[:, 0]))[0])
        assignment[group] = fold
        folds[fold] += counts[group]
    return assignment


def _local_search(counts: np.ndarray, assignment: np.ndarray, cost: _FoldCost, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Move a group to another fold, or swap two, while that lowers the cost; returns the total tiers."""
    folds = np.zeros((n_folds, counts.shape[1]))
    np.add.at(folds, assignment, counts)
    fold_cost = cost(folds)
    improved = True
    while improved:
        improved = False
        for group in rng.permutation(len(counts)):
            source = assignment[group]
            targets = np.flatnonzero(np.arange(n_folds) != source)
            others = np.flatnonzero(assignment != source)
            if len(others) > SWAP_CANDIDATES:
                others = np.sort(rng.choice(others, SWAP_CANDIDATES, replace=False))
            left = cost((folds[source] - counts[group])[None])
            move_gain = fold_cost[source] + fold_cost[targets] - left - cost(folds[targets] + counts[group])
            swap_gain = (
                fold_cost[source] + fold_cost[assignment[others]]
                - cost(folds[source] - counts[group] + counts[others]) - cost(folds[assignment[others]] - counts[others] + counts[group])
            )
            best = _best(np.vstack([move_gain, swap_gain]))
            if best is None:
                continue
            if best < len(targets):
                target, other = int(targets[best]), None
            else:
                other = int(others[best - len(targets)])
                target = int(assignment[other])
            assignment[group] = target
            folds[source] -= counts[group]
            folds[target] += counts[group]
            if other is not None:
                assignment[other] = source
                folds[target] -= counts[other]
                folds[source] += counts[other]
            fold_cost = cost(folds)
            improved = True
    return fold_cost.sum(axis=0)


def site_preserved(slides: pd.DataFrame) -> bool:
    """Whether a slide table's folds keep each recorded tissue source site whole."""
    return "site" in slides.columns and bool(slides["site"].notna().any()) and not sites_split_across_folds(slides)


def sites_split_across_folds(slides: pd.DataFrame) -> dict[str, list[int]]:
    """Tissue source sites whose cases sit in more than one fold -> those folds (needs ``site``)."""
    folds = {str(site): sorted({int(x) for x in f}) for site, f in slides.dropna(subset=["site"]).groupby("site")["fold"]}
    return {site: fs for site, fs in folds.items() if len(fs) > 1}
