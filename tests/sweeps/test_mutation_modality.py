"""The third modality end to end in a study: a synthetic cohort with a mutation panel, a
``modalities`` factor with a ``wsi+rna+mutations`` level; both cells train and are analysed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from modaltune.data import Cohort
from tests.studyproc import finish_study, start_study, write_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).parents[2]


@pytest.mark.exhaustive("a mutation panel level through a whole study: tests/sweeps/test_confirm.py (its second level)")
def test_a_study_with_a_mutation_panel_level_trains_and_is_analysed(tmp_path: Path) -> None:
    tiny = yaml.safe_load((REPO / "sweeps/studies/tiny.yaml").read_text())
    spec = write_spec(tmp_path / "mutations.yaml", "tiny", {
        "cohort": str(tmp_path / "cohort"),
        "synthetic": tiny["synthetic"] | {"n_mutation_genes": 6, "mutation_log_hazard": 1.0, "mutation_missing_fraction": 0.1},
        "factors": {"modalities": [["wsi", "rna"], ["wsi", "rna", "mutations"]]},
        "train": tiny["train"] | {"optim": tiny["train"]["optim"] | {"epochs": 2}},
    })
    code, output = finish_study(start_study(spec, tmp_path / "studies"), timeout=600)
    assert code == 0, output[-4000:]
    cohort = Cohort(tmp_path / "cohort")
    assert 0 < len(cohort.modality_cases("mutations")) < len(cohort.case_ids)  # some cases not sequenced: missing tokens
    study = tmp_path / "studies" / "mutations"
    results = pd.read_parquet(study / "results.parquet")
    assert set(results["modalities"]) == {"wsi+rna", "wsi+rna+mutations"}
    assert results.groupby("modalities")["epoch"].nunique().eq(2).all() and results["val_c_index"].between(0, 1).all()
    assert "wsi+rna+mutations" in (study / "report" / "report.md").read_text(encoding="utf-8")
