"""Inference over cross-validation folds: the paired test, its power, and intervals in [0, 1].

The independent unit of a study is a validation fold. Seeds re-train on the same split, so the
repetitions of one fold share that fold's luck (its cases, its training set); counting fold x
seed pairs as independent makes every test and interval too confident. Seeds are therefore
averaged within their fold first, and k folds give k units.

Fold scores are still not independent: any two training sets share k_cv - 2 of their k_cv - 1
folds. The corrected resampled t-test (Nadeau & Bengio, 2003) models this overlap as a common
correlation rho = n_test / (n_test + n_train) between fold scores and widens the variance of
the mean from s^2 / k to (1/k + n_test/n_train) s^2, with k - 1 degrees of freedom. Under
that model the statistic is exactly Student-t (the overlap acts as a random effect common to
all folds), and the same quantity is non-central t under an effect, which gives its power
(``power``, ``minimum_detectable_difference``). Rank tests (Wilcoxon, sign-flip permutation)
are not offered: they treat the common overlap component as signal, and with 5 folds cannot
reach p < 0.05 at all. scipy has no corrected t-test, so it is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

MIN_INTERVAL_UNITS = 3  # below this a t-interval (1 degree of freedom) is wider than the metric's range


@dataclass(frozen=True)
class FoldDesign:
    """What the correction needs: the folds scored (the units) and the folds that take turns."""

    folds: int  # validation folds of the study: the independent units
    cv_folds: int  # folds that take turns in training and validation (the cohort's, less a test fold)

    def __post_init__(self) -> None:
        if self.cv_folds < 2:
            raise ValueError(f"cross-validation needs at least 2 folds to take turns, got {self.cv_folds}")

    @property
    def test_train_ratio(self) -> float:
        """n_test / n_train: one fold validates while the other cv_folds - 1 train."""
        return 1.0 / (self.cv_folds - 1)

    def variance_factor(self, units: int | None = None) -> float:
        """Var(mean of ``units`` fold scores) / E[s^2] under Nadeau & Bengio's overlap model."""
        return 1.0 / (units or self.folds) + self.test_train_ratio


@dataclass(frozen=True)
class PairedTest:
    """One comparison over folds: the mean difference, its corrected CI and p, and its power."""

    units: int
    difference: float
    se: float
    ci_low: float
    ci_high: float
    p: float
    agreeing: int  # folds whose difference has the sign of the mean difference
    note: str


def corrected_t_test(differences: np.ndarray, design: FoldDesign, level: float = 0.95) -> PairedTest:
    """Nadeau & Bengio's corrected resampled t-test on per-fold paired differences (two-sided)."""
    differences = np.asarray(differences, dtype=float)
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    agreeing = int(np.sum(np.sign(differences) == np.sign(mean))) if n and mean != 0 else 0
    if n < 2:
        return PairedTest(n, mean, math.nan, math.nan, math.nan, math.nan, agreeing, f"{n} fold(s): a test needs at least 2")
    variance = float(np.var(differences, ddof=1))
    if variance == 0:
        return PairedTest(
            n, mean, 0.0, mean, mean, math.nan, agreeing, "the difference is the same in every fold: no variance to test against"
        )
    se = math.sqrt(design.variance_factor(n) * variance)
    t = mean / se
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return PairedTest(n, mean, se, mean - half, mean + half, float(2 * stats.t.sf(abs(t), n - 1)), agreeing, "")


def power(difference: float, sd: float, units: int, design: FoldDesign, alpha: float) -> float:
    """Probability that the two-sided corrected t-test at ``alpha`` rejects for a true ``difference``,
    when the per-fold differences have standard deviation ``sd``."""
    if units < 2 or not sd > 0:
        return math.nan
    noncentrality = difference / (sd * math.sqrt(design.variance_factor(units)))
    return _rejection_probability(units - 1, alpha, noncentrality)


def _rejection_probability(df: int, alpha: float, noncentrality: float) -> float:
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    # scipy's non-central t returns NaN for far tails; the far tail here is the wrong-sign one (~0).
    upper = float(np.nan_to_num(stats.nct.sf(critical, df, abs(noncentrality))))
    lower = float(np.nan_to_num(stats.nct.cdf(-critical, df, abs(noncentrality))))
    return upper + lower


@lru_cache(maxsize=256)
def _noncentrality_for(df: int, alpha: float, target: float) -> float:
    """The non-centrality at which the two-sided t-test with ``df`` rejects with probability ``target``."""
    high = 1.0
    while _rejection_probability(df, alpha, high) < target:
        high *= 2
    return float(optimize.brentq(lambda nc: _rejection_probability(df, alpha, nc) - target, 0.0, high))


def minimum_detectable_difference(sd: float, units: int, design: FoldDesign, alpha: float, target_power: float = 0.8) -> float:
    """The smallest true difference the corrected t-test detects with ``target_power`` at ``alpha``."""
    if units < 2 or not sd > 0:
        return math.nan
    return _noncentrality_for(units - 1, alpha, target_power) * sd * math.sqrt(design.variance_factor(units))


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float
    low: float
    high: float
    units: int
    note: str


def bounded_interval(values: np.ndarray, design: FoldDesign, level: float = 0.95) -> Interval:
    """The corrected t-interval of the mean of per-fold scores of a metric in [0, 1], built on the
    logit scale (delta method) and mapped back, so it stays inside (0, 1)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    if n < MIN_INTERVAL_UNITS:
        return Interval(mean, std, math.nan, math.nan, n, f"{n} fold(s): an interval needs at least {MIN_INTERVAL_UNITS}")
    if not 0 < mean < 1:
        return Interval(mean, std, math.nan, math.nan, n, f"mean {mean:g} is at the edge of [0, 1]")
    se = math.sqrt(design.variance_factor(n)) * std
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se / (mean * (1 - mean))
    centre = math.log(mean / (1 - mean))
    return Interval(mean, std, _expit(centre - half), _expit(centre + half), n, "")


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
