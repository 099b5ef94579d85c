"""Reading the shipped cluster configs: the files, the project's pins, and the study they name."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import tomllib
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text(encoding="utf-8"))


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` checks before it launches anything: defaults merged, then Ray's JSON schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def pin(package: str) -> str:
    """The version pyproject.toml pins ``package`` to (``name==X`` or ``name[extras]==X``)."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for requirement in dependencies:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==(\S+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}")


def env_from_docker(config: dict[str, Any]) -> dict[str, str]:
    """``--env NAME=VALUE`` options of the cluster's containers."""
    env: dict[str, str] = {}
    for option in config["docker"]["run_options"]:
        words = shlex.split(option)
        if words[0] == "--env":
            name, _, value = words[1].partition("=")
            env[name] = value
    return env


def env_from_setup(config: dict[str, Any]) -> dict[str, str]:
    """``export NAME=VALUE`` lines a setup command writes for Ray's login shells."""
    exports = re.findall(r"'export (\w+)=([^']*)'", "\n".join(config["setup_commands"]))
    return dict(exports)
