"""The one exception family for bad user input.

Everything a user can fix (a malformed cohort, study spec or config) raises a subclass of
``InputError`` with a message naming the file, key or slide; the CLI turns it into exit code 2
without a traceback, while genuine bugs still surface with theirs.
"""

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


class InputError(ValueError):
    """Bad user input; the message says where and what."""


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem of a pydantic error, each naming its dotted key path."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors())


def read_yaml_mapping(path: str | os.PathLike[str], what: str, error: type[InputError] = InputError) -> dict[str, Any]:
    """The YAML mapping at ``path``; a missing file, bad YAML or a non-mapping is an ``error``
    whose message names the file and says it is the ``what`` (e.g. "study spec")."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{path}: {what} not found") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: the {what} must be a mapping of keys")
    return raw
