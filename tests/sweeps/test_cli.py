"""Which study and storage `sweeps/ablation.py` picks, e.g. under `ray submit` with no arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from modaltune.cli.ablation import DEMO_STUDY, REPO_ROOT, choose_storage, choose_study
from modaltune.errors import InputError
from modaltune.sweeps.storage import storage_folder


def test_study_comes_from_the_flag_then_the_environment_then_the_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODALTUNE_STUDY", raising=False)
    assert choose_study(None) == (DEMO_STUDY, "the default demo study")
    monkeypatch.setenv("MODALTUNE_STUDY", "sweeps/studies/tiny.yaml")
    assert choose_study(None) == (REPO_ROOT / "sweeps/studies/tiny.yaml", "$MODALTUNE_STUDY")
    assert choose_study("my.yaml") == (Path("my.yaml"), "--study")


def test_relative_study_prefers_the_working_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`ray submit` runs ~/ablation.py from the home folder: a name that is not there is the repository's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps" / "studies").mkdir(parents=True)
    (tmp_path / "sweeps" / "studies" / "tiny.yaml").write_text("name: mine\n")
    assert choose_study("sweeps/studies/tiny.yaml")[0] == Path("sweeps/studies/tiny.yaml")
    assert choose_study("sweeps/studies/smoke.yaml")[0] == REPO_ROOT / "sweeps/studies/smoke.yaml"
    assert choose_study("sweeps/studies/missing.yaml")[0] == Path("sweeps/studies/missing.yaml")  # load names it


def test_storage_comes_from_the_flag_then_the_environment_then_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODALTUNE_STORAGE", raising=False)
    assert choose_storage(None, None) == "runs/studies"
    assert choose_storage(None, "/spec") == "/spec"
    monkeypatch.setenv("MODALTUNE_STORAGE", "/cluster")
    assert choose_storage(None, "/spec") == "/cluster"
    assert choose_storage("/flag", "/spec") == "/flag"


@pytest.mark.parametrize("uri", ["s3://bucket/studies", "gs://bucket/studies"])
def test_object_store_uri_is_refused_by_name(uri: str) -> None:
    """Path('s3://b') would quietly become a local folder named 's3:'; a URI is refused instead."""
    with pytest.raises(InputError, match=uri):
        storage_folder(uri)


def test_storage_folder_expands_home() -> None:
    assert storage_folder("~/studies") == Path.home() / "studies"
