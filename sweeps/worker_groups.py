"""The placement groups of a study's Ray Train runs: which trial reserved which, and freeing them.

Ray Train V2 reserves a run's workers in a placement group that belongs to the job, not to the
run's controller: if the trial that started a run dies (its node lost, its process killed), the
group's CPUs and GPUs stay reserved until someone removes it. Ray Train's own cleaner asks Ray's
State API whether the controller lives, and an embedded Ray (no dashboard) has no State API.
Every worker records its group and the trial start that owns it in
``trials/TRIAL/REPETITION/workers/rank<r>.json`` (``modaltune.train.worker``), so the study's
driver can tell whose group a reservation is and free those of trials that have ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

from modaltune.sweeps.layout import StudyLayout
from modaltune.sweeps.plan import StudyPlan

ENDED = ("REMOVED",)


@dataclass(frozen=True)
class GroupRecord:
    """A worker's record of the placement group its run holds."""

    group_id: str
    trial_id: str
    owner: str | None  # the trial start (incarnation) that launched the run


def recorded_groups(plan: StudyPlan, trial_id: str = "*") -> list[GroupRecord]:
    """The groups recorded by the workers of one trial (default: of every trial); one per group."""
    found: dict[str, GroupRecord] = {}
    for path in sorted(StudyLayout(plan.study_dir).runs.glob(f"{trial_id}/*/workers/rank*.json")):
        record = _read(path)  # written atomically: never torn
        if record.get("placement_group"):
            found.setdefault(record["placement_group"], GroupRecord(record["placement_group"], path.parents[2].name, record.get("owner")))
    return list(found.values())


def group_table() -> dict[str, dict[str, Any]]:
    """Every placement group of the cluster (Ray's GCS table: state, bundles, nodes)."""
    return placement_group_table()


def remove_live(group_ids: list[str]) -> list[str]:
    """Remove the groups that still exist; returns the ids removed."""
    table = group_table()
    removed = []
    for group_id in group_ids:
        if table.get(group_id, {}).get("state", "REMOVED") in ENDED:
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
        removed.append(group_id)
    return removed


def describe_bundles(entry: dict[str, Any]) -> str:
    """``2 x {CPU: 0.5}`` for a group of two equal bundles."""
    bundles = list(entry.get("bundles", {}).values())
    if not bundles:
        return "no bundles"
    shapes = {json.dumps(b, sort_keys=True) for b in bundles}
    shape = ", ".join(f"{k}: {v:g}" for k, v in sorted(bundles[0].items()))
    return f"{len(bundles)} x {{{shape}}}" if len(shapes) == 1 else f"{len(bundles)} bundles"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
