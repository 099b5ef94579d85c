"""The packages stack without cycles: ``modaltune`` (library) <- ``modaltune.sweeps`` (studies)
<- ``modaltune.analysis`` (reading them) <- ``modaltune.cli`` (the commands, which run all three).

The last three live in the top-level folders ``sweeps/``, ``analysis/`` and ``cli/`` and are
installed under ``modaltune`` (pyproject's package-dir); imported under their folder names they
would be second copies of themselves (two registries, two of every class), so nothing may.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["modaltune", "sweeps", "analysis", "cli"]  # folders; each may import only those before it
MAPPED = set(LAYERS[1:])  # installed as modaltune.<name>
# A script, not a module (``python sweeps/ablation.py``, ``ray submit cluster/gpu.yaml
# sweeps/ablation.py``): it only starts the study command; nothing imports it.
SCRIPTS = {"sweeps/ablation.py"}


def _imported_modules(path: Path) -> set[str]:
    """Absolute module names ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def _layer(module: str) -> str | None:
    """The folder (layer) an imported module lives in, None for other libraries."""
    parts = module.split(".")
    if parts[0] != "modaltune":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in MAPPED else "modaltune"


def _python_files() -> list[Path]:
    return sorted(p for folder in (*LAYERS, "tests", "benchmarks") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_package_above_its_own(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    offending = {
        str(path.relative_to(REPO)): sorted(layers & above)
        for path in sorted((REPO / package).rglob("*.py"))
        if str(path.relative_to(REPO)) not in SCRIPTS
        and (layers := {_layer(m) for m in _imported_modules(path)} - {None}) & above
    }
    assert not offending, f"imports against the layering {LAYERS}: {offending}"


def test_nothing_imports_the_folders_by_their_own_names() -> None:
    offending = {
        str(path.relative_to(REPO)): sorted(m for m in _imported_modules(path) if m.split(".")[0] in MAPPED)
        for path in _python_files()
        if any(m.split(".")[0] in MAPPED for m in _imported_modules(path))
    }
    assert not offending, f"import these as modaltune.<name>: {offending}"


def test_the_project_uses_no_private_module_of_another_library() -> None:
    """Another library's private modules (``ray._private``, ``torch._C``...) change without notice;
    the project's own code (not its tests, which may look inside to check it) imports none."""
    offending = {
        str(path.relative_to(REPO)): sorted(private)
        for package in LAYERS
        for path in sorted((REPO / package).rglob("*.py"))
        if (private := {
            m for m in _imported_modules(path)
            if m.split(".")[0] != "modaltune" and any(part.startswith("_") and not part.startswith("__") for part in m.split("."))
        })
    }
    assert not offending, f"private modules of other libraries imported: {offending}"
