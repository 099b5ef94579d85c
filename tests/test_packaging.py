"""What ``pip install .`` puts into a user's environment: the ``modaltune`` namespace only, with
every module of the source tree (pyproject lists the packages: a new one missing from the list
would exist in the repository and not in an installed copy)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"modaltune": "modaltune", "sweeps": "modaltune/sweeps", "analysis": "modaltune/analysis", "cli": "modaltune/cli"}


def test_the_wheel_holds_only_the_modaltune_namespace_and_every_module(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in INSTALLED_AS:
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("modaltune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"modaltune"}, top_level
    expected = {
        f"{installed}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, installed in INSTALLED_AS.items()
        for path in (REPO / folder).rglob("*.py")
    }
    assert not expected - names, sorted(expected - names)[:10]
    assert "modaltune/sweeps/studies/demo.yaml" in names
