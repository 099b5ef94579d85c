"""A study that crosses the SLFM (a LongNet and a TITAN architecture) with the adapter depth:
every cell trains, and the analysis compares them; a pretrained SLFM paired with a cohort of
another tile encoder's features is refused before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from modaltune.errors import InputError
from modaltune.sweeps.plan import build_plan
from modaltune.sweeps.spec import load_study_spec
from tests.studyproc import finish_study, start_study, write_spec

pytestmark = pytest.mark.slow

FACTORS = {"slide_encoder": ["tiny", "titan_tiny"], "adapter_depth": [3, 0]}


@pytest.mark.exhaustive(
    "a model-structure factor through a real study: tests/sweeps/test_methods_study.py; both architectures built "
    "with adapters and trained: tests/models (test_titan.py, test_modal_adapter.py); "
    "every slide_encoder preset built for a cohort: tests/test_registry.py"
)
def test_a_study_crossing_gigapath_and_titan_architectures_with_adapter_depth_trains_and_is_analysed(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "slfms.yaml", "tiny", {
        "cohort": str(tmp_path / "cohort"), "folds": 2, "factors": FACTORS, "max_concurrent": 4,
        "train": yaml.safe_load((Path(__file__).parents[2] / "sweeps/studies/tiny.yaml").read_text())["train"]
        | {"optim": {"lr": 0.004, "epochs": 2, "warmup_epochs": 1}},
    })
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=900)
    assert code == 0, output[-4000:]
    study = tmp_path / "studies" / "slfms"
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 4 and set(trials["state"]) == {"finished"}
    results = pd.read_parquet(study / "results.parquet")
    assert results.groupby(["slide_encoder", "adapter_depth", "fold"])["epoch"].nunique().eq(2).all()
    assert set(results["slide_encoder"]) == {"tiny", "titan_tiny"} and results["val_c_index"].between(0, 1).all()
    report = (study / "report" / "report.md").read_text(encoding="utf-8")
    assert "| slide_encoder | titan_tiny" in report and "| adapter_depth | 0" in report


def test_a_pretrained_titan_with_a_cohort_of_other_tile_features_is_refused_up_front(tmp_path: Path, small_cohort: Path) -> None:
    raw = yaml.safe_load((Path(__file__).parents[2] / "sweeps/studies/tiny.yaml").read_text())
    raw["cohort"] = str(small_cohort)
    raw.pop("synthetic")
    raw["train"]["model"] |= {"encoder": "titan", "encoder_hub_id": "MahmoodLab/TITAN"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    spec = load_study_spec(path)
    with pytest.raises(InputError, match=r"'titan' \(pretrained\) reads 768-wide CONCH v1.5 tile features, but .* has \d+-wide ones"):
        build_plan(spec, tmp_path / "studies" / spec.name)
