"""Study specs: every kind of mistake is caught before Ray starts, with the key named."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from modaltune.errors import InputError
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.plan import build_plan, ensure_cohort
from modaltune.sweeps.spec import DesignSpec, load_study_spec
from modaltune.sweeps.study import run_study

REPO = Path(__file__).resolve().parents[2]


def _base(cohort: Path) -> dict[str, Any]:
    return {
        "cohort": str(cohort),
        "tasks": {"diagnosis": 1.0, "survival": 1.0},
        "folds": 2,
        "seeds": [0],
        "train": {"objective": "supervised", "model": {"out_dim": 16}, "engine": {"backend": "ddp", "precision": "fp32"}},
        "factors": {"adapter_depth": [1, 2], "modalities": [["wsi"], ["wsi", "rna"]], "llm": ["onehot"]},
        "search": {"trials_per_cell": 2, "params": {"optim.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}},
    }


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _edit(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    node = raw
    *parents, last = path.split("/")  # "/" because tuned keys are dotted (optim.lr)
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


SPEC_MISTAKES = [
    ("factors/dropout", [0.1], "unknown factor 'dropout'"),
    ("factors/llm", [], "needs at least one level"),
    ("search/params/optim.lr", {"type": "loguniform", "low": 0.0, "high": 1e-2}, "low > 0"),
    ("search/params/optim.lr", {"type": "uniform", "low": 0.1, "high": 0.01}, "low < high"),
    ("search/params/optim.lr", {"type": "beta", "low": 0.1, "high": 0.2}, "search.params.optim.lr.type"),
    ("search/params/optim.lr", {"type": "categorical"}, "non-empty 'choices'"),
    ("search/sampler", "grid", "every param to be categorical"),
    ("search/sampler", "nsga2", "multi-objective"),
    ("search/sampler", "hyperopt", "search.sampler"),
    ("search/metrics", [{"name": "accuracy"}], "unknown metric 'accuracy'"),
    ("search/trials_per_cell", 0, "search.trials_per_cell"),
    ("scheduler", "pbt", "refuses it together with a search algorithm"),
    ("scheduler", "hyperband", "scheduler.type"),
    ("design", "sampled", "'cells' is required"),
    ("folds", 0, "folds"),
    ("seeds", [], "seeds"),
    ("resources/cpus_per_worker", 0, "resources.cpus_per_worker"),
    ("max_concurent", 3, "max_concurent"),
    ("name", "my study", "name"),
    ("test_fold", -1, "test_fold"),
]


@pytest.mark.parametrize(("key", "value", "message"), SPEC_MISTAKES, ids=[m[0] + ":" + str(m[1])[:20] for m in SPEC_MISTAKES])
def test_spec_mistakes_name_their_key(tmp_path: Path, key: str, value: Any, message: str) -> None:
    path = _write(tmp_path, _edit(_base(tmp_path / "cohort"), key, value))
    with pytest.raises(InputError) as caught:
        load_study_spec(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


PLAN_MISTAKES = [
    ("factors/llm", ["onehot", "gpt-nine"], "gpt-nine"),
    ("folds", [0, 7], "fold: 7"),
    ("cohorts", ["BRCA", "LUAD"], "LUAD"),
    ("factors/loss_weights", [{"diagnosis": 1.0}, {"grade": 1.0}], "grade"),
    ("factors/adapter_depth", ["two"], "factors.adapter_depth"),
    ("search/params/optim.lrr", {"type": "uniform", "low": 0.1, "high": 0.2}, "optim.lrr"),
    ("search/params/fold", {"type": "int", "low": 0, "high": 1}, "cannot be tuned per trial"),
    ("search/params/model.adapter_depth", {"type": "int", "low": 1, "high": 2}, "conflicts with factor 'adapter_depth'"),
    ("search/params/optim.epochs", {"type": "int", "low": 0, "high": 3}, "optim.epochs"),
    ("train/engine/precision", "fp16", "fp16"),
    ("test_fold", 9, "test_fold: 9"),
]


@pytest.mark.parametrize(("key", "value", "message"), PLAN_MISTAKES, ids=[m[0] for m in PLAN_MISTAKES])
def test_config_mistakes_are_found_against_the_cohort(small_cohort: Path, tmp_path: Path, key: str, value: Any, message: str) -> None:
    spec = load_study_spec(_write(tmp_path, _edit(_base(small_cohort), key, value)))
    with pytest.raises(InputError) as caught:
        build_plan(spec, tmp_path / "studies" / spec.name)
    assert message in str(caught.value)


def test_missing_cohort_without_synthetic_section(tmp_path: Path) -> None:
    spec = load_study_spec(_write(tmp_path, _base(tmp_path / "nowhere")))
    with pytest.raises(InputError, match="nowhere.*does not exist"):
        build_plan(spec, tmp_path / "studies" / spec.name)


def test_bad_input_writes_nothing_to_the_study_folder(small_cohort: Path, tmp_path: Path) -> None:
    spec = load_study_spec(_write(tmp_path, _edit(_base(small_cohort), "factors/llm", ["nope"])))
    storage = tmp_path / "studies"
    with pytest.raises(InputError):
        run_study(spec, storage)
    assert not storage.exists()


def test_resume_needs_an_existing_study(small_cohort: Path, tmp_path: Path) -> None:
    spec = load_study_spec(_write(tmp_path, _base(small_cohort)))
    with pytest.raises(InputError, match="no study to continue"):
        run_study(spec, tmp_path / "studies", resume=True)


def test_relative_cohort_path_is_relative_to_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    spec = load_study_spec(_write(tmp_path / "specs", _base(Path("../data/cohort"))))
    assert spec.cohort == (tmp_path / "data" / "cohort").resolve()
    assert spec.name == "study"


def test_plan_composes_configs_per_cell_and_repetition(small_cohort: Path, tmp_path: Path) -> None:
    raw = _edit(_base(small_cohort), "factors/loss_weights", [{"survival": 1.0}, {"survival": 3.0}])
    spec = load_study_spec(_write(tmp_path, raw))
    plan = build_plan(spec, tmp_path / "studies" / spec.name)
    assert len(plan.cells) == 2 * 2 * 1 * 2 and [r.name for r in plan.repetitions] == ["fold0_seed0", "fold1_seed0"]
    levels = {"adapter_depth": "2", "modalities": "wsi+rna", "llm": "onehot", "loss_weights": "survival=3"}
    cell = next(c for c in plan.cells if c.levels == levels)
    config = plan.train_config(cell, {"optim.lr": 0.005}, plan.repetitions[1])
    assert (config.model.adapter_depth, config.model.modalities, config.text_encoder) == (2, ["wsi", "rna"], "onehot")
    assert config.loss_weights == {"diagnosis": 1.0, "survival": 3.0}
    assert (config.fold, config.seed, config.optim.lr, config.scaling.num_workers) == (1, 0, 0.005, 1)
    # A tuned value reaches an untyped field as the value it is (a text round trip read 1e-05 as a string).
    tuned = plan.train_config(cell, {"optim.lr": 1e-05, "engine.deepspeed_overrides.optimizer.params.eps": 1e-08}, plan.repetitions[0])
    assert tuned.optim.lr == 1e-05 and tuned.engine.deepspeed_overrides == {"optimizer": {"params": {"eps": 1e-08}}}
    # One label bank per (text encoder, fold), shared by every cell.
    banks = {plan.label_bank_path(plan.train_config(c, {}, r)) for c in plan.cells for r in plan.repetitions}
    assert len(banks) == 2


def test_a_test_fold_is_held_out_of_every_repetition(small_cohort: Path, tmp_path: Path) -> None:
    spec = load_study_spec(_write(tmp_path, _edit(_base(small_cohort), "test_fold", 0)))
    plan = build_plan(spec, tmp_path / "studies" / spec.name)
    assert [r.fold for r in plan.repetitions] == [1, 2]
    config = plan.train_config(plan.cells[0], {}, plan.repetitions[0])
    assert config.test_fold == 0
    with pytest.raises(InputError, match="test_fold 0 is also one of the validation folds"):
        load_study_spec(_write(tmp_path, _edit(_edit(_base(small_cohort), "test_fold", 0), "folds", [0, 1])))


def test_an_existing_synthetic_cohort_made_with_other_settings_is_refused(tmp_path: Path) -> None:
    synthetic = {"cohorts": ["NSCLC"], "slides_per_cohort": 12, "feature_dim": 8, "min_tiles": 4, "max_tiles": 8, "n_folds": 2}
    raw = _base(tmp_path / "cohort") | {"synthetic": synthetic}
    spec = load_study_spec(_write(tmp_path, raw))
    ensure_cohort(spec)
    changed = load_study_spec(_write(tmp_path, _edit(raw, "synthetic/feature_dim", 16)))
    with pytest.raises(InputError, match="synthetic.feature_dim: 16, but .* was generated with 8"):
        ensure_cohort(changed)


def test_designs_crossed_one_at_a_time_and_sampled() -> None:
    factors = {"adapter_depth": [1, 2, 3], "modalities": [["wsi"], ["wsi", "rna"]], "llm": ["minilm", "onehot"]}
    crossed = design_cells(factors, DesignSpec(type="crossed"))
    assert len(crossed) == 12 and len({tuple(c.levels.values()) for c in crossed}) == 12
    one = design_cells(factors, DesignSpec(type="one_at_a_time"))
    reference = {"adapter_depth": "1", "modalities": "wsi", "llm": "minilm"}
    assert one[0].levels == reference and len(one) == 1 + 2 + 1 + 1
    assert all(sum(c.levels[f] != reference[f] for f in reference) == 1 for c in one[1:])
    sampled = design_cells(factors, DesignSpec(type="sampled", cells=5, seed=1))
    assert len(sampled) == 5 and sampled[0].levels == reference
    assert sampled == design_cells(factors, DesignSpec(type="sampled", cells=5, seed=1))


@pytest.mark.parametrize("name", ["smoke", "demo", "tcga", "paper", "tiny", "methods"])
def test_shipped_studies_are_valid(name: str) -> None:
    spec = load_study_spec(REPO / "sweeps" / "studies" / f"{name}.yaml")
    assert spec.name == name and spec.factors


def test_folds_by_site_refuses_folds_that_split_a_site(small_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort, ignore=shutil.ignore_patterns("cache"))
    spec = load_study_spec(_write(tmp_path, _edit(_base(cohort), "folds_by", "site")))
    with pytest.raises(InputError, match="has no site column"):
        build_plan(spec, tmp_path / "studies" / spec.name)
    slides = pd.read_parquet(cohort / "slides.parquet")
    slides["site"] = slides["fold"].map(lambda f: f"S{f}")  # one site per fold: preserved
    slides.to_parquet(cohort / "slides.parquet", index=False)
    build_plan(spec, tmp_path / "studies" / spec.name)
    first_case = slides["case_id"].iloc[0]
    slides.loc[slides["case_id"] == first_case, "site"] = "S9"
    slides.loc[slides["case_id"] == slides.loc[slides["fold"] != slides["fold"].iloc[0], "case_id"].iloc[0], "site"] = "S9"
    slides.to_parquet(cohort / "slides.parquet", index=False)
    with pytest.raises(InputError, match=r"1 tissue source site\(s\) .* split across folds \(e.g. S9 in folds"):
        build_plan(spec, tmp_path / "studies" / spec.name)
    by_case = load_study_spec(_write(tmp_path, _base(cohort), "by_case.yaml"))
    with caplog.at_level(logging.WARNING, logger="modaltune.sweeps.plan"):
        build_plan(by_case, tmp_path / "studies" / by_case.name)
    assert any("may be inflated by site effects" in r.message for r in caplog.records)
