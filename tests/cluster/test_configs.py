"""The shipped cluster configs pass Ray's own checks and agree with the project's pins and studies."""

from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import ray
import yaml

from modaltune.cli.ablation import REPO_ROOT
from modaltune.sweeps.spec import load_study_spec
from modaltune.sweeps.storage import storage_folder
from tests.cluster.configs import CLUSTER, env_from_docker, env_from_setup, load, pin, validated

LAUNCHER_CONFIGS = ["gpu.yaml", "local.yaml"]


def _assert_names_a_study(env: dict[str, str]) -> None:
    """MODALTUNE_STUDY is a shipped spec (relative to the repository) and MODALTUNE_STORAGE a folder."""
    spec = load_study_spec(REPO_ROOT / env["MODALTUNE_STUDY"])
    assert spec.name
    assert storage_folder(env["MODALTUNE_STORAGE"]).is_absolute()


def _assert_installs_with_pins(commands: list[str]) -> None:
    """torch at the project's pin, alone and before the project itself (the README's order)."""
    torch = next(i for i, c in enumerate(commands) if f"install --quiet torch=={pin('torch')}" in c)
    project = next(i for i, c in enumerate(commands) if re.search(r"install --quiet -e ~/modaltune\b", c))
    assert torch < project


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_validation(name: str) -> None:
    config = validated(load(name))
    assert config["file_mounts"]["~/modaltune"] == "."  # the repository, from where `ray up` runs
    assert ".gitignore" in config["rsync_filter"]       # .venv/ and runs/ stay behind
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_rays_validation_rejects_a_misspelt_key(name: str) -> None:
    """The check above can fail: Ray's schema refuses a key it does not know."""
    config = load(name)
    config["setup_command"] = config.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        validated(config)


def test_gpu_cluster() -> None:
    config = validated(load("gpu.yaml"))
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert ray.__version__ == pin("ray")
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))  # a CPU head
    gpu_types = {name: t for name, t in nodes.items() if name != config["head_node_type"]}
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} == {"p4d.24xlarge", "g5.2xlarge"}
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 < node_type["max_workers"]  # autoscaling from zero
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    _assert_installs_with_pins(config["setup_commands"])
    env = env_from_docker(config)
    _assert_names_a_study(env)
    mounts = [o.split()[1] for o in config["docker"]["run_options"] if o.startswith("-v ")]
    shared = [m.split(":")[1] + "/" for m in mounts]
    assert any(env["MODALTUNE_STORAGE"].startswith(s) for s in shared), "storage is not on the shared mount"
    assert env["RAY_AUTH_MODE"] == "token"


def test_local_cluster() -> None:
    config = validated(load("local.yaml"))
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["auth"]["ssh_user"]
    _assert_installs_with_pins(config["setup_commands"])
    env = env_from_setup(config)
    _assert_names_a_study(env)
    assert env["RAY_AUTH_MODE"] == "token"


def test_kuberay_job() -> None:
    job = load("kuberay.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].split() == ["python", "/home/ray/modaltune/sweeps/ablation.py"]
    _assert_names_a_study(yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pin("ray")
    assert cluster["authOptions"] == {"mode": "token"}
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in cluster["workerGroupSpecs"]]
    gpus = sorted(int(limit["nvidia.com/gpu"]) for limit in limits)
    assert gpus == [1, 8]
    for group in groups:
        pod = group["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "persistentVolumeClaim" in volumes[mounts["/mnt/data"]]  # the cohort and the studies, shared


def test_image_matches_the_pins() -> None:
    """The KubeRay image is Ray's at our pin, with torch installed alone before the project."""
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    assert f"FROM rayproject/ray:{pin('ray')}-py311-gpu" in dockerfile
    assert dockerfile.index(f"torch=={pin('torch')}") < dockerfile.index("-e /home/ray/modaltune")
    assert "/home/ray/modaltune/sweeps" in dockerfile  # where the RayJob's entrypoint runs it


def test_validation_does_not_change_the_shipped_files() -> None:
    """prepare_config fills defaults into a copy; the YAML users edit stays as written."""
    config = load("gpu.yaml")
    before = copy.deepcopy(config)
    validated(config)
    assert config == before
