"""pipeline.hpc.submit: the driver command, the script written whole, and its errors (no batch system)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from cluster import ClusterError, jobqueue
from pipeline.hpc import submit as hpc_submit


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"cores": 2, "memory": "4GB",
                                    "log-directory": str(tmp_path / "logs")}))
    return path


def test_nothing_to_submit_is_a_cluster_error(profile: Path) -> None:
    with pytest.raises(ClusterError, match="nothing to submit: give the skysieve command after --"):
        hpc_submit.submit([], profile=profile)


def test_driver_command_adds_the_cluster_once(profile: Path) -> None:
    argv = hpc_submit.driver_command(["run", "a.fits"], kind="pbs", profile=profile)
    assert argv == [sys.executable, "-m", "pipeline.cli", "run", "a.fits", "--cluster", "pbs",
                    "--profile", str(profile.absolute())]
    given = hpc_submit.driver_command(["run", "--cluster=local"], kind="pbs", profile=profile)
    assert given[-1] == "--cluster=local"
    assert hpc_submit.driver_command(["info", "s.zarr"], kind="slurm", profile=profile,
                                     add_cluster_options=False)[3:] == ["info", "s.zarr"]


def test_submit_writes_the_script_whole(profile: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def fake_submit(kind: str, script: Path, *, cwd: Path | None = None) -> str:
        seen.append(script.read_text())
        return "4242"

    monkeypatch.setattr(jobqueue, "submit_script", fake_submit)
    result = hpc_submit.submit(["info", "s.zarr"], profile=profile, add_cluster_options=False)
    assert result.job_id == "4242"
    assert result.script.read_text() == result.text == seen[0]
    assert result.log == tmp_path / "logs" / "skysieve-night-4242.out"
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [result.script.name]  # no temporaries
    assert "submitted job 4242" in result.describe()
