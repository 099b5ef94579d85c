"""The run config's ``model`` section reaches every knob of the model it builds: adapter block
size, drop path, extractors, modality self-attention and the RNA encoder's depth and dropout can
be set in a config, overridden on the command line and searched in a study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from modaltune.data import Cohort
from modaltune.errors import InputError
from modaltune.models import ModalTuneModel
from modaltune.models.drop_path import DropPath
from modaltune.train.config import load_train_config

pytestmark = pytest.mark.slow

STUDIES = Path(__file__).resolve().parents[2] / "sweeps" / "studies"


def test_the_model_section_sets_the_adapters_and_the_rna_encoder(small_cohort: Path) -> None:
    config = load_train_config(None, [
        "model.adapter_depth=2", "model.adapter_block_size=1", "model.adapter_drop_path=0.0", "model.extra_extractors=0",
        "model.modality_self_attention=false", "model.rna_mixer_depth=1", "model.rna_dropout=0.1",
    ])
    model = ModalTuneModel(config.model.for_cohort(Cohort(small_cohort)))
    assert model.adapter is not None and model.adapter.layout == ((2, 2), (3, 3))
    assert [len(block.extractors) for block in model.adapter.blocks] == [1, 1]
    assert all(block.self_attn is None for block in model.adapter.blocks)
    assert {module.p for module in model.adapter.modules() if isinstance(module, DropPath)} == {0.0}
    assert {module.p for module in model.modality_encoders["rna"].modules() if isinstance(module, nn.Dropout)} == {0.1}

    default = ModalTuneModel(load_train_config(None, ["model.adapter_depth=2"]).model.for_cohort(Cohort(small_cohort)))
    assert default.adapter is not None and len(default.adapter.blocks[-1].extractors) == 3
    assert {module.p for module in default.adapter.modules() if isinstance(module, DropPath)} == {0.1}


def test_an_impossible_drop_path_is_refused_naming_the_field() -> None:
    with pytest.raises(InputError, match="adapter_drop_path"):
        load_train_config(None, ["model.adapter_drop_path=1.0"])


def test_a_study_may_search_the_adapters_regularisation(tmp_path: Path) -> None:
    spec = yaml.safe_load((STUDIES / "demo.yaml").read_text())
    spec["cohort"] = str((STUDIES / spec["cohort"]).resolve())
    spec["train"]["model"] |= {"extra_extractors": 0, "modality_self_attention": False}
    spec["search"]["params"] = {"model.adapter_drop_path": {"type": "uniform", "low": 0.0, "high": 0.3}}
    path = tmp_path / "regularised.yaml"
    path.write_text(yaml.safe_dump(spec))
    command = [str(Path(sys.executable).with_name("modaltune")), "plan", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "3 cells x 2 trials = 6 trials" in done.stdout
