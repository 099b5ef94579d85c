"""Which Ray a driver uses: the one named, the cluster started on this node, else an embedded one."""

from __future__ import annotations

from pathlib import Path

import pytest

from modaltune.train.ray_session import cluster_address


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Ray's temp dir for this test only ($RAY_TMPDIR/ray), with no RAY_ADDRESS around."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


def test_no_cluster_means_embedded(ray_tmp: Path) -> None:
    assert cluster_address() is None


def test_the_cluster_ray_start_left_on_this_node_is_joined(ray_tmp: Path) -> None:
    """What `ray start` writes and a script under `ray submit` must find."""
    (ray_tmp / "ray_current_cluster").write_text("10.0.0.10:6379")
    assert cluster_address() == "10.0.0.10:6379"
    assert cluster_address("local") is None  # explicitly embedded, whatever runs here


def test_explicit_address_wins(ray_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ray_tmp / "ray_current_cluster").write_text("10.0.0.10:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.20:6379")
    assert cluster_address() == "10.0.0.20:6379"
    assert cluster_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address() is None
