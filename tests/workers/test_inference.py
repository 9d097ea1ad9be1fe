"""Worker side: batched inference, the per-process model cache and plugin, blur kernels."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from workers.blur import (FWHM_PER_SIGMA, fwhm_to_sigma, gaussian_blur, gaussian_kernel1d,
                          noise_std_factor, sigma_to_fwhm)
from workers.checkpoint import CheckpointError, ModelCard, save_checkpoint
from workers.inference import Predictor, pick_device
from workers.model_cache import ModelPlugin, cache_info, clear_cache, get_predictor
from workers.models import create_model

CLASSES = ["galaxy", "qso", "star"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = create_model("smallcnn", num_classes=3, image_size=32)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    card = ModelCard(arch="smallcnn", classes=CLASSES, image_size=32, bands=["r"],
                     temperature=1.7)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    card = save_checkpoint(model, card, path)
    return str(path), card, model.eval()


@pytest.fixture
def x():
    return torch.randn(37, 1, 32, 32, generator=torch.Generator().manual_seed(5))


def test_predict_proba_is_tempered_softmax_in_batches(checkpoint, x):
    path, card, model = checkpoint
    with torch.inference_mode():
        ref = torch.softmax(model(x) / 1.7, dim=1).numpy()
    for batch_size, channels_last in [(16, True), (64, False)]:
        net = create_model("smallcnn", num_classes=3, image_size=32).requires_grad_(False)
        net.load_state_dict(model.state_dict())  # before the Predictor folds its batch norms
        pred = Predictor(net, card, batch_size=batch_size, channels_last=channels_last)
        p = pred.predict_proba(x)
        assert p.shape == (37, 3) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-6)
    assert not pred.model.training and pred.classes == CLASSES
    assert pred.predict_proba(x.numpy()[:0]).shape == (0, 3)
    np.testing.assert_allclose(pred.predict_proba(x.numpy()), ref, rtol=1e-4, atol=1e-6)


def test_predictor_refuses_unprepared_stamps(checkpoint):
    pred = get_predictor(checkpoint[0], sha256=checkpoint[1].sha256)
    with pytest.raises(ValueError, match=r"expects prepared stamps \(N, 1, 32, 32\).*image_size=32"):
        pred.predict_proba(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Predictor(pred.model, pred.card, batch_size=0)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unsupported device 'meta'"):
        pick_device("meta")


def test_cache_loads_once_per_key(checkpoint, x):
    path, card, model = checkpoint
    clear_cache()
    before = cache_info()["loads"]
    a = get_predictor(path, sha256=card.sha256, batch_size=16)
    b = get_predictor(path, sha256=card.sha256.upper(), batch_size=16)
    c = get_predictor(path, sha256=card.sha256, batch_size=32)
    assert a is b and a is not c
    info = cache_info()
    assert info["loads"] == before + 2 and info["pid"] == os.getpid()
    assert clear_cache(card.sha256) == 2 and cache_info()["keys"] == []
    with pytest.raises(CheckpointError, match="does not match"):
        get_predictor(path, sha256="f" * 64)
    with pytest.raises(ValueError, match="64-hex-digit"):
        get_predictor(path, sha256="abc")


def _probe(path: str, sha256: str, x: np.ndarray) -> dict:
    """A task: predict with the worker's cached model and report the cache state."""
    pred = get_predictor(path, sha256=sha256, batch_size=16)
    info = cache_info()
    return {"pid": info["pid"], "loads": info["loads"], "model_id": id(pred.model),
            "threads": torch.get_num_threads(), "proba": pred.predict_proba(x)}


