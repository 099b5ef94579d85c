"""The generator is deterministic and plants the structure truth.json promises."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import NearestNeighbors

from modaltune.data import Cohort, SynthConfig, generate_cohort
from modaltune.errors import InputError
from tests.conftest import SMALL


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(small_cohort: Path, tmp_path: Path) -> None:
    again = generate_cohort(tmp_path / "again", SMALL).root
    assert _digest(again) == _digest(small_cohort)
    other = generate_cohort(tmp_path / "other", SynthConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1})).root
    assert _digest(other)["slides.parquet"] != _digest(small_cohort)["slides.parquet"]


def test_shape_of_a_tcga_like_cohort(small_cohort: Path) -> None:
    cohort = Cohort(small_cohort)
    slides = cohort.slides
    assert slides.groupby("cohort").size().to_dict() == {"BRCA": 40, "RCC": 40}
    assert (slides.groupby("case_id").size() > 1).any(), "some cases must have several slides"
    assert set(slides["subtype"][slides["cohort"] == "RCC"]) == {"KIRC", "KIRP", "KICH"}
    assert slides.groupby("case_id")["fold"].nunique().max() == 1
    assert sorted(slides["fold"].unique()) == [0, 1, 2, 3]
    censored = 1 - slides.groupby("case_id")["event"].first().mean()
    assert 0.6 <= censored <= 0.75
    assert (slides["time"] > 0).all()
    tiles = [cohort.slide_features(s).n_tiles for s in slides["slide_id"]]
    assert SMALL.min_tiles <= min(tiles) and max(tiles) <= SMALL.max_tiles
    assert cohort.slide_features(slides["slide_id"][0]).features.shape[1] == SMALL.feature_dim


def _mean_pooled(cohort: Cohort, case_ids: list[str]) -> np.ndarray:
    return np.stack([cohort.sample(c).features.astype(np.float32).mean(axis=0) for c in case_ids])


@pytest.fixture(scope="module")
def larger_cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    config = SynthConfig(
        cohorts=("NSCLC",), slides_per_cohort=400, seed=3, feature_dim=32, min_tiles=50, max_tiles=300,
        n_genes=100, n_pathways=8,
    )
    return Cohort(generate_cohort(tmp_path_factory.mktemp("larger") / "c", config).root)


def test_subtype_is_visible_in_mean_pooled_tiles(larger_cohort: Cohort) -> None:
    train, test = larger_cohort.split(0)
    labels = {c: larger_cohort.record(c).subtype for c in larger_cohort.case_ids}
    model = LogisticRegression(max_iter=2000).fit(_mean_pooled(larger_cohort, train), [labels[c] for c in train])
    predicted = model.predict(_mean_pooled(larger_cohort, test))
    assert balanced_accuracy_score([labels[c] for c in test], predicted) > 0.8  # chance: 0.5


def _pathway_scores(cohort: Cohort, case_ids: list[str]) -> pd.DataFrame:
    """Mean signed expression per pathway; the sign of each gene's loading is unknown, so use PCA-1."""
    matrix = cohort.modality_matrix("rna", case_ids)
    scores, start = {}, 0
    for name, genes in cohort.gene_groups.items():
        block = matrix[:, start : start + len(genes)]
        start += len(genes)
        scores[name] = PCA(1, random_state=0).fit_transform((block - block.mean(0)) / block.std(0))[:, 0]
    return pd.DataFrame(scores, index=case_ids)


def test_planted_rna_risk_pathways_predict_survival(larger_cohort: Cohort) -> None:
    truth = json.loads(larger_cohort.layout.truth.read_text())
    risk_pathways = list(truth["hazard"]["risk_pathways"])
    cases = larger_cohort.case_ids
    data = _pathway_scores(larger_cohort, cases)[risk_pathways]
    data["time"] = [larger_cohort.record(c).time for c in cases]
    data["event"] = [larger_cohort.record(c).event for c in cases]
    fitted = CoxPHFitter(penalizer=0.1).fit(data, "time", "event")
    assert fitted.concordance_index_ > 0.62
    # The other pathways carry no risk: a Cox model on them alone stays near chance.
    null = _pathway_scores(larger_cohort, cases).drop(columns=risk_pathways + ["HYPOXIA", "GLYCOLYSIS"], errors="ignore")
    null = null.iloc[:, :2].assign(time=data["time"], event=data["event"])
    assert CoxPHFitter(penalizer=0.1).fit(null, "time", "event").concordance_index_ < 0.6


