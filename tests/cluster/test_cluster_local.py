"""cluster.connect: local (real LocalCluster), existing schedulers, and the GPU choice without a GPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

import cluster
from cluster import ClusterError, choose_kind, connect
from cluster import cuda, jobqueue
from cluster.local import default_shape

ROOT = Path(__file__).resolve().parents[2]
HAS_DASK_CUDA = importlib.util.find_spec("dask_cuda") is not None


def test_local_binds_localhost_and_unsets_malloc_trim() -> None:
    with connect("local", n_workers=1, threads_per_worker=2) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert "127.0.0.1" in client.dashboard_link
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1 and next(iter(workers.values()))["nthreads"] == 2
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in workers)
        env = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert list(env.values()) == [None]
        assert client.submit(sum, [1, 2, 3]).result() == 6


def test_default_shape() -> None:
    assert default_shape(2) == (1, 2)
    assert default_shape(16) == (8, 2)
    assert default_shape(1) == (1, 1)


def test_existing_scheduler_by_address_and_file(tmp_path: Path) -> None:
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, host="127.0.0.1",
                      protocol="tcp://", dashboard_address="127.0.0.1:0") as lc, Client(lc) as owner:
        with connect(lc.scheduler_address) as client:
            assert client.submit(lambda: 41 + 1).result() == 42
        path = tmp_path / "scheduler.json"
        owner.write_scheduler_file(str(path))
        with connect(str(path)) as client:
            assert client.scheduler.address == lc.scheduler_address
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with connect(str(tmp_path / "missing.json")):
            pass


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ClusterError, match="unknown cluster 'slrum'.*slurm.*tcp://host:port"):
        with connect("slrum"):
            pass
    with pytest.raises(ClusterError, match="--threads does not apply"):
        with connect("slurm", threads_per_worker=2):
            pass


def test_parse_visible_devices() -> None:
    assert cuda.parse_visible_devices("0,1") == ["0", "1"]
    assert cuda.parse_visible_devices("") == []
    assert cuda.parse_visible_devices("-1") == []
    assert cuda.parse_visible_devices("2, 0,-1,1") == ["2", "0"]
    assert cuda.parse_visible_devices("GPU-9baca7f5-0f2f") == ["GPU-9baca7f5-0f2f"]
    assert cuda.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    assert cuda.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_parse_nvidia_smi() -> None:
    text = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1a2b)\n"
            "  MIG 1g.10gb     Device  0: (UUID: MIG-3c4d)\n"
            "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-5e6f)\n")
    assert cuda.parse_nvidia_smi(text) == ["0", "1"]
    assert cuda.parse_nvidia_smi("No devices were found\n") == []


def test_auto_is_local_when_gpus_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert choose_kind("auto") == "local"
    assert choose_kind("slurm") == "slurm"
    with connect("auto", n_workers=1, threads_per_worker=1) as client:
        assert client.submit(lambda: 7).result() == 7


@pytest.mark.skipif(HAS_DASK_CUDA, reason="dask-cuda is installed here")
def test_visible_gpus_without_dask_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert choose_kind("auto") == "local"
    assert any("pip install 'skysieve[gpu]'" in str(w.message) for w in caught)
    with pytest.raises(ClusterError, match=r"pip install 'skysieve\[gpu\]'"):
        with connect("cuda"):
            pass


def test_gpu_check_creates_no_cuda_context() -> None:
    # The client must not import torch (or touch CUDA) before a LocalCUDACluster starts.
    code = ("import sys, cluster\n"
            "from cluster import choose_kind\n"
            "from cluster.cuda import visible_gpus\n"
            "visible_gpus(); choose_kind('auto')\n"
            "bad = [m for m in ('torch', 'cupy', 'numba.cuda', 'dask_cuda') if m in sys.modules]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _documented_kinds() -> set[str]:
    """Backticked names in the first column of every ``| `--cluster` | ... |`` table of the docs."""
    kinds: set[str] = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        in_table = False
        for line in doc.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") \
                else []
            if not cells:
                in_table = False
            elif cells[0] == "`--cluster`":
                in_table = True
            elif in_table and not set(cells[0]) <= set("-: "):
                kinds.update(re.findall(r"`([^`]+)`", cells[0]))
    return kinds


def test_kinds_are_documented() -> None:
    """Every kind of ``cluster.KINDS`` has a row in a `--cluster` table of README.md/docs, and back."""
    documented = _documented_kinds()
    assert documented, "no `--cluster` table found in README.md or docs/*.md"
    assert set(cluster.KINDS) - documented == set(), "kinds missing from the docs"
    assert documented - set(cluster.KINDS) == set(), "the docs name kinds cluster.KINDS lacks"
    assert {"auto", "local", "cuda"} | set(jobqueue.KINDS) <= set(cluster.KINDS)


def test_several_workers_per_gpu_each_see_their_gpu_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two "GPUs" named by CUDA_VISIBLE_DEVICES (no GPU needed to check the layout): two
    # real worker processes per GPU, each with its own GPU first, and no dask-cuda needed.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert choose_kind("auto", workers_per_gpu=2) == "cuda"
    with connect("cuda", threads_per_worker=1, workers_per_gpu=2) as client:
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        seen = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        names = {w["name"]: w["nthreads"] for w in client.scheduler_info()["workers"].values()}
    assert sorted(seen.values()) == ["0,1", "0,1", "1,0", "1,0"]
    assert names == {"gpu0-0": 1, "gpu0-1": 1, "gpu1-0": 1, "gpu1-1": 1}
    with connect("cuda", n_workers=1, threads_per_worker=2, workers_per_gpu=3) as client:
        assert set(client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"]).values()) == {"0"}  # only the first GPU
        assert len(client.scheduler_info()["workers"]) == 3
    with pytest.raises(ClusterError, match="workers-per-gpu 0"):
        with connect("cuda", workers_per_gpu=0):
            pass
