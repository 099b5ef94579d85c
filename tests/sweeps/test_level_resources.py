"""A method level's own resources: each of its cells' trials reserves them, they are checked when
the spec loads, and what a study costs (planned and spent) counts each cell at its own size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from modaltune.analysis.cost import cost_table
from modaltune.analysis.planning import PilotTimes, forecast
from modaltune.errors import InputError
from modaltune.sweeps.cells import design_cells
from modaltune.sweeps.identity import computing_settings, flat_settings
from modaltune.sweeps.plan import build_plan
from modaltune.sweeps.spec import DesignSpec, StudySpec, load_study_spec

STUDIES = Path(__file__).resolve().parents[2] / "sweeps" / "studies"
METHODS: list[Any] = [
    "modaltune",
    {"name": "abmil", "resources": {"num_workers": 2, "cpus_per_worker": 0.25}},
    {"name": "snn", "modalities": ["rna"], "resources": {"cpus_per_worker": 1.5}},
]


def _spec(tmp_path: Path, cohort: Path, methods: list[Any], name: str = "methods.yaml") -> Path:
    spec = yaml.safe_load((STUDIES / "tiny.yaml").read_text()) | {"cohort": str(cohort), "synthetic": None, "factors": {"method": methods}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_levels_resources_reach_its_cells_run_configs_and_not_their_labels(small_cohort: Path, tmp_path: Path) -> None:
    plan = build_plan(load_study_spec(_spec(tmp_path, small_cohort, METHODS)), tmp_path / "study")
    assert [cell.levels["method"] for cell in plan.cells] == ["modaltune", "abmil", "snn[rna]"]
    scaling = [plan.train_config(cell, {}, repetition).scaling for cell in plan.cells for repetition in plan.repetitions]
    assert [(s.num_workers, s.cpus_per_worker, s.use_gpu) for s in scaling] == [(1, 0.5, False), (2, 0.25, False), (1, 1.5, False)]
    assert not plan.uses_gpu


def test_a_gpu_level_in_a_cpu_study_trains_on_gpus() -> None:
    methods = ["modaltune", {"name": "abmil", "resources": {"gpus_per_worker": 0.25}}]
    spec = StudySpec.model_validate({"name": "s", "cohort": "/nowhere", "factors": {"method": methods}})
    sizes = [cell.resources_in(spec.resources) for cell in design_cells(spec.factors, spec.design)]
    assert [(s.use_gpu, s.gpus_per_worker, s.cpus_per_worker) for s in sizes] == [(False, 0.0, 0.5), (True, 0.25, 0.5)]
    assert sizes[1].scaling() == {"num_workers": 1, "cpus_per_worker": 0.5, "use_gpu": True, "gpus_per_worker": 0.25}


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        (
            {"gpus": 1},
            (
                r"method: level .*'abmil'.*: resources: unknown key\(s\) \['gpus'\]; "
                r"choose from \['cpus_per_worker', 'gpus_per_worker', 'num_workers'\]"
            ),
        ),
        ({"use_gpu": True}, r"unknown key\(s\) \['use_gpu'\].*use_gpu follows from gpus_per_worker > 0"),
        ({"num_workers": 0}, r"method: level .*'abmil'.*: resources: num_workers: Input should be greater than or equal to 1"),
        ([1], r"method: level .*: resources must be a mapping"),
    ],
)
def test_a_levels_bad_resources_are_refused_when_the_spec_loads(tmp_path: Path, resources: Any, message: str) -> None:
    path = _spec(tmp_path, tmp_path / "absent", ["modaltune", {"name": "abmil", "resources": resources}])
    with pytest.raises(InputError, match=message):
        load_study_spec(path)


def test_levels_differing_only_in_resources_are_one_level() -> None:
    """Same method, same settings: the same thing trained, so one comparison, not two."""
    with pytest.raises(InputError, match=r"factors.method: levels repeat: \['abmil', 'abmil'\]"):
        design_cells({"method": ["abmil", {"name": "abmil", "resources": {"num_workers": 2}}]}, DesignSpec())


def _methods_spec(**edits: Any) -> StudySpec:
    return StudySpec.model_validate({
        "name": "mixed", "cohort": "/nowhere", "folds": 2, "train": {"optim": {"epochs": 10}},
        "factors": {"method": ["modaltune", {"name": "finetune", "resources": {"num_workers": 4, "gpus_per_worker": 1}}]},
        "resources": {"num_workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0.5},
    } | edits)


def test_cost_bills_each_trial_at_its_cells_size() -> None:
    spec = _methods_spec()
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c"], "cell": ["c000", "c001", "c001"], "method": ["modaltune", "finetune", "finetune"],
        "state": ["finished"] * 3, "time_total_s": [3600.0] * 3,
    })
    table = cost_table(spec, pd.DataFrame(), trials).set_index("cell")
    assert table.loc["c000", "gpu_hours"] == pytest.approx(0.5) and table.loc["c000", "cpu_hours"] == pytest.approx(2)
    assert table.loc["c001", "gpu_hours"] == pytest.approx(2 * 4 * 1.0) and table.loc["c001", "cpu_hours"] == pytest.approx(2 * 4 * 2)
    # What a trial's result rows record wins over the spec (a resumed study whose sizes changed).
    recorded = pd.DataFrame({"trial_id": ["b"], "num_workers": [2], "cpus_per_worker": [1.0], "gpus_per_worker": [1.0]})
    table = cost_table(spec, recorded, trials).set_index("cell")
    assert table.loc["c001", "gpu_hours"] == pytest.approx(2 + 4) and table.loc["total", "gpu_hours"] == pytest.approx(0.5 + 6)


def test_plan_prices_each_methods_cells_at_their_own_size() -> None:
    plan = forecast(_methods_spec(), cohort_folds=4)
    plan.pilot = PilotTimes(Path("pilot"), epoch_s=36.0, start_s=0.0)  # 10 epochs x 2 folds: 0.2 trial-hours a trial
    costs = plan.costs().set_index("method")
    assert list(costs["per trial"]) == ["1 x (2 CPU, 0.5 GPU)", "4 x (2 CPU, 1 GPU)"]
    assert costs["trial_hours"].tolist() == pytest.approx([0.2, 0.2])
    assert costs["gpu_hours"].tolist() == pytest.approx([0.2 * 0.5, 0.2 * 4]) and costs["cpu_hours"].tolist() == pytest.approx([0.4, 1.6])
    text = plan.text()
    assert "at most 0.40 trial-hours, 0.90 GPU-hours and 2.00 CPU-hours reserved" in text
    assert "resources and cost per method" in text and "4 x (2 CPU, 1 GPU)" in text


def test_resuming_with_a_levels_cpus_or_gpus_changed_is_harmless_but_not_its_workers() -> None:
    spec = _methods_spec()
    def changed(resources: dict[str, Any]) -> StudySpec:
        return _methods_spec(factors={"method": ["modaltune", {"name": "finetune", "resources": resources}]})
    assert computing_settings(changed({"num_workers": 4, "gpus_per_worker": 2})) == computing_settings(spec)
    assert computing_settings(changed({"num_workers": 2, "gpus_per_worker": 1})) != computing_settings(spec)
    assert flat_settings(spec)["factors.method.1.resources.gpus_per_worker"] == 1