def test_model_loaded_once_per_worker_process(checkpoint, x):
    distributed = pytest.importorskip("distributed")
    path, card, _ = checkpoint
    expected = get_predictor(path, sha256=card.sha256, batch_size=16).predict_proba(x)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.register_plugin(ModelPlugin(path, card.sha256, batch_size=16))
        preloaded = client.run(cache_info)
        assert len(preloaded) == 2 and all(v["loads"] == 1 for v in preloaded.values())
        xs = client.scatter(x.numpy(), broadcast=True)
        futures = [client.submit(_probe, path, card.sha256, xs, pure=False, workers=[w])
                   for w in client.scheduler_info()["workers"] for _ in range(3)]
        results = client.gather(futures)
        by_pid: dict[int, set] = {}
        for r in results:
            assert r["loads"] == 1  # preloaded by the plugin, never reloaded by a task
            assert r["threads"] == 1  # one torch thread per task thread
            by_pid.setdefault(r["pid"], set()).add(r["model_id"])
            np.testing.assert_allclose(r["proba"], expected, rtol=1e-5, atol=1e-6)
        assert len(by_pid) == 2 and all(len(ids) == 1 for ids in by_pid.values())
        assert os.getpid() not in by_pid
        client.unregister_worker_plugin(ModelPlugin.name)
        assert all(v["keys"] == [] for v in client.run(cache_info).values())


def test_plugin_carries_no_weights(checkpoint):
    import pickle

    path, card, _ = checkpoint
    plugin = ModelPlugin(path, card.sha256)
    assert len(pickle.dumps(plugin)) < 1000 and plugin.name == "skysieve-model"


# ----------------------------------------------------------------------------- blur kernels
def test_kernel1d():
    k = gaussian_kernel1d(1.5)
    assert k.dtype == torch.float32 and k.numel() == 2 * int(4 * 1.5 + 0.5) + 1
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6) and torch.equal(k, k.flip(0))
    assert torch.equal(gaussian_kernel1d(0.0), torch.ones(1))
    var = float((k * torch.arange(-6, 7.0) ** 2).sum())
    assert math.isclose(var, 1.5 ** 2, rel_tol=1e-3)
    with pytest.raises(ValueError, match="finite and >= 0"):
        gaussian_kernel1d(-1.0)


def test_fwhm_sigma():
    assert math.isclose(fwhm_to_sigma(FWHM_PER_SIGMA), 1.0)
    assert math.isclose(FWHM_PER_SIGMA, 2.354820045, rel_tol=1e-9)
    assert np.allclose(sigma_to_fwhm(fwhm_to_sigma(np.array([1.0, 3.0]))), [1.0, 3.0])


def test_blur_matches_scipy_and_keeps_flux():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 3, 40, 36)).astype(np.float32)
    out = gaussian_blur(torch.from_numpy(img), 1.3)
    ref = ndimage.gaussian_filter(img, sigma=(0, 0, 1.3, 1.3), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-5)
    point = torch.zeros(1, 1, 31, 31)
    point[0, 0, 15, 15] = 1.0
    blurred = gaussian_blur(point, 2.0)
    assert math.isclose(float(blurred.sum()), 1.0, rel_tol=1e-5)
    # the blurred point has the Gaussian's second moment
    yy = torch.arange(31.0) - 15
    var_x = float((blurred[0, 0].sum(0) * yy ** 2).sum())
    assert math.isclose(var_x, 4.0, rel_tol=1e-3)


def test_blur_per_sample_sigma_and_identity():
    x = torch.randn(3, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.5]))
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(out[1:2], gaussian_blur(x[1:2], 1.0))
    torch.testing.assert_close(out[2:3], gaussian_blur(x[2:3], 2.5))
    assert torch.equal(gaussian_blur(x, 0.0), x)
    const = torch.full((1, 1, 10, 10), 4.0)
    torch.testing.assert_close(gaussian_blur(const, 30.0), const)  # kernel cut at the size
    with pytest.raises(ValueError, match="2 sigmas for 3 images"):
        gaussian_blur(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        gaussian_blur(x[0], 1.0)


def test_noise_std_factor_matches_blurred_noise():
    noise = torch.randn(4, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0])
    measured = gaussian_blur(noise, sigma).std(dim=(1, 2, 3))
    expected = noise_std_factor(sigma)
    assert expected[0] == 1.0
    torch.testing.assert_close(measured, expected, rtol=0.03, atol=0)


def test_autocast_dtype_per_device():
    from workers.inference import autocast_dtype

    assert autocast_dtype(torch.device("cpu")) is None  # float32 on the CPU, never CUDA asked
    assert autocast_dtype(torch.device("cuda", 0), bf16_supported=True) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda", 1), bf16_supported=False) is torch.float16