def _out_of_fold_cox_c_index(cohort: Cohort, columns: pd.DataFrame) -> float:
    """Mean validation C-index of a penalised Cox model on ``columns`` over the cohort's folds."""
    cases = columns.index
    survival = pd.DataFrame(
        {"time": [cohort.record(c).time for c in cases], "event": [cohort.record(c).event for c in cases]}, index=cases
    )
    scores = []
    for fold in range(cohort.manifest.n_folds):
        train, test = cohort.split(fold)
        model = CoxPHFitter(penalizer=0.1).fit(columns.loc[train].join(survival.loc[train]), "time", "event")
        risk = model.predict_partial_hazard(columns.loc[test])
        scores.append(concordance_index(survival.loc[test, "time"], -risk, survival.loc[test, "event"]))
    return float(np.mean(scores))


def test_wsi_plus_rna_beats_wsi_only_out_of_fold(larger_cohort: Cohort) -> None:
    truth = json.loads(larger_cohort.layout.truth.read_text())
    oracle = truth["hazard"]["oracle_c_index"]
    assert oracle["wsi+rna"] - oracle["wsi"] > 0.05
    assert truth["expected"]["rna_adds_c_index_over_wsi"] == pytest.approx(oracle["wsi+rna"] - oracle["wsi"])

    cases = larger_cohort.case_ids
    image = pd.DataFrame(PCA(4, random_state=0).fit_transform(_mean_pooled(larger_cohort, cases)), index=cases).add_prefix("img")
    rna = _pathway_scores(larger_cohort, cases)
    assert _out_of_fold_cox_c_index(larger_cohort, image.join(rna)) > _out_of_fold_cox_c_index(larger_cohort, image) + 0.03


def _interaction_cohort(root: Path, strength: float) -> Cohort:
    config = SynthConfig(
        cohorts=("NSCLC",), slides_per_cohort=400, seed=3, feature_dim=32, min_tiles=50, max_tiles=300,
        n_genes=100, n_pathways=8, image_log_hazard=0.3, rna_log_hazard=1.0, immune_logit_shift=1.5,
        interaction_log_hazard=strength,
    )
    return Cohort(generate_cohort(root, config).root)


@pytest.mark.parametrize("strength", [1.5, 0.0])
def test_planted_interaction_rewards_interaction_aware_fusion_only_when_present(tmp_path: Path, strength: float) -> None:
    """Out of fold, a Cox model with image x interaction-pathway products beats the additive
    (late-fusion) model on the same features when the interaction is planted, and not otherwise
    (the null twin has the same visible immune infiltrate); truth.json's oracles say the same
    about the true latents."""
    cohort = _interaction_cohort(tmp_path / "c", strength)
    truth = json.loads(cohort.layout.truth.read_text())
    gain = truth["expected"]["interaction_adds_c_index_over_late_fusion"]
    pathway = truth["hazard"]["interaction"]["pathway"]
    if strength:
        assert gain > 0.06  # 0.078 for this seed
        assert pathway not in [p for pathways in truth["subtype_signal"]["rna_pathways"].values() for p in pathways]
        assert pathway not in truth["hazard"]["risk_pathways"]
    else:
        assert gain == 0.0 and pathway is None
        pathway = list(cohort.gene_groups)[-1]  # where it would be: its products must add nothing

    cases = cohort.case_ids
    image = pd.DataFrame(PCA(3, random_state=0).fit_transform(_mean_pooled(cohort, cases)), index=cases).add_prefix("img")
    rna = _pathway_scores(cohort, cases)
    late_fusion = image.join(rna)
    products = image.mul(rna[pathway], axis=0).add_prefix("x_")
    interaction_gain = _out_of_fold_cox_c_index(cohort, late_fusion.join(products)) - _out_of_fold_cox_c_index(cohort, late_fusion)
    if strength:
        assert interaction_gain > 0.03
    else:
        assert abs(interaction_gain) < 0.02


def test_immune_infiltrate_spreads_slides_and_leaves_other_cohorts_unchanged(tmp_path: Path) -> None:
    """The interaction's image pattern is the lymphocyte share, set by its own latent: a few
    percent of a slide's tiles at one end, most of them at the other. Turning it on draws from
    a stream of its own, so every other slide and table of a cohort is as before."""
    base = {
        "cohorts": ("NSCLC",), "slides_per_cohort": 200, "seed": 3, "feature_dim": 16, "min_tiles": 60, "max_tiles": 80,
        "n_genes": 40, "n_pathways": 6,
    }
    plain = generate_cohort(tmp_path / "plain", SynthConfig(**base))
    immune = generate_cohort(tmp_path / "immune", SynthConfig(**base, immune_logit_shift=2.0))
    assert (plain.rna.read_bytes(), plain.slides.read_bytes()) == (immune.rna.read_bytes(), immune.slides.read_bytes())

    truth = json.loads(immune.truth.read_text())
    assert truth["immune_infiltrate"] == {"prototype": "lymphocytes", "logit_per_sd": 2.0}
    # The share moves every slide along one direction (towards the lymphocyte prototype): a
    # spread between slides' mean-pooled tiles that the cohort without it does not have.
    def between_slide_variance(root: Path) -> float:
        cohort = Cohort(root)
        return float(_mean_pooled(cohort, cohort.case_ids).var(axis=0).sum())

    assert between_slide_variance(immune.root) > 1.2 * between_slide_variance(plain.root)  # 3.74 vs 2.81 measured


