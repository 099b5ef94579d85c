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
from dataclasses import dataclass, field
from typing import Any

from modaltune.errors import InputError
from modaltune.models.methods import METHOD_NETWORKS, SLFM_METHODS, method_names
from modaltune.registry import EntrySettings, Registry, UnknownChoiceError
from modaltune.sweeps.resources import level_resources


@dataclass(frozen=True)
class Level:
    label: str
    override: dict[str, Any]
    resources: dict[str, Any] = field(default_factory=dict)  # a partial ResourcesSpec: what this level's trials reserve
    search_params: dict[str, Any] = field(default_factory=dict)  # dotted key -> Distribution, over the study's search.params


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


@FACTORS.register("method")
def _method(where: str, value: Any) -> Level:
    """A method by name (``abmil``), or a mapping with its ``name``, optionally the ``modalities``
    it is given (a method that cannot take the slide, such as ``snn``, needs them) and its own
    settings beside them (``{name: abmil, modalities: [wsi, rna], width: 64}``, ``{name: finetune,
    unfrozen_layers: 2}``; ``modaltune`` and ``linear_probe`` take none) and its own ``resources``
    (``{name: abmil, resources: {gpus_per_worker: 0.25}}``, any keys of the study's, which it
    overrides for this level's cells; not in the label, since they do not change what is trained)
    and its own ``search: {params: {...}}`` (``{name: transmil, search: {params:
    {model.method_settings.depth: {type: int, low: 1, high: 3}}}}``), tuned in this level's cells
    only, over the study's ``search.params`` (a key of both: the level's range). A
    ``model.method_settings.<key>`` must be a setting of this method and not one the level fixes.
    Whether the method consumes the cell's modalities is checked with each cell's run config at plan time."""
    raw = {"name": value} if isinstance(value, str) else value
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InputError(f"{where} must be a method name or a mapping with a 'name' (choose from {method_names()})")
    name, modalities = raw["name"], raw.get("modalities")
    settings = {key: item for key, item in raw.items() if key not in ("name", "modalities", "resources", "search")}
    if name not in method_names():
        raise UnknownChoiceError(f"{where}: unknown method {name!r}; choose from {method_names()}")
    if name in SLFM_METHODS and settings and SLFM_METHODS[name].Settings is EntrySettings:
        raise InputError(f"{where}: method {name!r} takes its settings from train.model and other factors, not {sorted(settings)}")
    try:
        (SLFM_METHODS if name in SLFM_METHODS else METHOD_NETWORKS).settings(name, settings)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from exc
    override: dict[str, Any] = {"method": name, "method_settings": settings}
    label = name
    if modalities is not None:
        if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
            raise InputError(f"{where}: modalities must be a list such as [wsi, rna]")
        override["modalities"] = modalities
        label += "[" + "+".join(modalities) + "]"
    if settings:
        label += "(" + ",".join(f"{key}={json.dumps(item, separators=(',', ':'))}" for key, item in settings.items()) + ")"
    resources = level_resources(where, raw["resources"]) if "resources" in raw else {}
    search_params = level_search_params(where, name, settings, raw["search"]) if "search" in raw else {}
    return Level(label, {"model": override}, resources, search_params)


METHOD_SETTINGS_KEY = "model.method_settings."


def level_search_params(where: str, method: str, fixed: dict[str, Any], value: Any) -> dict[str, Any]:
    """A method level's ``search`` (``{params: {dotted key: distribution}}``, as the study's
    ``search.params``), checked: each distribution well formed, each ``model.method_settings.<key>``
    a setting of ``method`` that the level does not fix itself. Returns its params (Distributions)."""
    from pydantic import ValidationError

    from modaltune.errors import describe_validation_error
    from modaltune.sweeps.spec import Distribution  # spec.py imports this module

    if not isinstance(value, dict) or set(value) - {"params"} or not isinstance(value.get("params"), dict):
        raise InputError(
            f"{where}: search must be a mapping {{params: {{dotted.key: distribution}}}} (only params; every cell keeps the study's budget)"
        )
    registry = SLFM_METHODS if method in SLFM_METHODS else METHOD_NETWORKS
    own = sorted(getattr(registry[method], "Settings", EntrySettings).model_fields)
    params: dict[str, Any] = {}
    for key, raw in value["params"].items():
        if key.startswith(METHOD_SETTINGS_KEY):
            setting = key[len(METHOD_SETTINGS_KEY):]
            if setting not in own:
                raise InputError(f"{where}: search.params.{key}: {setting!r} is not a setting of method {method!r} (its settings: {own})")
            if setting in fixed:
                raise InputError(f"{where}: search.params.{key}: the level fixes {setting}={fixed[setting]!r}; tune it or fix it, not both")
        try:
            params[key] = Distribution.model_validate(raw)
        except ValidationError as exc:
            raise InputError(f"{where}: search.params.{key}: {describe_validation_error(exc)}") from exc
    return params
