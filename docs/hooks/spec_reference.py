"""MkDocs hook: the spec reference, generated from the schema at build time so it cannot drift.

A page whose source holds ``MARKER`` gets it replaced by tables built from the pydantic models
themselves: ``StudySpec`` (a study spec) and ``TrainConfig`` (a run config, a spec's ``train:``),
walked through ``model_fields`` into every nested section, with each field's type, constraints,
default and description (``Field(description=...)``, else the comment beside or above the field
in its class's source), then every registry with its entries and the settings an entry declares
(an attribute of the entry that is a pydantic model: a scheduler's ``Settings``, a method's
``settings_type``). Nothing here names a field, so a field added to the schema appears at the
next build. ``render()`` is what the page gets; tests/test_docs.py checks it lists every field.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import re
import sys
import tokenize
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = "<!-- generated: spec reference -->"

# (anchor, title, module, class): the schemas a user writes, each the root of a walk. A section's
# anchor is its key path under its root's (``#train-model``, ``#spec-search-metrics``), so links
# into this page survive a model class being renamed.
ROOTS = (
    ("spec", "Study spec", "modaltune.sweeps.spec", "StudySpec"),
    ("train", "Run config (a spec's train:)", "modaltune.train.config", "TrainConfig"),
)
# Imported so that every registry a spec or config names is loaded; the registries themselves are
# found by walking the loaded modaltune modules, not listed here.
REGISTRY_MODULES = (
    "modaltune.sweeps.spec",
    "modaltune.train.config",
    "modaltune.models",
    "modaltune.models.methods",
    "modaltune.data.modalities",
)

Sections = list[tuple[str, type[BaseModel]]]  # (key path, model), the first one the root
Anchors = dict[type[BaseModel], str]
RegistryListing = tuple[str, str, Any, list[tuple[str, Sections]]]  # module, name, registry, (entry, its settings' sections)

_CONSTRAINTS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs' hook: fill the marker of the page that has one."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown


def render() -> str:
    """The whole generated reference: each root's sections, then the registries."""
    anchors: Anchors = {}
    roots = []
    for root_id, title, module, name in ROOTS:
        root = getattr(importlib.import_module(module), name)
        roots.append((root_id, title, f"{module}.{name}", walk(root, root_id, anchors)))
    entries = registry_settings(anchors)
    out: list[str] = []
    for root_id, title, where, sections in roots:
        out.append(f"## {title} {{#{root_id}}}\n")
        out.append(f"`{where}`\n")
        for index, (path, model) in enumerate(sections):
            out.append(section(path, model, anchors, top=index == 0))
    out.append(registries(entries, anchors))
    return "\n".join(out)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def walk(root: type[BaseModel], root_id: str, anchors: Anchors) -> Sections:
    """Every model with fields reachable from ``root`` that has no section yet, breadth first, with
    the key path it is first met at; each gets its anchor in ``anchors``."""
    found: list[tuple[str, type[BaseModel]]] = []
    queue: list[tuple[str, type[BaseModel]]] = [("", root)]
    while queue:
        path, model = queue.pop(0)
        if model in anchors or not model.model_fields:
            continue
        anchors[model] = slug(f"{root_id}-{path}") if path else root_id
        found.append((path, model))
        for name, field in model.model_fields.items():
            for nested, suffix in nested_models(field.annotation):
                queue.append((f"{path}.{name}{suffix}" if path else f"{name}{suffix}", nested))
    return found


