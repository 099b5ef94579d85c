"""The spec a study was started with is its identity.

A study folder holds the results of one spec. Resumed with another, it would report the old
results under the new settings, or finish a trial on a schedule matching neither (3 epochs
of a 5-epoch schedule). So the first driver writes ``study.yaml`` (the spec as run, never
rewritten) and ``identity.json``: a fingerprint of everything that changes what a trial
computes, the spec less ``HARMLESS`` settings plus the cohort's files. A resume compares:

- a difference in what trials compute is refused, one line per difference;
- differences in ``HARMLESS`` settings only (trackers, watchdog, resources a worker reserves,
  the study's or a method level's own,
  concurrency, failure budget, free-space margin, where the cohort lies while its files are
  the same) are allowed, logged and appended to ``identity.json``'s ``changes``.

Extending a study in place (more trials per cell, another factor level, seeds or folds) is
refused too, with the way to do it: Tune's saved searcher holds the budget and the cells it
started with, so the new cells would never run while ``study.yaml`` claimed them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modaltune.atomic import write_json_atomic, write_text_atomic
from modaltune.errors import InputError
from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.spec import StudySpec

logger = logging.getLogger(__name__)

# Settings that cannot change what a trial computes: how much a worker reserves (not how many
# workers share a trial's data), how many trials run at once, how failures are retried, when
# the driver calls a study stuck or its storage full, where results are also logged, and the
# cohort's path (its files are fingerprinted instead) and how it was generated.
HARMLESS = (
    "name", "cohort", "synthetic", "storage", "trackers", "watchdog", "max_concurrent", "max_failures", "min_free_mb",
    "resources.cpus_per_worker", "resources.gpus_per_worker",
)
LEVEL_HARMLESS = (".resources.cpus_per_worker", ".resources.gpus_per_worker")
# Differences that would extend the study rather than change it: said so in the refusal.
EXTENDING = ("search.trials_per_cell", "factors", "design", "seeds", "folds", "confirm")
_MISSING = "(not set)"


class SpecChangedError(InputError):
    """``--resume`` with a spec that computes something else than the study's."""


@dataclass
class Identity:
    """What ``identity.json`` holds."""

    fingerprint: str
    cohort: dict[str, str]  # cohort file (or "features/") -> sha256 of its bytes (of its listing)
    changes: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Identity | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: unreadable ({exc}); it records which spec the study was started with") from exc

    def write(self, path: Path) -> None:
        write_json_atomic(path, {"fingerprint": self.fingerprint, "cohort": self.cohort, "changes": self.changes})


def flat_settings(spec: StudySpec) -> dict[str, Any]:
    """Every setting of ``spec`` under its dotted key (``train.optim.epochs``); lists stay values."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    dumped = spec.model_dump(mode="json")
    for factor, levels in dumped["factors"].items():  # a level's resources and search under keys of their own
        for index, level in enumerate(levels):
            if isinstance(level, dict) and "resources" in level:
                level = levels[index] = dict(level)
                for key, value in level.pop("resources").items():
                    flat[f"factors.{factor}.{index}.resources.{key}"] = value
            if isinstance(level, dict) and "search" in level:  # refused on a change, as the study's search.params
                level = levels[index] = dict(level)
                visit(f"factors.{factor}.{index}.search", level.pop("search"))
    visit("", dumped)
    return flat


def _harmless(key: str) -> bool:
    if key.startswith("factors.") and key.endswith(LEVEL_HARMLESS):  # a method level's own resources, as the study's
        return True
    return any(key == h or key.startswith(h + ".") for h in HARMLESS)


def computing_settings(spec: StudySpec) -> dict[str, Any]:
    return {key: value for key, value in flat_settings(spec).items() if not _harmless(key)}


def cohort_files(cohort: Path) -> dict[str, str]:
    """A digest per file of the cohort folder (its features as one listing of names and sizes;
    the frozen-prefix cache, which only saves time, left out)."""
    digests: dict[str, str] = {}
    for path in sorted(cohort.iterdir()) if cohort.is_dir() else []:
        if path.name.startswith(".") or path.name == "cache":
            continue
        if path.is_file():
            digests[path.name] = _file_digest(path)
        elif path.is_dir():
            listing = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
            digests[f"{path.name}/"] = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return digests


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(spec: StudySpec, cohort: dict[str, str]) -> str:
    payload = json.dumps({"spec": computing_settings(spec), "cohort": cohort}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {
        key: (old.get(key, _MISSING), new.get(key, _MISSING))
        for key in sorted(set(old) | set(new))
        if old.get(key, _MISSING) != new.get(key, _MISSING)
    }


def read_stored_spec(layout: StudyLayout) -> StudySpec:
    try:
        return StudySpec.model_validate(yaml.safe_load(layout.spec.read_text(encoding="utf-8")))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise InputError(f"{layout.spec}: unreadable ({exc}); it is the spec the study was started with") from exc


def record_new_study(layout: StudyLayout, spec: StudySpec) -> None:
    """A new study: its spec as run and its identity (``study.yaml`` last: it marks a study)."""
    cohort = cohort_files(spec.cohort)
    Identity(fingerprint(spec, cohort), cohort).write(layout.identity)
    write_text_atomic(layout.spec, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def resumed_changes(layout: StudyLayout, spec: StudySpec, source: str) -> dict[str, tuple[Any, Any]]:
    """The harmless differences of ``spec`` from the study's own spec; ``SpecChangedError``
    listing every difference in what trials compute, if there is one."""
    stored = read_stored_spec(layout)
    identity = Identity.read(layout.identity)
    computing = _differences(computing_settings(stored), computing_settings(spec))
    if identity is not None:
        changed = _differences(identity.cohort, cohort_files(spec.cohort))
        computing |= {
            f"cohort file {name}": ("as the study started", "changed" if new != _MISSING else "gone")
            for name, (_, new) in changed.items()
        }
    if computing:
        lines = [f"  {key}: {_text(old)} -> {_text(new)}" for key, (old, new) in computing.items()]
        hint = (
            "a study is not extended in place (Tune's saved search holds the budget and cells it started with): run the new spec "
            "as a new study, under another `name` or --storage; this one keeps its results"
            if any(
                (key == e or key.startswith(e + ".")) and ".resources." not in key and ".search." not in key
                for key in computing for e in EXTENDING
            )
            else f"resume with the study's own spec ({layout.spec}), or run the new one as a new study under another `name` or --storage"
        )
        raise SpecChangedError(
            f"{source} changes what the trials of {layout.root} compute, which --resume refuses ({len(lines)} difference(s)):\n"
            + "\n".join(lines) + f"\n{hint}"
        )
    return {key: diff for key, diff in _differences(flat_settings(stored), flat_settings(spec)).items() if key != "name"}


def record_changes(layout: StudyLayout, spec: StudySpec, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append a resume's harmless ``changes`` to ``identity.json`` (created for a study from before identities)."""
    identity = Identity.read(layout.identity)
    if identity is None:
        cohort = cohort_files(spec.cohort)
        identity = Identity(fingerprint(spec, cohort), cohort)
    elif not changes:
        return
    if changes:
        identity.changes.append({
            "at": time.time(), "host": socket.gethostname(), "pid": os.getpid(),
            "changes": {key: [old, new] for key, (old, new) in changes.items()},
        })
        logger.info(
            "resuming with settings that do not change what trials compute (recorded in %s): %s", layout.identity.name,
            "; ".join(f"{key} {_text(old)} -> {_text(new)}" for key, (old, new) in changes.items()),
        )
    identity.write(layout.identity)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
