"""Site-preserved folds on TCGA-shaped cohorts: each tissue source site belongs to one project and
sites differ in size, so whole sites must be placed so that every fold still holds each cancer
type's deaths and subtypes, or the import refuses saying why and what would fix it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modaltune.cli.main import main
from modaltune.data import Cohort, SynthConfig, assign_case_folds, generate_cohort
from modaltune.data.folds import UnscorableFoldsError
from tests.feature_files import write_h5

# 44 cases, 11 per cancer type, as in the TCGA walk-through.
TCGA_44 = SynthConfig(
    cohorts=("BRCA", "NSCLC", "RCC", "GBMLGG"), slides_per_cohort=13, seed=7, feature_dim=8, min_tiles=4, max_tiles=8,
    n_genes=40, n_pathways=4, n_folds=2, censored_fraction=0.5,
)
SITE_SIZES = (4, 3, 2, 1, 1)  # cases per site within a project, largest first


def _project_sites(cases: pd.DataFrame, sizes: tuple[int, ...] = SITE_SIZES) -> pd.Series:
    """Each cancer type's cases (in case order) from its own sites of ``sizes`` cases."""
    sites = []
    for cohort, group in cases.groupby("cohort", sort=True):
        labels = [f"{cohort}-{i}" for i, n in enumerate(sizes) for _ in range(n)]
        labels += [f"{cohort}-{len(sizes) + i}" for i in range(len(group) - len(labels))]
        sites.append(pd.Series(labels[: len(group)], index=group.index))
    return pd.concat(sites)


@pytest.fixture(scope="module")
def tcga_44(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Cohort]:
    """TRIDENT-style .h5 files and a slide table with a site column for the 44-case cohort."""
    root = tmp_path_factory.mktemp("tcga44")
    source = Cohort(generate_cohort(root / "source", TCGA_44).root)
    write_h5(source, root / "h5")
    slides = source.slides.drop(columns=["fold"])
    slides["site"] = slides["case_id"].map(_project_sites(source.slides.groupby("case_id").first()))
    slides.to_csv(root / "slides.csv", index=False)
    return root / "h5", root / "slides.csv", source


def _per_fold(cohort: Cohort) -> pd.DataFrame:
    cases = cohort.slides.groupby("case_id").first()
    return cases.groupby(["fold", "cohort"]).agg(deaths=("event", "sum"), subtypes=("subtype", "nunique"))


def test_site_folds_give_every_fold_deaths_and_subtypes(tcga_44: tuple[Path, Path, Cohort], tmp_path: Path) -> None:
    h5_dir, csv, source = tcga_44
    out = tmp_path / "by_site"
    assert main(["import-h5", str(h5_dir), "--slides", str(csv), str(out), "--folds-by", "site", "--folds", "2"]) == 0
    imported = Cohort(out)
    assert imported.slides.groupby("site")["fold"].nunique().max() == 1
    cases = source.slides.groupby("case_id").first()
    deaths = cases.groupby("cohort")["event"].sum()
    subtypes = cases.groupby("cohort")["subtype"].agg(lambda s: (s.value_counts() >= 2).sum())
    per_fold = _per_fold(imported)
    for (fold, cohort), row in per_fold.iterrows():
        if deaths[cohort] >= 4:  # enough for 2 in each fold
            assert row["deaths"] >= 2, (fold, cohort)
        if subtypes[cohort] >= 2:
            assert row["subtypes"] >= 2, (fold, cohort)
    assert len(per_fold) == 2 * 4  # every cancer type in both folds
    assert main(["validate", str(out)]) == 0


