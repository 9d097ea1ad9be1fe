"""OOD scores (workers.ood): energy and Mahalanobis against hand computation, the feature hook
on every zoo model (also after batch-norm folding), and the statistics in the checkpoint."""

from __future__ import annotations

import io
import json
import math
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from workers.checkpoint import (CheckpointError, ModelCard, file_sha256, load_checkpoint,
                                load_ood_stats, save_checkpoint, write_ood_stats)
from workers.inference import Predictor
from workers.model_cache import clear_cache, get_predictor
from workers.models import create_model, list_models
from pipeline.training.ood import fit_ood_stats, ledoit_wolf_shrinkage
from workers.ood import (OODStats, energy_score, last_linear, ood_bytes, ood_from_bytes,
                         penultimate_features)


class Tiny(nn.Module):
    """x (N, 1, 2, 2) -> 4 features -> 3 features (ReLU) -> head: 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 2
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x.flatten(1))))


def _stats(dim: int, k: int, seed: int = 0, d: int = 5) -> OODStats:
    rng = np.random.default_rng(seed)
    return OODStats(center=rng.normal(size=dim), transform=rng.normal(size=(dim, d)) / math.sqrt(dim),
                    means=rng.normal(size=(k, d)), val_mahalanobis=rng.gamma(2.0, size=50),
                    val_energy=rng.normal(size=50))


def test_energy_by_hand():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    expected = [-2.0 * math.log(math.exp(0.5) + math.exp(1.0) + math.exp(1.5)),
                -2.0 * math.log(3.0)]
    np.testing.assert_allclose(energy_score(logits, 2.0), expected, rtol=1e-6)
    assert energy_score(torch.tensor(logits)).dtype == np.float32
    np.testing.assert_allclose(energy_score(logits)[1], -math.log(3.0), rtol=1e-6)


@pytest.mark.parametrize("max_dim", [3, 2])  # 2 < D = 3: the PCA-projected form
def test_mahalanobis_by_hand(max_dim):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 40)
    f = rng.normal(size=(80, 3)) * [1.0, 2.0, 0.5] + np.where(y[:, None] == 0, 0.0, 3.0)
    val = rng.normal(size=(7, 3)) * 2
    stats = fit_ood_stats(f, y, val, rng.normal(size=(7, 2)), num_classes=2,
                          max_dim=max_dim, shrinkage=0.1)
    assert stats.info["pca"] == (max_dim < 3) and stats.info["reduced_dim"] == max_dim
    g = f - f.mean(0)
    if max_dim < 3:  # top principal directions of the centred training features
        w, v = np.linalg.eigh(g.T @ g / len(g))
        g = g @ v[:, ::-1][:, :max_dim]
        val_g = (val - f.mean(0)) @ v[:, ::-1][:, :max_dim]
    else:
        val_g = val - f.mean(0)
    mu = np.stack([g[y == c].mean(0) for c in (0, 1)])
    r = g - mu[y]
    cov = r.T @ r / len(r)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / max_dim * np.eye(max_dim)
    prec = np.linalg.inv(cov)
    expected = np.min([np.einsum("ni,ij,nj->n", val_g - m, prec, val_g - m) for m in mu], axis=0)
    got = stats.mahalanobis(torch.tensor(val, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.val_mahalanobis, np.sort(expected), rtol=1e-4, atol=1e-4)


def test_quantile_is_the_fraction_of_validation_stamps_below():
    stats = _stats(4, 2)
    stats.val_mahalanobis = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    q = stats.quantile(np.array([0.5, 1.0, 2.5, 4.0, 9.0, np.nan]))
    # linear between the order statistics (1 -> 0, 2 -> 1/3, 3 -> 2/3, 4 -> 1), so continuous
    np.testing.assert_allclose(q[:5], np.array([0.0, 0.0, 0.5, 1.0, 1.0], np.float32), atol=1e-6)
    assert np.isnan(q[5]) and q.dtype == np.float32


def test_ledoit_wolf_matches_the_published_formula():
    """sklearn.covariance.ledoit_wolf_shrinkage (assume_centered), written out."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    x -= x.mean(0)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum() / p
    beta = ((x ** 2).T @ (x ** 2)).sum() / n - (s ** 2).sum()
    beta = min(beta / (n * p), delta)
    assert ledoit_wolf_shrinkage(x, s) == pytest.approx(beta / delta, rel=1e-9)
    many = rng.normal(size=(5000, 8)) * np.arange(1.0, 9.0)  # anisotropic, plenty of data
    assert ledoit_wolf_shrinkage(many, many.T @ many / 5000) < 0.01
    iso = rng.normal(size=(5000, 8))  # the truth is a scaled identity: shrink all the way
    assert ledoit_wolf_shrinkage(iso, iso.T @ iso / 5000) > 0.9


