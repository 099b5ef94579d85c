"""A method level's own search params: tuned in its cells only, over the study's; checked when the
spec loads, naming the level; every cell keeps the study's budget; a change refused on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.tune.search import Searcher

from modaltune.errors import InputError
from modaltune.sweeps.identity import computing_settings, flat_settings
from modaltune.sweeps.plan import build_plan
from modaltune.sweeps.searcher import CellSearcher
from modaltune.sweeps.spec import StudySpec, load_study_spec

STUDIES = Path(__file__).resolve().parents[2] / "sweeps" / "studies"
DEPTH = {"model.method_settings.depth": {"type": "int", "low": 1, "high": 2}}
LR = {"optim.lr": {"type": "loguniform", "low": 0.001, "high": 0.002}}
METHODS: list[Any] = ["abmil", {"name": "transmil", "search": {"params": DEPTH | LR}}]


def _spec(tmp_path: Path, cohort: Path, methods: list[Any], trials: int = 1) -> Path:
    spec = yaml.safe_load((STUDIES / "tiny.yaml").read_text()) | {"cohort": str(cohort), "synthetic": None, "factors": {"method": methods}}
    spec["search"]["trials_per_cell"] = trials
    path = tmp_path / "methods.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_levels_params_reach_its_cells_only_over_the_studys(small_cohort: Path, tmp_path: Path) -> None:
    plan = build_plan(load_study_spec(_spec(tmp_path, small_cohort, METHODS, trials=3)), tmp_path / "study")
    abmil, transmil = plan.cells
    assert (abmil.levels["method"], transmil.levels["method"]) == ("abmil", "transmil")  # the search is not in the label
    assert plan.search_params(abmil) == plan.spec.search.params  # the study's optim.lr only
    assert {k: (d.low, d.high) for k, d in plan.search_params(transmil).items()} == {
        "optim.lr": (0.001, 0.002), "model.method_settings.depth": (1, 2),  # the level's range replaces the study's
    }
    assert plan.param_names == ["optim.lr", "model.method_settings.depth"]
    config = plan.train_config(transmil, {"optim.lr": 0.001, "model.method_settings.depth": 1}, plan.repetitions[0])
    assert config.model.method_settings.depth == 1

    searcher = CellSearcher(
        {c.id: c.levels for c in plan.cells}, plan.spec.search, len(plan.repetitions), tmp_path / "optuna.journal",
        cell_searches={c.id: plan.search(c) for c in plan.cells},
    )
    suggestions = [searcher.suggest(f"t{i}") for i in range(6)]
    assert searcher.suggest("t6") == Searcher.FINISHED
    by_cell = {cell.id: [s for s in suggestions if s["cell"] == cell.id] for cell in plan.cells}
    assert [len(s) for s in by_cell.values()] == [3, 3]  # the same budget for every cell
    assert all(set(s) == {"cell", "method", "optim.lr"} and 0.002 <= s["optim.lr"] <= 0.008 for s in by_cell[abmil.id])
    assert all(s["model.method_settings.depth"] in (1, 2) and 0.001 <= s["optim.lr"] <= 0.002 for s in by_cell[transmil.id])


@pytest.mark.parametrize(
    ("level", "message"),
    [
        (
            {"name": "abmil", "search": {"params": DEPTH}},
            (
                r"method: level .*'abmil'.*: search.params.model.method_settings.depth: 'depth' is not a setting of method 'abmil' "
                r"\(its settings: \['attention_dim', 'cat', 'dropout', 'width'\]\)"
            ),
        ),
        (
            {"name": "transmil", "search": {"params": {"model.method_settings.depth": {"type": "normal", "low": 1, "high": 2}}}},
            r"method: level .*'transmil'.*: search.params.model.method_settings.depth: .*loguniform",
        ),
        (
            {"name": "transmil", "depth": 3, "search": {"params": DEPTH}},
            r"level .*'transmil'.*: search.params.model.method_settings.depth: the level fixes depth=3",
        ),
        ({"name": "transmil", "search": {"params": DEPTH, "trials_per_cell": 5}}, r"level .*'transmil'.*: search must be a mapping"),
    ],
)
def test_a_levels_bad_search_is_refused_when_the_spec_loads(tmp_path: Path, level: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_study_spec(_spec(tmp_path, tmp_path / "absent", ["modaltune", level]))


def test_a_levels_unsearchable_key_is_refused_at_plan_time_naming_it(small_cohort: Path, tmp_path: Path) -> None:
    methods = ["abmil", {"name": "transmil", "search": {"params": {"seed": {"type": "int", "low": 1, "high": 2}}}}]
    with pytest.raises(InputError, match=r"factors.method level 'transmil': search.params.seed: cannot be tuned per trial"):
        build_plan(load_study_spec(_spec(tmp_path, small_cohort, methods)), tmp_path / "study")


def test_a_changed_levels_search_is_refused_on_resume_as_the_studys() -> None:
    def spec(high: int) -> StudySpec:
        depth = {"model.method_settings.depth": {"type": "int", "low": 1, "high": high}}
        return StudySpec.model_validate({
            "name": "s", "cohort": "/nowhere", "factors": {"method": ["abmil", {"name": "transmil", "search": {"params": depth}}]},
        })
    assert flat_settings(spec(2))["factors.method.1.search.params.model.method_settings.depth.high"] == 2
    assert computing_settings(spec(3)) != computing_settings(spec(2))
    assert computing_settings(spec(2))["factors.method"] == ["abmil", {"name": "transmil"}]
