"""Ablation cells: one combination of factor levels, as a readable label and a config override.

Each factor level becomes (a) a short label that names it in tables and progress output
(``wsi+rna``, ``survival=2``) and (b) the nested override it makes to a run config. The design
says which combinations are run: all of them (``crossed``), the reference cell plus one factor
changed at a time (``one_at_a_time``, the paper's ablation tables), or a seeded sample. The
reference level of every factor is its first level.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from modaltune.errors import InputError
from modaltune.sweeps.factors import factor_level
from modaltune.sweeps.resources import ResourcesSpec
from modaltune.sweeps.spec import DesignSpec


@dataclass(frozen=True)
class Cell:
    id: str
    levels: dict[str, str] = field(default_factory=dict)  # factor -> level label
    overrides: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)  # its levels' partial resources, over the study's
    search_params: dict[str, Any] = field(default_factory=dict)  # its levels' own search params, over the study's

    def resources_in(self, study: ResourcesSpec) -> ResourcesSpec:
        """What each of this cell's trials reserves: the study's resources with its levels' own."""
        return study.with_overrides(self.resources)


def design_cells(factors: dict[str, list[Any]], design: DesignSpec) -> list[Cell]:
    """The cells the design runs, the reference cell (every factor at its first level) first.

    Two levels of a factor with the same label are refused, also when only their ``resources``
    differ: they train the same thing, so they would be one comparison counted twice."""
    levels = {name: [factor_level(name, value) for value in values] for name, values in factors.items()}
    for name, options in levels.items():
        labels = [level.label for level in options]
        if len(set(labels)) != len(labels):
            raise InputError(f"factors.{name}: levels repeat: {labels}")
    names = list(levels)
    combos: list[tuple[int, ...]]
    if design.type == "one_at_a_time":
        combos = [tuple(0 for _ in names)]
        for position, name in enumerate(names):
            combos += [tuple(i if p == position else 0 for p in range(len(names))) for i in range(1, len(levels[name]))]
    else:
        combos = list(itertools.product(*(range(len(levels[name])) for name in names)))
        if design.type == "sampled":
            if design.cells is None or design.cells > len(combos):
                raise InputError(f"design.cells: {design.cells} but the factors have only {len(combos)} combinations")
            combos = combos[:1] + random.Random(design.seed).sample(combos[1:], design.cells - 1)
    return [
        Cell(
            id=f"c{number:03d}",
            levels={name: levels[name][i].label for name, i in zip(names, combo, strict=True)},
            overrides=tuple(levels[name][i].override for name, i in zip(names, combo, strict=True)),
            resources={key: value for name, i in zip(names, combo, strict=True) for key, value in levels[name][i].resources.items()},
            search_params={
                key: value for name, i in zip(names, combo, strict=True) for key, value in levels[name][i].search_params.items()
            },
        )
        for number, combo in enumerate(combos)
    ]