def test_physical_device_follows_cuda_visible_devices():
    from workers.inference import physical_device

    assert physical_device(torch.device("cpu"), {"CUDA_VISIBLE_DEVICES": "3"}) == "cpu"
    assert physical_device(torch.device("cuda", 0), {"CUDA_VISIBLE_DEVICES": "2,0,1"}) == "gpu:2"
    assert physical_device(torch.device("cuda", 1), {"CUDA_VISIBLE_DEVICES": "2,0,1"}) == "gpu:0"
    uuid = "GPU-5d3c1a2b-0000-1111-2222-333344445555"
    assert physical_device(torch.device("cuda", 0), {"CUDA_VISIBLE_DEVICES": uuid}) == f"gpu:{uuid}"
    assert physical_device(torch.device("cuda", 0), {}) == "gpu:0"


def _worker_gpu() -> dict:
    from workers.inference import physical_device

    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu": physical_device(torch.device("cuda", 0)),
            "cuda_initialised": torch.cuda.is_initialized()}


def test_each_worker_names_its_own_gpu():
    """Workers started the way dask-cuda starts them (CUDA_VISIBLE_DEVICES rotated per
    worker) each put their model on a different GPU: cuda:0 of worker i is GPU i."""
    distributed = pytest.importorskip("distributed")
    specs = {f"w{i}": {"cls": distributed.Nanny,
                       "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": rotated}}}
             for i, rotated in enumerate(["0,1,2", "1,2,0", "2,0,1"])}
    scheduler = {"cls": distributed.Scheduler,
                 "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    with distributed.SpecCluster(workers=specs, scheduler=scheduler) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(3)
        seen = client.run(_worker_gpu)
    assert sorted(r["gpu"] for r in seen.values()) == ["gpu:0", "gpu:1", "gpu:2"]
    assert not any(r["cuda_initialised"] for r in seen.values())


def _torch_threads() -> int:
    from workers.model_cache import _match_worker_threads

    _match_worker_threads()
    return torch.get_num_threads()


def test_tasks_of_a_multithreaded_worker_run_one_torch_thread_each():
    """A worker with 2 threads runs 2 tasks at once: 2 torch threads each would oversubscribe."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=":0", env={"OMP_NUM_THREADS": "2"}) as cluster, \
            distributed.Client(cluster) as client:
        threads = client.gather([client.submit(_torch_threads, pure=False) for _ in range(4)])
        assert threads == [1, 1, 1, 1]


def test_cached_predictor_scores_with_the_checkpoints_statistics(checkpoint, x, tmp_path):
    """get_predictor loads the statistics the card names; the same weights with and without
    statistics are two cache entries (never one answering for the other)."""
    import shutil

    from workers.checkpoint import write_ood_stats
    from workers.ood import OODStats

    path, card, _ = checkpoint
    rng = np.random.default_rng(0)
    with_stats = tmp_path / "with.pt"
    shutil.copyfile(path, with_stats)
    shutil.copyfile(path.replace(".pt", ".json"), with_stats.with_suffix(".json"))
    stats = OODStats(center=rng.normal(size=96), transform=rng.normal(size=(96, 4)),
                     means=rng.normal(size=(3, 4)), val_mahalanobis=rng.gamma(3.0, size=20) * 30,
                     val_energy=rng.normal(size=20))
    write_ood_stats(with_stats, stats)
    clear_cache()
    plain = get_predictor(path, sha256=card.sha256, batch_size=16)
    scored = get_predictor(with_stats, sha256=card.sha256, batch_size=16)
    assert plain is not scored and plain.ood is None and scored.ood is not None
    a, b = plain.predict(x), scored.predict(x)
    np.testing.assert_allclose(a.proba, b.proba, rtol=1e-6)
    np.testing.assert_allclose(a.energy, b.energy, rtol=1e-6)
    assert np.isnan(a.ood_score).all() and np.isfinite(b.ood_score).all()
    assert ((b.ood_score >= 0) & (b.ood_score <= 1)).all()
    np.testing.assert_allclose(b.proba, plain.predict_proba(x), rtol=1e-6)
    assert len(cache_info()["keys"]) == 2
    clear_cache()
