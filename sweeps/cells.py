"""Ablation cells: one combination of factor levels, as a readable label and a config override.

Each factor level becomes (a) a short label that names it in tables and progress output
(``wsi+rna``, ``survival=2``) and (b) the nested override it makes to a run config. The design
says which combinations are run: all of them (``crossed``), the reference cell plus one factor
changed at a time (``one_at_a_time``, the paper's ablation tables), or a seeded sample. The
reference level of every factor is its first level.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from typing import Any

from modaltune.errors import InputError
from sweeps.spec import DesignSpec


@dataclass(frozen=True)
class Level:
    label: str
    override: dict[str, Any]


@dataclass(frozen=True)
class Cell:
    id: str
    levels: dict[str, str] = field(default_factory=dict)  # factor -> level label
    overrides: tuple[dict[str, Any], ...] = ()


def factor_level(factor: str, value: Any) -> Level:
    """The label and run-config override of one level of ``factor``."""
    where = f"factors.{factor}: level {value!r}"
    if factor == "adapter_depth":
        if isinstance(value, bool) or not isinstance(value, (int, list)):
            raise InputError(f"{where} must be an int (number of adapters) or a layout (list of lists of layer indices)")
        if isinstance(value, int):
            return Level(str(value), {"model": {"adapter_depth": value, "adapter_layout": None}})
        if not all(isinstance(block, list) and block for block in value):
            raise InputError(f"{where} must be a list of non-empty lists of layer indices")
        return Level("layout" + json.dumps(value, separators=(",", ":")), {"model": {"adapter_layout": value}})
    if factor == "llm":
        if not isinstance(value, str):
            raise InputError(f"{where} must be a text encoder name such as 'minilm' or 'hf:NAME'")
        return Level(value, {"text_encoder": value})
    if factor == "modalities":
        modalities = value.split("+") if isinstance(value, str) else value
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            raise InputError(f"{where} must be a list of modalities such as [wsi, rna]")
        return Level("+".join(modalities), {"model": {"modalities": modalities}})
    if factor == "loss_weights":
        if not isinstance(value, dict) or not value:
            raise InputError(f"{where} must be a mapping task -> weight, e.g. {{survival: 2.0}}")
        return Level(",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in value.items()), {"loss_weights": value})
    if factor == "slide_encoder":
        if isinstance(value, str):
            return Level(value, {"model": {"encoder": value}})
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            settings = {k: v for k, v in value.items() if k != "name"}
            return Level(value["name"], {"model": settings})
        raise InputError(f"{where} must be a preset name or a mapping with a 'name' and model.encoder* settings")
    if factor == "cohorts":
        cohorts = [value] if isinstance(value, str) else value
        if not isinstance(cohorts, list) or not cohorts:
            raise InputError(f"{where} must be a cancer type or a list of them")
        return Level("+".join(cohorts), {"cohorts": cohorts})
    raise InputError(f"factors: unknown factor {factor!r}")


def design_cells(factors: dict[str, list[Any]], design: DesignSpec) -> list[Cell]:
    """The cells the design runs, the reference cell (every factor at its first level) first."""
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
            levels={name: levels[name][i].label for name, i in zip(names, combo)},
            overrides=tuple(levels[name][i].override for name, i in zip(names, combo)),
        )
        for number, combo in enumerate(combos)
    ]
