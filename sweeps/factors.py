"""Study factors: what a level of each factor is called and what it changes in a run config.

A factor is one registered function ``(where, value) -> Level`` in ``FACTORS``: it checks a
level as written in the spec (``where`` names it for messages) and returns its short label
(``wsi+rna``, ``survival=2``), used in tables and progress output, and the nested override it
makes to the run config. The spec's validator reads the factor names from the same table, so a
new factor is one function here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modaltune.errors import InputError
from modaltune.registry import Registry


@dataclass(frozen=True)
class Level:
    label: str
    override: dict[str, Any]


FACTORS: Registry[Callable[[str, Any], Level]] = Registry("factor")


def factor_level(factor: str, value: Any) -> Level:
    """The label and run-config override of one level of ``factor``."""
    return FACTORS[factor](f"factors.{factor}: level {value!r}", value)


@FACTORS.register("adapter_depth")
def _adapter_depth(where: str, value: Any) -> Level:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise InputError(f"{where} must be an int (number of adapters) or a layout (list of lists of layer indices)")
    if isinstance(value, int):
        return Level(str(value), {"model": {"adapter_depth": value, "adapter_layout": None}})
    if not all(isinstance(block, list) and block for block in value):
        raise InputError(f"{where} must be a list of non-empty lists of layer indices")
    return Level("layout" + json.dumps(value, separators=(",", ":")), {"model": {"adapter_layout": value}})


@FACTORS.register("llm")
def _llm(where: str, value: Any) -> Level:
    if not isinstance(value, str):
        raise InputError(f"{where} must be a text encoder name such as 'minilm' or 'hf:NAME'")
    return Level(value, {"text_encoder": value})


@FACTORS.register("modalities")
def _modalities(where: str, value: Any) -> Level:
    modalities = value.split("+") if isinstance(value, str) else value
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise InputError(f"{where} must be a list of modalities such as [wsi, rna]")
    return Level("+".join(modalities), {"model": {"modalities": modalities}})


@FACTORS.register("loss_weights")
def _loss_weights(where: str, value: Any) -> Level:
    if not isinstance(value, dict) or not value:
        raise InputError(f"{where} must be a mapping task -> weight, e.g. {{survival: 2.0}}")
    label = ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in value.items())
    return Level(label, {"loss_weights": value})


@FACTORS.register("slide_encoder")
def _slide_encoder(where: str, value: Any) -> Level:
    if isinstance(value, str):
        return Level(value, {"model": {"encoder": value}})
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        settings = {k: v for k, v in value.items() if k != "name"}
        return Level(value["name"], {"model": settings})
    raise InputError(f"{where} must be a preset name or a mapping with a 'name' and model.encoder* settings")


@FACTORS.register("cohorts")
def _cohorts(where: str, value: Any) -> Level:
    cohorts = [value] if isinstance(value, str) else value
    if not isinstance(cohorts, list) or not cohorts:
        raise InputError(f"{where} must be a cancer type or a list of them")
    return Level("+".join(cohorts), {"cohorts": cohorts})