def nested_models(annotation: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    """The models inside a type, with how the key path reaches them (``[]`` a list item, ``.*`` a mapping value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        args = args[:1]
    elif origin in (list, tuple, set, frozenset):
        suffix += "[]"
    elif origin is dict and args:
        args = args[1:]
        suffix += ".*"
    for arg in args:
        yield from nested_models(arg, suffix)


def section(path: str, model: type[BaseModel], anchors: Anchors, top: bool, level: str = "###") -> str:
    lines = [] if top else [f"{level} `{path}` {{#{anchors[model]}}}\n", f"`{model.__module__}.{model.__name__}`\n"]
    doc = inspect.getdoc(model)
    if doc and model.__doc__ is not None and "__doc__" in vars(model):
        lines.append(doc + "\n")
    lines.append(field_table(model, anchors))
    return "\n".join(lines)


def field_table(model: type[BaseModel], anchors: Anchors) -> str:
    if not model.model_fields:
        return "No settings.\n"
    comments = source_comments(model)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        description = field.description or comments.get(name, "")
        rows.append(f"| `{key}` | {cell(type_text(field, anchors))} | {cell(default_text(field))} | {cell(description)} |")
    return "\n".join(rows) + "\n"


def cell(text: str) -> str:
    """A table cell: one line, its pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|") or "—"


def type_text(field: FieldInfo, anchors: Anchors) -> str:
    text = type_name(field.annotation, anchors)
    bounds = []
    for item in field.metadata:
        for attr, symbol in _CONSTRAINTS.items():
            value = getattr(item, attr, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return f"{text}; {', '.join(bounds)}" if bounds else text


def type_name(annotation: Any, anchors: Anchors) -> str:
    """A type as a YAML writer reads it: ``int or null``, ``list of str``, a model as a link to its section."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{anchors[annotation]})" if annotation in anchors else annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], anchors)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a, anchors) for a in sorted(args, key=lambda a: a is type(None)))
    if origin in (list, tuple, set, frozenset):
        return "list of " + " or ".join(type_name(a, anchors) for a in args if a is not Ellipsis) if args else "list"
    if origin is dict:
        return f"mapping of {type_name(args[0], anchors)} to {type_name(args[1], anchors)}" if args else "mapping"
    if isinstance(annotation, type):
        return {"str": "string", "int": "int", "float": "float", "bool": "bool"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "its section's defaults" if type(value).model_fields else "{}"
    return f"`{json.dumps(plain(value))}`"


def plain(value: Any) -> Any:
    """A default as the YAML/JSON a spec would write for it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def source_comments(model: type[BaseModel]) -> dict[str, str]:
    """Each field's comment in the source of the class that declares it: the comment on its line,
    else the comment lines right above it."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or "__annotations__" not in vars(cls):
            continue
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            continue
        found.update(_comments(source, set(vars(cls)["__annotations__"])))
    return found


def _comments(source: str, names: set[str]) -> dict[str, str]:
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            trailing[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or match.group(1) not in names or match.group(1) in found:
            continue
        if number in trailing and not line.lstrip().startswith("#"):
            found[match.group(1)] = trailing[number]
            continue
        above: list[str] = []
        index = number - 1
        while index >= 1 and lines[index - 1].lstrip().startswith("#"):
            above.insert(0, trailing.get(index, ""))
            index -= 1
        if above:
            found[match.group(1)] = " ".join(above)
    return found


def registry_settings(anchors: Anchors) -> list[RegistryListing]:
    """Every registry of the loaded modaltune modules (where it is made, its name, the registry) and,
    per entry, the sections of the settings it declares; anchors ``registry-<name>-<entry>``."""
    for name in REGISTRY_MODULES:
        importlib.import_module(name)
    from modaltune.registry import Registry

    found: dict[int, tuple[str, str, Any]] = {}
    for module_name, loaded in sorted(sys.modules.items()):
        if module_name.startswith("modaltune") and loaded is not None:
            for attr, value in vars(loaded).items():
                if isinstance(value, Registry) and id(value) not in found and _defines(loaded, attr):
                    found[id(value)] = (module_name, attr, value)
    result = []
    for module_name, attr, registry in sorted(found.values(), key=lambda item: (item[0], item[1])):
        entries = []
        for name, entry in registry.items():
            for settings in entry_settings(entry):
                entries.append((name, walk(settings, slug(f"registry-{attr}-{name}"), anchors)))
        result.append((module_name, attr, registry, entries))
    return result


def registries(found: list[RegistryListing], anchors: Anchors) -> str:
    """Each registry: its entries, and the settings each declares."""
    out = [
        "## Registered choices {#registries}\n",
        (
            "What each name-valued key accepts, read from the registries (see [Extending](../extending.md)); "
            "an entry that declares settings has them listed with their defaults.\n"
        ),
    ]
    for module_name, attr, registry, entries in found:
        out.append(f"### {registry.kind}: `{attr}` {{#{slug(f'registry-{attr}')}}}\n")
        out.append(f"`{module_name}.{attr}`: " + ", ".join(f"`{name}`" for name in registry.names()) + "\n")
        for name, sections in entries:
            for index, (path, model) in enumerate(sections):
                if index == 0:
                    out.append(f"#### `{name}`: {model.__name__} {{#{anchors[model]}}}\n")
                    out.append(section(path, model, anchors, top=True))
                else:
                    out.append(section(f"{name}: {path}", model, anchors, top=False, level="#####"))
    return "\n".join(out)


def _defines(module: types.ModuleType, attr: str) -> bool:
    """Whether ``module`` creates the registry it calls ``attr`` (not one it imported from elsewhere)."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(attr)}\b[^=\n]*=\s*Registry\(", source, re.MULTILINE) is not None


def entry_settings(entry: Any) -> list[type[BaseModel]]:
    """The pydantic models an entry declares as class attributes (its settings schema), with fields."""
    owner = entry if isinstance(entry, type) else type(entry)
    found = []
    for _, value in inspect.getmembers_static(owner):
        if isinstance(value, type) and issubclass(value, BaseModel) and value.model_fields and value not in found:
            found.append(value)
    return found
