"""A real single-node Slurm (tests/e2e/slurm/start.sh): worker jobs, classify end to end, submit.

The daemons run as root in a temp dir and are killed by pid when the module ends.
Without root or slurm-wlm the tests skip (printing why); with ``CI=true`` they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "tests" / "e2e" / "slurm"
PROFILE = SLURM / "profile.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unavailable(reason: str) -> None:
    print(f"\nSlurm tests not run: {reason}", file=sys.stderr)
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the test Slurm cannot start: {reason}")
    pytest.skip(f"test Slurm cannot start: {reason}")


def _squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.strip()]


def _wait_queue_empty(timeout: float = 60) -> list[str]:
    end = time.monotonic() + timeout
    jobs = _squeue()
    while jobs and time.monotonic() < end:
        time.sleep(0.5)
        jobs = _squeue()
    return jobs


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """Start munged + slurmctld + slurmd (installing slurm-wlm if needed); yield the temp dir."""
    if sys.platform != "linux" or shutil.which("bash") is None:
        _unavailable("needs Linux and bash")
    if os.geteuid() != 0:
        _unavailable("the test Slurm runs its daemons as root (SlurmUser=root); run as root")
    directory = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SKYSIEVE_SLURMCTLD_PORT": str(_free_port()),
           "SKYSIEVE_SLURMD_PORT": str(_free_port())}
    try:
        proc = subprocess.run(["bash", str(SLURM / "start.sh"), str(directory)], env=env,
                              capture_output=True, text=True, timeout=540)
    except subprocess.TimeoutExpired:
        subprocess.run(["bash", str(SLURM / "stop.sh"), str(directory)], timeout=120)
        _unavailable("tests/e2e/slurm/start.sh did not finish in 9 minutes")
    if proc.returncode != 0:
        subprocess.run(["bash", str(SLURM / "stop.sh"), str(directory)], timeout=120)
        _unavailable((proc.stderr or proc.stdout).strip().splitlines()[-1]
                     if (proc.stderr or proc.stdout).strip() else f"start.sh exit {proc.returncode}")
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(directory / "slurm.conf"))
    mp.setenv("PATH", os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    try:
        yield directory
    finally:
        mp.undo()
        subprocess.run(["bash", str(SLURM / "stop.sh"), str(directory)], timeout=120,
                       env={**os.environ, "SLURM_CONF": str(directory / "slurm.conf")})


@pytest.fixture
def profile(slurm: Path, tmp_path: Path) -> Path:
    """tests/e2e/slurm/profile.yaml with its logs in a directory whose name has a space and a `$`."""
    data = yaml.safe_load(PROFILE.read_text())
    data["log-directory"] = str(tmp_path / "job logs $(x)")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_workers_run_as_slurm_jobs(slurm: Path, profile: Path) -> None:
    from cluster import connect

    with connect("slurm", profile=profile) as client:
        assert client.submit(lambda x: x + 1, 1).result(timeout=120) == 2
        # the worker runs in a Slurm job, with the tests' interpreter, MALLOC_TRIM_THRESHOLD_ unset
        info = client.run(lambda: (os.environ.get("SLURM_JOB_ID"), sys.executable,
                                   os.environ.get("MALLOC_TRIM_THRESHOLD_")))
        assert len(info) == 1
        ((job_id, python, trim),) = info.values()
        assert job_id is not None and trim is None and python == sys.executable
        jobs = _squeue()
        assert any(line.split()[0] == job_id and "skysieve-worker" in line for line in jobs), jobs
    assert _wait_queue_empty() == []
    logs = yaml.safe_load(profile.read_text())["log-directory"]
    assert (Path(logs) / f"skysieve-worker-{job_id}.err").is_file()


def test_submit_runs_skysieve_in_a_job(slurm: Path, profile: Path) -> None:
    from click.testing import CliRunner

    from pipeline import __version__
    from pipeline.cli.cluster import submit

    result = CliRunner().invoke(submit, ["--profile", str(profile), "--", "--version"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.output.splitlines()[1:])
    job_id = result.output.split()[2]
    assert result.output.startswith(f"submitted job {job_id}") and job_id.isdigit()
    assert _wait_queue_empty() == []
    log = Path(lines["log"])
    assert log.name == f"skysieve-night-{job_id}.out"
    end = time.monotonic() + 30
    while not log.is_file() and time.monotonic() < end:
        time.sleep(0.2)
    assert __version__ in log.read_text()
    assert Path(lines["script"]).is_file()


@pytest.mark.slow
def test_classify_on_slurm_matches_local(slurm: Path, profile: Path, tmp_path: Path) -> None:
    import pandas as pd

    from pipeline.ingest.exposures import ingest
    from pipeline.simulation.survey import synthesize

    synthesize(tmp_path / "survey", exposures=1, size=512, seed=0)
    exposures = sorted((tmp_path / "survey").glob("*.fits"))
    store = tmp_path / "cutouts.zarr"
    ingest(exposures, store, truth=tmp_path / "survey" / "truth.parquet")

    catalogues = {}
    for kind, extra in (("local", ["--workers", "1", "--threads", "1"]),
                        ("slurm", ["--profile", str(profile)])):
        out = tmp_path / f"catalogue-{kind}"
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "classify", str(store),
                               "--out", str(out), "--cluster", kind, *extra],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        catalogues[kind] = (pd.read_parquet(out).sort_values("source_id")
                            .reset_index(drop=True))
    assert _wait_queue_empty() == []
    local, slurm_cat = catalogues["local"], catalogues["slurm"]
    assert len(local) > 0
    assert list(local.columns) == list(slurm_cat.columns)
    pd.testing.assert_frame_equal(local, slurm_cat, check_exact=False, rtol=1e-5)