def test_rna_can_be_missing_at_random_or_more_often_with_age(tmp_path: Path) -> None:
    base = {
        "cohorts": ("NSCLC",), "slides_per_cohort": 400, "seed": 3, "feature_dim": 8, "min_tiles": 5, "max_tiles": 10,
        "n_genes": 40, "n_pathways": 6, "rna_missing_fraction": 0.2,
    }
    at_random = Cohort(generate_cohort(tmp_path / "mcar", SynthConfig(**base)).root)
    by_age = Cohort(generate_cohort(tmp_path / "age", SynthConfig(**base, rna_missing_age_log_odds_per_decade=1.0)).root)
    for cohort in (at_random, by_age):
        missing = 1 - len(cohort.modality_cases("rna")) / len(cohort.case_ids)
        assert 0.12 < missing < 0.3, missing
        without_rna = next(c for c in cohort.case_ids if c not in cohort.modality_cases("rna"))
        assert cohort.sample(without_rna, modalities=["rna"]).modalities["rna"] is None

    def age_gap(cohort: Cohort) -> float:
        ages = pd.Series({c: cohort.record(c).clinical["age"] for c in cohort.case_ids})
        without = ages.index.isin(list(cohort.modality_cases("rna")))
        return float(ages[~without].mean() - ages[without].mean())

    assert abs(age_gap(at_random)) < 4  # years: missingness unrelated to age
    assert age_gap(by_age) > 6  # the old lack RNA more often


def _site_cohort(root: Path, site_log_hazard: float, preserved: bool) -> Cohort:
    config = SynthConfig(
        cohorts=("NSCLC",), slides_per_cohort=400, seed=5, feature_dim=32, min_tiles=50, max_tiles=300, n_genes=60,
        n_pathways=6, n_sites=30, site_log_hazard=site_log_hazard, site_stain_shift=1.0, site_preserved_folds=preserved,
    )
    return Cohort(generate_cohort(root, config).root)


def _nearest_neighbour_c_index(cohort: Cohort, k: int = 15) -> float:
    """Out-of-fold C-index of a model that can only recognise look-alike slides: each case's
    risk is the crude death rate of its k nearest training cases in mean-pooled features."""
    cases = cohort.case_ids
    features = pd.DataFrame(_mean_pooled(cohort, cases), index=cases)
    time = pd.Series([cohort.record(c).time for c in cases], index=cases)
    event = pd.Series([cohort.record(c).event for c in cases], index=cases)
    scores = []
    for fold in range(cohort.manifest.n_folds):
        train, test = cohort.split(fold)
        _, nearest = NearestNeighbors(n_neighbors=k).fit(features.loc[train].to_numpy()).kneighbors(features.loc[test].to_numpy())
        train_ids = np.array(train)
        rate = [event[train_ids[i]].sum() / time[train_ids[i]].sum() for i in nearest]
        scores.append(concordance_index(time[test], -np.array(rate), event[test]))
    return float(np.mean(scores))


@pytest.mark.parametrize("site_log_hazard", [1.0, 0.0])
def test_site_preserved_folds_remove_the_inflation_a_site_effect_causes(tmp_path: Path, site_log_hazard: float) -> None:
    """Sites that differ in stain and in their patients' hazard let a look-alike model score well
    when folds mix sites; with site-preserved folds (no site in two folds) that score is gone.
    Without a site hazard there is nothing to inflate (measured gaps: 0.155 and -0.025)."""
    mixed = _site_cohort(tmp_path / "mixed", site_log_hazard, preserved=False)
    preserved = _site_cohort(tmp_path / "preserved", site_log_hazard, preserved=True)
    assert preserved.slides.groupby("site")["fold"].nunique().max() == 1
    assert mixed.slides.groupby("site")["fold"].nunique().max() > 1
    gap = _nearest_neighbour_c_index(mixed) - _nearest_neighbour_c_index(preserved)
    if site_log_hazard:
        assert gap > 0.08, gap
    else:
        assert abs(gap) < 0.06, gap


