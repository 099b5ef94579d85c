"""The packages stack without cycles: ``modaltune`` (library) <- ``sweeps`` (studies) <-
``analysis`` (reading them) <- ``cli`` (the commands, which run all three)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["modaltune", "sweeps", "analysis", "cli"]  # each may import only those before it
# A script, not a module (``python sweeps/ablation.py``, ``ray submit cluster/gpu.yaml
# sweeps/ablation.py``): it only starts the study command; nothing imports it.
SCRIPTS = {"sweeps/ablation.py"}


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages ``path`` imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_package_above_its_own(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    offending = {
        str(path.relative_to(REPO)): sorted(_imported_packages(path) & above)
        for path in sorted((REPO / package).rglob("*.py"))
        if str(path.relative_to(REPO)) not in SCRIPTS and _imported_packages(path) & above
    }
    assert not offending, f"imports against the layering {LAYERS}: {offending}"
