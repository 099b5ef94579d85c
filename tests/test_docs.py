"""The documentation site builds with --strict (no broken link or anchor), its spec reference is
generated from the schema (every field of StudySpec and TrainConfig, at every depth), and the
README stays a README."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel

from modaltune.sweeps.spec import StudySpec
from modaltune.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    """docs/hooks/spec_reference.py, loaded from its file as MkDocs loads it."""
    spec = importlib.util.spec_from_file_location("spec_reference_hook", ROOT / "docs" / "hooks" / "spec_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _fields(root: type[BaseModel]) -> dict[type[BaseModel], list[str]]:
    """Every model with fields reachable from root, with its field names."""
    found: dict[type[BaseModel], list[str]] = {}
    todo = [root]
    while todo:
        model = todo.pop()
        if model in found or not model.model_fields:
            continue
        found[model] = [field.alias or name for name, field in model.model_fields.items()]
        todo.extend(nested for field in model.model_fields.values() for nested in _models(field.annotation))
    return found


@pytest.fixture(scope="module")
def reference() -> str:
    """The generated spec reference, rendered once (it imports the whole library)."""
    return str(_hook().render())


@pytest.mark.parametrize("root", [StudySpec, TrainConfig])
def test_the_spec_reference_lists_every_field_of_the_schema_in_its_models_table(reference: str, root: type[BaseModel]) -> None:
    page = reference
    for model, names in _fields(root).items():
        # each model's table sits under the line naming its class; every field is a row of it
        where = page.index(f"`{model.__module__}.{model.__name__}`")
        table = page[where:].split("\n\n|", 1)[1].split("\n\n", 1)[0]
        missing = [name for name in names if f"| `{name}` |" not in table]
        assert not missing, f"{model.__name__}: {missing} missing from the spec reference"


def test_the_spec_reference_lists_the_settings_a_registry_entry_declares(reference: str) -> None:
    asha = reference.split("#### `asha`", 1)[1].split("####", 1)[0]
    assert "| `grace_period` | int; ≥ 1 | `1` |" in asha
    assert "| `reduction_factor` |" in asha


def test_the_readme_fits_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text  # the two commands CI runs stay discoverable


@pytest.mark.slow  # imports the whole library (torch) to generate the reference: ~10-25 s on 2 cores
def test_the_site_builds_strict_with_the_generated_pages(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material are not installed (pip install mkdocs==1.6.1 mkdocs-material==9.8.1)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (site / "studies" / "spec-reference" / "index.html").read_text(encoding="utf-8")
    assert "<!-- generated" not in reference
    assert all(f"<code>{name}</code>" in reference for name in StudySpec.model_fields)
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and 'href="cohorts/' in home  # the README, its docs/ links made relative