def _smallest_size(name: str) -> int | None:
    for size in (32, 48, 64, 128, 256):
        try:
            with torch.device("meta"):
                create_model(name, num_classes=3, image_size=size).eval()(
                    torch.empty(2, 1, size, size))
            return size
        except (ValueError, RuntimeError):
            continue
    return None


@pytest.mark.parametrize("name", list_models())
def test_hook_takes_the_input_of_the_last_linear(name):
    """For every zoo model: logits = head(features), in the raw and the batch-norm-folded model."""
    size = _smallest_size(name)
    if size is None:
        pytest.skip(f"{name} needs inputs above 256 px (a whole-exposure model)")
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, image_size=size).eval()
    layer, head = last_linear(model)
    x = torch.randn(3, 1, size, size)
    feats, logits = penultimate_features(model, [x])
    assert feats.shape == (3, head.in_features)
    with torch.no_grad():
        by_hand = nn.functional.linear(torch.from_numpy(feats), head.weight, head.bias)
    np.testing.assert_allclose(by_hand.numpy(), logits, rtol=1e-4, atol=1e-4)
    assert not head._forward_pre_hooks  # the temporary hook is gone
    # a Predictor folds the batch norms, then hooks the same layer: same distances
    stats = _stats(head.in_features, 3)
    card = ModelCard(arch=name, classes=["a", "b", "c"], image_size=size)
    pred = Predictor(model, card, ood=stats)
    out = pred.predict(x)
    expected = stats.mahalanobis(torch.from_numpy(feats)).numpy()
    np.testing.assert_allclose(out.distance, expected, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out.energy, energy_score(logits), rtol=1e-4, atol=1e-4)


def test_last_linear_refuses_models_without_a_head():
    with pytest.raises(ValueError, match="no nn.Linear head"):
        last_linear(nn.Sequential(nn.Conv2d(1, 2, 3)))
    model = Tiny()
    model.num_classes = 5
    with pytest.raises(ValueError, match="gives 2 outputs, not the model's 5 classes"):
        last_linear(model)


def test_predictor_scores_in_one_pass_per_thread():
    """Two threads share one Predictor: each gets the distances of its own stamps."""
    torch.manual_seed(0)
    model = Tiny().eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    card = ModelCard(arch="tiny", classes=["a", "b"], image_size=2)
    stats = _stats(3, 2)
    pred = Predictor(model, card, ood=stats, batch_size=8, fuse=False)
    xs = [torch.randn(40, 1, 2, 2, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    with torch.no_grad():
        feats = [torch.relu(model.body(x.flatten(1))) for x in xs]
    calls.clear()
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(pred.predict, xs * 3))
    assert len(calls) == 12 * 5  # one forward per batch of 8: no second pass for the scores
    for x, f, out in zip(xs * 3, feats * 3, outs):
        np.testing.assert_allclose(out.distance, stats.mahalanobis(f).numpy(), rtol=1e-5)
        np.testing.assert_allclose(out.ood_score, stats.quantile(out.distance))
        np.testing.assert_allclose(out.proba.sum(1), 1.0, rtol=1e-5)


def test_predictor_without_statistics_gives_nan():
    model = Tiny().eval()
    pred = Predictor(model, ModelCard(arch="tiny", classes=["a", "b"], image_size=2), fuse=False)
    out = pred.predict(torch.randn(5, 1, 2, 2))
    assert np.isnan(out.distance).all() and np.isnan(out.ood_score).all()
    assert np.isfinite(out.energy).all() and out.proba.shape == (5, 2)
    assert pred.predict(torch.zeros(0, 1, 2, 2)).proba.shape == (0, 2)
    with pytest.raises(ValueError, match="OOD statistics of 7 features.*takes 3"):
        Predictor(Tiny(), pred.card, ood=_stats(7, 2), fuse=False)


# ----------------------------------------------------------------------------- in the checkpoint
@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=3, image_size=32).eval()
    card = ModelCard(arch="smallcnn", classes=["galaxy", "qso", "star"], image_size=32)
    stats = _stats(96, 3)
    card = save_checkpoint(model, card, tmp_path / "m.pt", ood=stats)
    return model, card, stats, tmp_path / "m.pt"


