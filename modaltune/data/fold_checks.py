"""What each cross-validation fold needs to be scored, checked before anything trains.

A fold whose validation cases of a cancer type hold no death has no C-index; one whose cases
are all of one subtype has no balanced accuracy worth the name; a training split without a
subtype or without deaths never learns it. Small or site-clustered cohorts (TCGA's tissue
source sites each belong to one project) produce such folds, and a study on them runs for hours
to score "n/a". So, per cancer type and task, on each side of every split:

* every validation fold holds a case of the cancer type;
* survival: at least ``MIN_DEATHS`` deaths among a fold's validation cases and among its
  training cases (a C-index on one death only ranks that case), and a comparable pair;
* diagnosis: at least two subtypes among a fold's validation cases, every subtype among its
  training cases, and (for the macro AUC, ``every_class``) every subtype among its validation
  cases.

A need the cohort could meet with another split (fewer folds, case folds, a balanced site
assignment: ``modaltune.data.folds``) is a :class:`Shortfall` of one fold, which validate, plan
and the study refuse. One that no split into two or more folds can meet (a cancer type with
three deaths, a subtype of one case) is a shortfall of the cohort (``fold`` None): a warning,
since nothing about the folds fixes it.

The needs are evaluated on counts (cases, deaths and cases per subtype, per cancer type), so
the site assignment in ``modaltune.data.folds`` can search over them quickly with the same rules.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

MIN_DEATHS = 2
TASKS_CHECKED = ("diagnosis", "survival")  # the tasks with labels a fold must hold; "general" needs none


@dataclass(frozen=True)
class Shortfall:
    """One need not met: by one fold (``fold``), or by the whole cohort (``fold`` None)."""

    cohort: str
    task: str  # "diagnosis", "survival", or "" for every task (no case at all)
    reason: str
    fold: int | None = None
    side: str = "validation"  # "validation": the fold's own cases; "training": every other fold but the test fold

    def __str__(self) -> str:
        if self.fold is None:
            return f"{self.cohort}: {self.reason}"
        return f"fold {self.fold}: {self.cohort} {self.side} cases: {self.reason}"


@dataclass(frozen=True)
class _Need:
    """One count a side of a split must reach: column ``column`` (or, for ``columns``, the number
    of non-zero ones) at least ``minimum``."""

    cohort: str
    task: str
    side: str
    columns: tuple[int, ...]
    minimum: int
    what: str  # "case", "death", "subtype", or a subtype's name
    kinds: tuple[str, ...] = ()  # the subtypes of ``columns`` ("subtype" needs)

    def counts(self, rows: np.ndarray) -> np.ndarray:
        block = rows[:, list(self.columns)]
        return (block > 0).sum(axis=1) if len(self.columns) > 1 else block[:, 0]

    def reason(self, row: np.ndarray, n_cases: int) -> str:
        """Why ``row`` falls short, as "<what it needs>, got <what it has>" (summaries group by the first part)."""
        count = int(self.counts(row[None])[0])
        if self.what == "case":
            return "no case of this cancer type"
        if self.what == "death" and self.side == "validation":
            return f"fewer deaths than a C-index needs ({self.minimum}), got {count} among {_cases(n_cases)}"
        if self.what == "death":
            return f"fewer deaths than learning survival needs ({self.minimum}), got {count}"
        if self.what == "subtype":
            present = "/".join(kind for kind, column in zip(self.kinds, self.columns, strict=True) if row[column] > 0)
            return f"fewer subtypes than subtype metrics need ({self.minimum}), got {_cases(n_cases)}, all {present}"
        needed = "the macro AUC needs every subtype" if self.side == "validation" else "a subtype to learn is missing"
        return f"{needed}, got no {self.what} case"


class FoldNeeds:
    """The needs of one cohort's cases (one row per case: ``cohort``, ``subtype``, ``event``,
    ``fold`` where checked, and ``time`` for the comparable pairs), on counts per stratum:
    per cancer type its cases, deaths and cases of each subtype."""

    def __init__(self, cases: pd.DataFrame, tasks: Collection[str] = TASKS_CHECKED, every_class: bool = False) -> None:
        self.cases = cases.reset_index(drop=True)
        cohort = self.cases["cohort"].astype(str).to_numpy()
        subtype = self.cases["subtype"].astype(str).to_numpy()
        event = self.cases["event"].to_numpy(dtype=float) == 1
        columns: list[tuple[str, str]] = []
        member: list[np.ndarray] = []
        for name in sorted(set(cohort)):
            columns += [(name, "cases"), (name, "deaths")]
            member += [cohort == name, (cohort == name) & event]
            for kind in sorted(set(subtype[cohort == name])):
                columns.append((name, f"subtype:{kind}"))
                member.append((cohort == name) & (subtype == kind))
        self.columns = columns
        self.matrix = np.stack(member, axis=1).astype(np.int64) if member else np.zeros((len(cases), 0), np.int64)
        self.totals = self.matrix.sum(axis=0)
        self.needs: list[_Need] = []
        self.cohort_shortfalls: list[Shortfall] = []
        for name in sorted(set(cohort)):
            self._add_needs(name, tasks, every_class)
        self._by_side = {side: self._side_arrays(side) for side in ("validation", "training")}

    def _side_arrays(self, side: str) -> tuple[list[int], np.ndarray, list[_Need]]:
        """One side's one-column needs as a column list and minima (evaluated at once), and the others."""
        single = [n for n in self.needs if n.side == side and len(n.columns) == 1]
        several = [n for n in self.needs if n.side == side and len(n.columns) > 1]
        return [n.columns[0] for n in single], np.array([n.minimum for n in single]), several

    def column(self, cohort: str, what: str) -> int:
        return self.columns.index((cohort, what))

    def subtype_columns(self, cohort: str) -> list[int]:
        return [i for i, (c, what) in enumerate(self.columns) if c == cohort and what.startswith("subtype:")]

    def _add_needs(self, cohort: str, tasks: Collection[str], every_class: bool) -> None:
        n_cases = int(self.totals[self.column(cohort, "cases")])
        if n_cases < 2:
            self.cohort_shortfalls.append(Shortfall(cohort, "", f"{_cases(n_cases)}: it cannot be both trained on and validated"))
            return
        self.needs.append(_Need(cohort, "", "validation", (self.column(cohort, "cases"),), 1, "case"))
        if "survival" in tasks:
            deaths = self.column(cohort, "deaths")
            if self.totals[deaths] < 2 * MIN_DEATHS:
                self.cohort_shortfalls.append(Shortfall(
                    cohort, "survival",
                    f"{int(self.totals[deaths])} death(s) in all: no split into 2 or more folds gives every fold and its training "
                    f"cases {MIN_DEATHS}, so its C-index is n/a in folds with fewer (the mean C-index is over the other cancer types)",
                ))
            else:
                self.needs += [_Need(cohort, "survival", side, (deaths,), MIN_DEATHS, "death") for side in ("validation", "training")]
        if "diagnosis" in tasks:
            self._add_class_needs(cohort, every_class)

    def _add_class_needs(self, cohort: str, every_class: bool) -> None:
        subtypes = self.subtype_columns(cohort)
        counts = {self.columns[i][1].removeprefix("subtype:"): int(self.totals[i]) for i in subtypes}
        if len(subtypes) < 2:
            self.cohort_shortfalls.append(Shortfall(cohort, "diagnosis", f"every case is {next(iter(counts))}: no subtype metric"))
            return
        single = sorted(kind for kind, n in counts.items() if n < 2)
        if len(counts) - len(single) < 2:
            self.cohort_shortfalls.append(
                Shortfall(cohort, "diagnosis", f"only one subtype has 2 or more cases ({counts}): no split scores its subtypes")
            )
            return
        for kind in single:
            self.cohort_shortfalls.append(Shortfall(cohort, "diagnosis", f"{kind} has 1 case: it is never both trained on and validated"))
        self.needs.append(_Need(cohort, "diagnosis", "validation", tuple(subtypes), 2, "subtype", tuple(counts)))
        for i in subtypes:
            kind = self.columns[i][1].removeprefix("subtype:")
            if counts[kind] >= 2:
                self.needs.append(_Need(cohort, "diagnosis", "training", (i,), 1, kind))
                if every_class:
                    self.needs.append(_Need(cohort, "diagnosis", "validation", (i,), 1, kind))

    def unmet(self, validation: np.ndarray, training: np.ndarray) -> np.ndarray:
        """Rows of counts (one per candidate fold) -> how many needs each leaves unmet."""
        unmet = np.zeros(len(validation), dtype=np.int64)
        for side, rows in (("validation", validation), ("training", training)):
            columns, minima, several = self._by_side[side]
            if columns:
                unmet += (rows[:, columns] < minima).sum(axis=1)
            for need in several:
                unmet += need.counts(rows) < need.minimum
        return unmet

    def shortfalls(self, folds: np.ndarray, checked: Iterable[int], test_fold: int | None = None) -> list[Shortfall]:
        """The needs each ``checked`` fold leaves unmet, with ``folds`` the fold of each case;
        its training cases are every other fold's but the test fold's."""
        found: list[Shortfall] = []
        for fold in checked:
            in_fold = folds == fold
            validation = self.matrix[in_fold].sum(axis=0)
            training = self.matrix[~in_fold & (folds != test_fold)].sum(axis=0) if test_fold is not None else self.totals - validation
            empty = set()
            for need in self.needs:
                row = validation if need.side == "validation" else training
                if need.cohort in empty and need.side == "validation":
                    continue
                if need.counts(row[None])[0] < need.minimum:
                    n_cases = int(row[self.column(need.cohort, "cases")])
                    found.append(Shortfall(need.cohort, need.task, need.reason(row, n_cases), fold, need.side))
                    if need.what == "case":
                        empty.add(need.cohort)
            found += self._without_pairs(fold, in_fold, empty)
        return found

    def _without_pairs(self, fold: int, in_fold: np.ndarray, empty: set[str]) -> list[Shortfall]:
        """Deaths enough but no comparable pair (every death at or after the others' follow-up)."""
        if "time" not in self.cases.columns:
            return []
        found = []
        for need in self.needs:
            if need.what != "death" or need.side != "validation" or need.cohort in empty:
                continue
            cases = self.cases[in_fold & (self.cases["cohort"].astype(str) == need.cohort).to_numpy()]
            if int((cases["event"] == 1).sum()) >= need.minimum and comparable_pairs(cases["time"], cases["event"]) == 0:
                why = "no comparable pair for a C-index (no death before another case's last follow-up)"
                found.append(Shortfall(need.cohort, "survival", why, fold))
        return found