def test_a_site_split_that_cannot_score_every_fold_is_refused_with_the_fix(
    tcga_44: tuple[Path, Path, Cohort], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """5 site-preserved folds of 44 cases: the README's walk-through as written."""
    h5_dir, csv, _ = tcga_44
    out = tmp_path / "five"
    assert main(["import-h5", str(h5_dir), "--slides", str(csv), str(out), "--folds-by", "site", "--folds", "5"]) == 2
    err = capsys.readouterr().err
    assert "no assignment of whole sites to 5 folds found lets every fold be scored" in err
    assert "validation cases: fewer deaths than a C-index needs (2), got" in err
    assert "fix: --folds-by site --folds 2 lets every fold be scored" in err
    assert not out.exists()


def _tcga_table(seed: int) -> pd.DataFrame:
    """400 cases of four projects, each from 12 sites of its own whose sizes differ sevenfold; one in five dies."""
    rng = np.random.default_rng(seed)
    projects = {"BRCA": (["IDC", "ILC"], [0.8, 0.2]), "NSCLC": (["LUAD", "LUSC"], [0.5, 0.5]),
                "RCC": (["KIRC", "KIRP", "KICH"], [0.7, 0.2, 0.1]), "GBMLGG": (["GBM", "LGG"], [0.4, 0.6])}
    rows = []
    for cohort, (subtypes, prevalence) in projects.items():
        size = 1.2 ** np.arange(12) / (1.2 ** np.arange(12)).sum()
        for i in range(100):
            rows.append({
                "case_id": f"{cohort}-{i:03d}", "cohort": cohort, "subtype": rng.choice(subtypes, p=prevalence),
                "event": int(rng.random() < 0.2), "time": float(rng.uniform(1, 120)), "site": f"{cohort}-{rng.choice(12, p=size)}",
            })
    return pd.DataFrame(rows)


def test_site_folds_put_every_subtype_and_deaths_in_every_fold_when_sites_allow() -> None:
    cases = _tcga_table(seed=1)
    folds = assign_case_folds(cases, 5, seed=0, strata=["cohort", "subtype", "event"], groups="site")
    table = cases.assign(fold=folds.reindex(cases["case_id"]).to_numpy())
    assert table.groupby("site")["fold"].nunique().max() == 1
    per_fold = table.groupby(["fold", "cohort"]).agg(deaths=("event", "sum"), subtypes=("subtype", "nunique"))
    assert per_fold["deaths"].min() >= 2
    assert (per_fold["subtypes"] == per_fold.index.get_level_values("cohort").map(table.groupby("cohort")["subtype"].nunique())).all()
    sizes = table.groupby("fold").size()
    assert sizes.max() <= 1.5 * sizes.min()  # whole sites, yet folds of comparable size
    again = assign_case_folds(cases, 5, seed=0, strata=["cohort", "subtype", "event"], groups="site")
    pd.testing.assert_series_equal(folds, again)  # deterministic for a seed


def test_a_cancer_type_from_too_few_sites_is_named_when_refused() -> None:
    cases = _tcga_table(seed=1)
    gbmlgg = cases["cohort"] == "GBMLGG"
    cases.loc[gbmlgg, "site"] = np.where(cases.loc[gbmlgg, "case_id"].str[-1] < "5", "GB-a", "GB-b")
    with pytest.raises(UnscorableFoldsError) as error:
        assign_case_folds(cases, 5, seed=0, strata=["cohort", "subtype", "event"], groups="site")
    message = str(error.value)
    assert "GBMLGG validation cases: no case of this cancer type" in message
    assert "GBMLGG: its 100 cases come from 2 site(s), so at most 2 of 5 folds hold it" in message
    assert "fix: --folds-by site --folds 2" in message


def test_a_fold_column_that_cannot_be_scored_is_refused_before_any_file_is_read(
    tcga_44: tuple[Path, Path, Cohort], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The user's own fold column sets the fold count, and its unscorable folds are refused
    before the feature folder is even looked at (here it does not exist)."""
    _, csv, _ = tcga_44
    slides = pd.read_csv(csv)
    deaths = slides.groupby("case_id")["event"].transform("max").eq(1)
    slides["fold"] = np.where(deaths, 0, 1)  # every death in fold 0: fold 1 cannot score a C-index
    slides.to_csv(tmp_path / "slides.csv", index=False)
    assert main(["import-h5", str(tmp_path / "no-such-folder"), "--slides", str(tmp_path / "slides.csv"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "problem(s) with its folds" in err and "fold 1" in err and "no-such-folder" not in err
    assert not (tmp_path / "out").exists()