def test_statistics_round_trip_with_their_sha256(saved, tmp_path):
    model, card, stats, pt = saved
    sidecar = pt.with_name("m.ood.npz")
    assert card.ood["file"] == "m.ood.npz" and card.ood["sha256"] == file_sha256(sidecar)
    assert card.ood["threshold"] == 0.99 and "input of 'head'" in card.ood["features"]
    assert json.loads(pt.with_suffix(".json").read_text())["ood"] == card.ood
    loaded = load_ood_stats(pt)
    for name, arr in stats.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), arr)
    # reproducible bytes; the weights file is the one without statistics
    again = save_checkpoint(model, dataclass_replace(card), tmp_path / "b" / "m.pt", ood=stats)
    assert again.ood["sha256"] == card.ood["sha256"]
    bare = save_checkpoint(model, dataclass_replace(card), tmp_path / "c" / "m.pt")
    assert bare.sha256 == card.sha256 and bare.ood == {}
    assert "ood" not in json.loads((tmp_path / "c" / "m.json").read_text())
    assert load_ood_stats(tmp_path / "c" / "m.pt") is None


def dataclass_replace(card: ModelCard) -> ModelCard:
    import dataclasses

    return dataclasses.replace(card)


def test_tampered_statistics_are_refused(saved):
    _, card, _, pt = saved
    sidecar = pt.with_name("m.ood.npz")
    data = bytearray(sidecar.read_bytes())
    data[-100] ^= 0xFF
    sidecar.write_bytes(bytes(data))
    for load in (lambda: load_checkpoint(pt), lambda: load_ood_stats(pt),
                 lambda: get_predictor(pt, sha256=card.sha256)):
        with pytest.raises(CheckpointError, match=r"m\.ood\.npz: sha256 \w+ does not match .* "
                                                  r"recorded in m\.json"):
            load()
    sidecar.unlink()
    with pytest.raises(CheckpointError, match=r"m\.ood\.npz: OOD statistics not found"):
        load_checkpoint(pt)
    clear_cache()


def test_pickled_statistics_are_refused_even_with_a_matching_sha256(saved):
    _, card, _, pt = saved
    buf = io.BytesIO()
    arrays = {k: v for k, v in _stats(96, 3).arrays().items()}
    arrays["center"] = np.array([object()] * 96, dtype=object)
    np.savez(buf, **arrays)
    sidecar = pt.with_name("m.ood.npz")
    sidecar.write_bytes(buf.getvalue())
    data = json.loads(pt.with_suffix(".json").read_text())
    data["ood"]["sha256"] = file_sha256(sidecar)  # someone re-signed it
    pt.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"m\.ood\.npz: invalid OOD statistics"):
        load_checkpoint(pt)
    with pytest.raises(ValueError, match="lacks the array"):
        ood_from_bytes(_zip({"center.npy": b""}))


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_statistics_that_do_not_fit_the_model_are_refused(saved, tmp_path):
    model, card, _, pt = saved
    with pytest.raises(CheckpointError, match="OOD statistics of 50 features.*'head' takes 96"):
        save_checkpoint(model, card, tmp_path / "x.pt", ood=_stats(50, 3))
    with pytest.raises(CheckpointError, match="OOD statistics of 2 classes for a model of 3"):
        write_ood_stats(pt, _stats(96, 2))


def test_write_ood_stats_leaves_the_weights_alone(saved):
    _, card, _, pt = saved
    weights = pt.read_bytes()
    new = write_ood_stats(pt, _stats(96, 3, seed=5), entry={"threshold": 0.95, "note": "refit"})
    assert pt.read_bytes() == weights and new.sha256 == card.sha256
    assert new.ood["threshold"] == 0.95 and new.ood["note"] == "refit"
    assert new.ood["sha256"] != card.ood["sha256"]
    assert new.ood_threshold == 0.95
    np.testing.assert_array_equal(load_ood_stats(pt).center, _stats(96, 3, seed=5).center)
    assert ood_bytes(load_ood_stats(pt)) == pt.with_name("m.ood.npz").read_bytes()


def test_card_ood_entry_is_checked():
    base = {"arch": "smallcnn", "classes": ["a", "b"]}
    with pytest.raises(ValueError, match="ood.file"):
        ModelCard.from_dict({**base, "ood": {"file": "../x.ood.npz", "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="ood.sha256"):
        ModelCard.from_dict({**base, "ood": {"file": "m.ood.npz", "sha256": "abc"}})
    with pytest.raises(ValueError, match="ood.threshold"):
        ModelCard.from_dict({**base, "ood": {"file": "m.ood.npz", "sha256": "0" * 64,
                                             "threshold": 1.5}})
    assert ModelCard.from_dict(base).ood_threshold is None
