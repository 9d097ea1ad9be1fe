"""The GPU paths, where a GPU is lent: the model on CUDA agrees with the CPU, and classify on
dask-cuda's ``LocalCUDACluster`` writes the catalogue the CPU run writes.

Skipped (with the reason) on machines without CUDA, as CI's are; run on a GPU machine with
``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dask
import numpy as np
import pytest
import torch

from benchmarks._common import make_store
from cluster import connect
from pipeline import bundled, catalogue
from pipeline.classify.graph import classify
from pipeline.imaging.preprocess import prepare
from workers.checkpoint import load_checkpoint, load_ood_stats
from workers.inference import Predictor

pytestmark = [
    pytest.mark.filterwarnings("ignore"),
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs CUDA: a GPU machine with a CUDA build of torch"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """4,096 stars and galaxies, 512 a chunk, written as ``skysieve ingest`` writes them."""
    return make_store(tmp_path_factory.mktemp("gpu") / "s.zarr", 4096, 64, 512, seed=3)


def test_predictor_on_cuda_agrees_with_the_cpu(store: Path) -> None:
    import zarr

    images = np.asarray(zarr.open_group(str(store), mode="r")["image"][:1024])
    answers = {}
    for device in ("cpu", "cuda"):
        path = bundled.resolve("default")
        net, card = load_checkpoint(path)
        predictor = Predictor(net, card, device=device, batch_size=256,
                              ood=load_ood_stats(path, card))
        assert predictor.device.type == device
        x = prepare(images, stretch=card.stretch, image_size=card.image_size)
        answers[device] = predictor.predict(x)
    cpu, gpu = answers["cpu"], answers["cuda"]
    assert gpu.proba.shape == cpu.proba.shape
    # bf16 autocast on the GPU: probabilities to ~1e-2, labels nearly all the same
    assert np.abs(gpu.proba - cpu.proba).max() < 0.1
    assert (gpu.proba.argmax(1) == cpu.proba.argmax(1)).mean() >= 0.97
    both = np.isfinite(cpu.ood_score) & np.isfinite(gpu.ood_score)
    assert both.mean() > 0.99
    assert np.corrcoef(cpu.ood_score[both], gpu.ood_score[both])[0, 1] > 0.9


def _classify_on(kind: str, store: Path, out: Path, monkeypatch) -> tuple[list[bool], object]:
    """Classify ``store`` on a one-worker cluster of ``kind``; whether its worker saw CUDA."""
    with monkeypatch.context() as env:
        if kind == "local":  # else a LocalCluster's worker picks the GPU too
            env.setenv("CUDA_VISIBLE_DEVICES", "")
        with connect(kind, n_workers=1, threads_per_worker=2) as client:
            on_gpu = list(client.run(torch.cuda.is_available).values())
            return on_gpu, classify(store, out, model="default", progress=False)


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is None,
                    reason="needs dask-cuda (pip install 'skysieve[gpu]')")
def test_classify_on_local_cuda_cluster_matches_the_cpu_run(store: Path, tmp_path: Path,
                                                            monkeypatch) -> None:
    grouping = {"skysieve.classify.part-rows": 1024, "skysieve.classify.min-parts": 1}
    cats = {}
    with dask.config.set(grouping):
        for kind in ("local", "cuda"):
            on_gpu, summary = _classify_on(kind, store, tmp_path / kind, monkeypatch)
            assert on_gpu == [kind == "cuda"]
            assert summary.rows == 4096 and not summary.failed
            cats[kind] = (catalogue.read_catalogue(tmp_path / kind).sort_values("source_id")
                          .reset_index(drop=True))
    cpu, gpu = cats["local"], cats["cuda"]
    assert gpu["source_id"].is_unique and (gpu["source_id"] == cpu["source_id"]).all()
    assert (gpu["label"] == cpu["label"]).mean() >= 0.97
    assert np.allclose(gpu["blur_score"], cpu["blur_score"], equal_nan=True)
    assert (gpu["healpix"] == cpu["healpix"]).all()