def test_an_interaction_without_a_visible_infiltrate_is_refused() -> None:
    with pytest.raises(InputError, match="immune_logit_shift"):
        SynthConfig(cohorts=("NSCLC",), interaction_log_hazard=1.0)


FOCAL_BASE = {
    "cohorts": ("NSCLC",), "slides_per_cohort": 300, "seed": 3, "feature_dim": 16, "min_tiles": 40, "max_tiles": 80,
    "n_genes": 40, "n_pathways": 6, "censored_fraction": 0.3,
}


def test_focal_tiles_are_off_by_default_and_their_other_knobs_change_nothing_then(tmp_path: Path) -> None:
    """Without focal tiles a cohort is what it was before the knob existed: truth.json neither
    records the focal knobs nor a focal section, and the knobs that only act with it change no byte."""
    plain = generate_cohort(tmp_path / "plain", SynthConfig(**FOCAL_BASE))
    unused = generate_cohort(tmp_path / "unused", SynthConfig(**FOCAL_BASE, focal_case_fraction=0.2))
    assert _digest(plain.root) == _digest(unused.root)
    truth = json.loads(plain.truth.read_text())
    assert "focal_tiles" not in truth and not any(key.startswith("focal") for key in truth["config"])
    assert "wsi_focal" not in truth["hazard"]["oracle_c_index"]


def test_focal_tiles_sit_where_truth_says_and_only_attention_over_tiles_sees_their_hazard(tmp_path: Path) -> None:
    """Turning focal tiles on redraws only the tiles truth.json lists (every other tile and the RNA
    draw from streams of their own); those tiles share one prototype, and the hazard they carry
    is visible to the most focal-like tile of a case (max over tiles: what attention can learn)
    and much less to the case's mean tile (what a mean-like slide embedding reads)."""
    plain = Cohort(generate_cohort(tmp_path / "plain", SynthConfig(**FOCAL_BASE)).root)
    focal = Cohort(generate_cohort(tmp_path / "focal", SynthConfig(**FOCAL_BASE, focal_tiles=2, focal_log_hazard=1.5)).root)
    assert plain.layout.rna.read_bytes() == focal.layout.rna.read_bytes()
    truth = json.loads(focal.layout.truth.read_text())
    listed = truth["focal_tiles"]["slides"]
    focal_cases = set(focal.slides.loc[focal.slides["slide_id"].isin(listed), "case_id"])
    assert len(focal_cases) == truth["focal_tiles"]["cases"] and 0.4 < len(focal_cases) / len(focal.case_ids) < 0.6
    assert set(focal.slides.loc[focal.slides["case_id"].isin(focal_cases), "slide_id"]) == set(listed)  # every slide of a focal case
    for slide_id in focal.slides["slide_id"]:
        before, after = plain.slide_features(slide_id).features, focal.slide_features(slide_id).features
        changed = np.flatnonzero((before != after).any(axis=1)).tolist()
        assert changed == listed.get(slide_id, []), slide_id

    oracle = truth["hazard"]["oracle_c_index"]
    assert oracle["wsi_focal"] > 0.6 and oracle["wsi"] - oracle["wsi_without_focal"] > 0.05
    assert truth["expected"]["focal_adds_c_index_over_wsi_without_it"] == pytest.approx(oracle["wsi"] - oracle["wsi_without_focal"])

    tiles = {s: focal.slide_features(s).features.astype(np.float32) for s in focal.slides["slide_id"]}
    direction = np.concatenate([tiles[s][i] for s, i in listed.items()]).mean(0) - np.concatenate(list(tiles.values())).mean(0)
    scores = {c: focal.sample(c).features.astype(np.float32) @ direction for c in focal.case_ids}
    time = [focal.record(c).time for c in focal.case_ids]
    event = [focal.record(c).event for c in focal.case_ids]
    by_max = concordance_index(time, [-scores[c].max() for c in focal.case_ids], event)
    by_mean = concordance_index(time, [-scores[c].mean() for c in focal.case_ids], event)
    assert by_max > 0.6 and by_max - by_mean > 0.05, (by_max, by_mean)  # 0.62 and 0.52 measured


@pytest.mark.parametrize(
    ("knobs", "message"),
    [({"focal_log_hazard": 1.0}, "needs focal_tiles"), ({"focal_tiles": 30, "min_tiles": 20}, "focal_tiles must be in"),
     ({"focal_tiles": 2, "focal_case_fraction": 1.0}, "focal_case_fraction")],
)
def test_focal_knobs_are_checked(knobs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        SynthConfig(cohorts=("NSCLC",), **knobs)
