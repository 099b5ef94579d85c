"""A killed Ray Train controller leaves its worker group's placement group behind (it belongs to
the job); the reaper frees it, so the next trial finds room."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table

from modaltune.train import ray_session
from sweeps.reaper import WorkerGroupReaper


@ray.remote(num_cpus=0)
class Controller:
    """Stands in for Ray Train's controller: reserves a worker group's CPUs in a placement group."""

    def reserve(self, cpus: float) -> str:
        group = placement_group([{"CPU": cpus}])
        ray.get(group.ready())
        return group.id.hex()


@pytest.fixture(scope="module")
def local_ray():
    ray_session.connect(num_cpus=2)
    yield
    ray.shutdown()  # only the Ray instance this module started


def _state(group_id: str) -> str:
    return placement_group_table(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))["state"]


def test_the_group_of_a_killed_controller_is_freed_after_the_grace_period(local_ray, tmp_path: Path) -> None:
    controller = Controller.remote()
    group_id = ray.get(controller.reserve.remote(1.5))
    ray.kill(controller)  # what Tune's stop of a trial does to its Ray Train run
    time.sleep(1.0)
    assert _state(group_id) == "CREATED", "the group outlived its creator: the leak the reaper exists for"
    assert ray.available_resources().get("CPU", 0) < 1.0

    record = tmp_path / "trials" / "t1" / "fold0_seed0" / "workers" / "rank0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": 1, "placement_group": group_id}))
    reaper = WorkerGroupReaper(SimpleNamespace(trial_dir=lambda trial_id: tmp_path / "trials" / trial_id), grace_s=1.0)  # type: ignore[arg-type]
    reaper.on_trial_complete(0, [], SimpleNamespace(trial_id="t1"))
    reaper.on_step(0, [])
    assert _state(group_id) == "CREATED", "within the grace period the run's controller may still remove it itself"
    time.sleep(1.1)
    reaper.on_step(1, [])
    assert _state(group_id) == "REMOVED"
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 1.9 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= 1.9
    assert reaper.reap("t1") == [] and reaper.reap("no-such-trial") == []  # already removed; nothing recorded