def unscorable_folds(shortfalls: Iterable[Shortfall]) -> list[int]:
    """The folds that fall short of a need (not the cohort's own shortfalls)."""
    return sorted({s.fold for s in shortfalls if s.fold is not None})


def comparable_pairs(time: npt.ArrayLike, event: npt.ArrayLike) -> int:
    """Harrell's comparable pairs: a death and a case followed up longer."""
    times = np.asarray(time, dtype=float)
    died = np.asarray(event, dtype=float) == 1
    ordered = np.sort(times)
    return int((len(times) - np.searchsorted(ordered, times[died], side="right")).sum())


def fold_shortfalls(
    cases: pd.DataFrame, folds: Iterable[int] | None = None, *, test_fold: int | None = None,
    tasks: Collection[str] = TASKS_CHECKED, every_class: bool = False,
) -> list[Shortfall]:
    """The cohort's shortfalls (``fold`` None) then each checked fold's (default: every fold of
    ``cases``; pass ``range(n_folds)`` to catch a fold with no case at all)."""
    needs = FoldNeeds(cases, tasks, every_class)
    fold_of = cases["fold"].to_numpy()
    checked = sorted({int(f) for f in fold_of}) if folds is None else list(folds)
    return needs.cohort_shortfalls + needs.shortfalls(fold_of, checked, test_fold)


def _cases(n: int) -> str:
    return f"{n} case" if n == 1 else f"{n} cases"


def case_table(slides: pd.DataFrame) -> pd.DataFrame:
    """One row per case of a slide table (case-level columns agree across a case's slides)."""
    columns = [c for c in ("cohort", "subtype", "time", "event", "fold", "site") if c in slides.columns]
    return slides.groupby("case_id", sort=True)[columns].first().reset_index()
