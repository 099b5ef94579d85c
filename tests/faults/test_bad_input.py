"""Bad input never reaches a worker: each class of mistake is refused by the study command
before Ray starts, with exit code 2, a message naming the file or key, and nothing written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from modaltune.cli.ablation import main
from tests.data.test_validate import CORRUPTIONS
from tests.studyproc import REPO

pytestmark = pytest.mark.slow

COHORT_FAULTS = ["unreadable feature file", "truncated feature file", "NaN/Inf in features", "unknown subtype", "case in two folds"]


def _spec(path: Path, cohort: Path, edits: dict[str, Any]) -> Path:
    raw = yaml.safe_load((REPO / "sweeps" / "studies" / "tiny.yaml").read_text(encoding="utf-8"))
    raw |= {"name": "bad", "cohort": str(cohort), "synthetic": None} | edits
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _refused(spec: Path, storage: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["--study", str(spec), "--storage", str(storage)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not storage.exists(), "bad input wrote to the study folder"
    return err


@pytest.mark.parametrize("fault", COHORT_FAULTS)
def test_malformed_cohort_is_refused(fault: str, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    corrupt, where, field, message = CORRUPTIONS[fault]
    corrupt(cohort)
    err = _refused(_spec(tmp_path / "study.yaml", cohort, {"factors": {"modalities": [["wsi"]]}}), tmp_path / "studies", capsys)
    assert where in err and field in err and message in err


SPEC_FAULTS: dict[str, tuple[Callable[[Path], dict[str, Any]], str]] = {
    "unknown factor key": (lambda c: {"factors": {"modalities": [["wsi"]], "depth": [1, 2]}}, "unknown factor 'depth'"),
    "out-of-range distribution": (
        lambda c: {"search": {"params": {"optim.lr": {"type": "loguniform", "low": -1.0, "high": 0.1}}}}, "search.params.optim.lr"
    ),
    "unknown text encoder": (lambda c: {"factors": {"llm": ["minilm", "bert-huge"]}}, "bert-huge"),
    "missing cohort path": (lambda c: {"cohort": str(c.parent / "no-such-cohort")}, "no-such-cohort"),
}


@pytest.mark.parametrize("fault", list(SPEC_FAULTS))
def test_malformed_spec_is_refused(fault: str, small_cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edits, message = SPEC_FAULTS[fault]
    err = _refused(_spec(tmp_path / "study.yaml", small_cohort, edits(small_cohort)), tmp_path / "studies", capsys)
    assert message in err
