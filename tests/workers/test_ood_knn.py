"""The kNN bank and the combined ``ood_score`` (workers.ood): by hand, in the sidecar, in the Predictor.

``ood_score`` with a bank ranks ``max(q_knn, q_conf)`` among the validation stamps (1 beyond
every validation Mahalanobis distance); statistics written before the bank keep ranking the
Mahalanobis distance.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.training.ood import fit_ood_stats
from workers.checkpoint import ModelCard
from workers.inference import Predictor
from workers.ood import (COMBINED, OODStats, knn_distance, l2_normalise, ood_bytes,
                         ood_from_bytes, unconfidence)


def _features(n: int, d: int = 6, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(size=(k, d)) * 4
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _fitted(n_train: int = 300, n_val: int = 80, **kw) -> tuple[OODStats, np.ndarray, np.ndarray]:
    f, y = _features(n_train + n_val)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(n_val, 3)).astype(np.float32) * 2
    stats = fit_ood_stats(f[:n_train], y[:n_train], f[n_train:], logits, num_classes=3,
                          temperature=1.5, **kw)
    return stats, f[n_train:], logits


def test_knn_distance_by_hand():
    rng = np.random.default_rng(0)
    bank = l2_normalise(rng.normal(size=(50, 5)))
    x = rng.normal(size=(7, 5)).astype(np.float32) * 3
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.linalg.norm(unit[:, None, :] - bank[None, :, :], axis=2)
    for k in (1, 4, 50):
        got = knn_distance(torch.tensor(x), torch.tensor(bank), k).numpy()
        np.testing.assert_allclose(got, np.sort(dist, axis=1)[:, k - 1], rtol=1e-5, atol=1e-5)


def test_combined_score_by_hand():
    stats, val, logits = _fitted()
    assert stats.score == COMBINED and stats.info["score"] == COMBINED
    assert stats.knn_k == 10 and stats.temperature == 1.5
    bank = l2_normalise(stats.bank.astype(np.float32))  # float16 rows, renormalised
    unit = val / np.linalg.norm(val, axis=1, keepdims=True)
    kth = np.sort(np.linalg.norm(unit[:, None] - bank[None], axis=2), axis=1)[:, 9]
    z = logits / 1.5
    p = np.exp(z - z.max(1, keepdims=True))
    unconf = 1 - (p / p.sum(1, keepdims=True)).max(1)
    np.testing.assert_allclose(stats.val_knn, np.sort(kth), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats.val_unconfidence, np.sort(unconf), atol=1e-6)
    np.testing.assert_allclose(unconfidence(logits, 1.5).numpy(), unconf, atol=1e-6)
    q = np.maximum((kth[:, None] > stats.val_knn[None]).sum(1),
                   (unconf[:, None] > stats.val_unconfidence[None]).sum(1)) / val.shape[0]
    got = stats.distance(torch.tensor(val), torch.tensor(logits)).numpy()
    np.testing.assert_allclose(got, q, atol=1.5 / val.shape[0])  # float ties at the edges
    np.testing.assert_allclose(stats.val_combined, np.sort(got), atol=1e-6)
    # in distribution the ood_score is (about) uniform: ~1% of validation stamps above 0.99
    # (the largest kNN and the largest 1 - confidence may be two stamps: both at 1)
    assert (stats.quantile(got) > 0.99).sum() <= 2


def test_far_or_blown_up_features_score_one():
    f, y = _features(380)
    f[:, 0] += 30.0  # every training feature points along +x
    logits = np.random.default_rng(2).normal(size=(80, 3)).astype(np.float32)
    stats = fit_ood_stats(f[:300], y[:300], f[300:], logits, num_classes=3)
    val, far = f[300:], f[300:].copy()
    far[:, 0] = -60.0  # the same stamps turned to -x: away from every training feature
    d = stats.distance(torch.tensor(far), torch.tensor(logits))
    assert (stats.quantile(d.numpy()) == 1.0).all()
    q_val = stats.quantile(stats.distance(torch.tensor(val), torch.tensor(logits)).numpy())
    assert (q_val < 1.0).sum() >= q_val.size - 2  # only the largest kNN / 1 - confidence reach 1
    # 100 x the features: the same direction (the normalised kNN distance cannot tell), but a
    # Mahalanobis distance beyond every validation stamp's: flagged all the same
    loud = torch.tensor(val * 100.0)
    np.testing.assert_allclose(stats.knn(loud).numpy(), stats.knn(torch.tensor(val)).numpy(),
                               atol=1e-5)
    assert (stats.mahalanobis(loud).numpy() > stats.val_mahalanobis[-1]).all()
    assert (stats.quantile(stats.distance(loud, torch.tensor(logits)).numpy()) == 1.0).all()
    assert stats.mahalanobis(torch.tensor(val)).shape == (val.shape[0],)
    with pytest.raises(ValueError, match=r"needs the logits.*distance\(features, logits\)"):
        stats.distance(torch.tensor(val))


def test_bank_is_an_even_float16_subsample_of_unit_rows(monkeypatch):
    f, y = _features(400)
    val, logits = f[:20], np.zeros((20, 3), np.float32)
    stats = fit_ood_stats(f, y, val, logits, num_classes=3, bank_size=100)
    pick = np.linspace(0, 399, 100).round().astype(int)
    assert stats.bank.dtype == np.float16 and stats.bank.shape == (100, 6)
    np.testing.assert_allclose(stats.bank, l2_normalise(f[pick]), atol=2e-3)
    assert stats.info["bank_size"] == 100 and stats.info["knn_k"] == 10
    few = fit_ood_stats(f[:6], y[:6], val, logits, num_classes=3)
    assert few.knn_k == 6 == few.bank.shape[0]  # k never exceeds the bank
    import pipeline.training.ood as fitting

    assert fitting._MAX_BANK_BYTES == 16 << 20
    monkeypatch.setattr(fitting, "_MAX_BANK_BYTES", 2 * 6 * 50)  # as a wide head meets 16 MiB
    assert fit_ood_stats(f, y, val, logits, num_classes=3).bank.shape == (50, 6)
    bare = fit_ood_stats(f, y, val, logits, num_classes=3, knn_k=0)
    assert bare.bank is None and bare.score == "mahalanobis" and bare.info["score"] == "mahalanobis"


def test_sidecar_round_trip_and_sidecars_written_before_the_bank():
    stats, val, logits = _fitted()
    data = ood_bytes(stats)
    back = ood_from_bytes(data)
    assert data == ood_bytes(back)  # reproducible bytes
    for name, arr in stats.arrays().items():
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(arr))
    t, lg = torch.tensor(val), torch.tensor(logits)
    np.testing.assert_array_equal(back.distance(t, lg).numpy(), stats.distance(t, lg).numpy())
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    old = {n: b for n, b in members.items()  # the five arrays of a sidecar before the bank
           if n[:-4] in ("center", "transform", "means", "val_mahalanobis", "val_energy")}
    legacy = ood_from_bytes(_zip(old))
    assert legacy.bank is None and legacy.score == "mahalanobis"
    np.testing.assert_allclose(legacy.distance(t).numpy(), stats.mahalanobis(t).numpy())
    np.testing.assert_array_equal(legacy.quantile(np.array([np.inf])), [1.0])
    partial = {n: b for n, b in members.items() if n != "val_combined.npy"}
    with pytest.raises(ValueError, match="lacks the array.*val_combined"):
        ood_from_bytes(_zip(partial))
    arrays = {**stats.arrays(), "bank": stats.bank.astype(np.float32)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(ValueError, match="'bank' is float32, expected float16"):
        ood_from_bytes(buf.getvalue())


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_inconsistent_statistics_are_refused():
    stats, _, _ = _fitted()
    arrays = stats.arrays()
    with pytest.raises(ValueError, match=r"knn_k 400 must lie in \[1, 300\]"):
        OODStats(**{**arrays, "knn_k": 400})
    with pytest.raises(ValueError, match=r"bank \(300, 4\) must be \(B, 6\)"):
        OODStats(**{**arrays, "bank": arrays["bank"][:, :4]})
    with pytest.raises(ValueError, match="kNN validation scores without a bank"):
        OODStats(**{**arrays, "bank": None})
    with pytest.raises(ValueError, match="val_combined must be a non-empty"):
        OODStats(**{**arrays, "val_combined": np.zeros(0)})


class Tiny(nn.Module):
    """x (N, 1, 2, 2) -> 6 features (ReLU) -> head: 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 3
        self.body = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x.flatten(1))))


def test_predictor_writes_the_combined_score_in_one_pass():
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(300, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = torch.relu(model.body(x.flatten(1)))
        logits = model.head(feats)
    y = logits.argmax(1).numpy()
    stats = fit_ood_stats(feats[:200].numpy(), y[:200], feats[200:].numpy(),
                          logits[200:].numpy(), num_classes=3, temperature=1.0)
    card = ModelCard(arch="tiny", classes=["a", "b", "c"], image_size=2)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    pred = Predictor(model, card, ood=stats, batch_size=64, fuse=False)
    out = pred.predict(x)
    assert len(calls) == 5  # ceil(300 / 64) forward passes, nothing more for the scores
    expected = stats.distance(feats, logits).numpy()
    np.testing.assert_allclose(out.distance, expected, atol=1e-6)
    np.testing.assert_allclose(out.ood_score, stats.quantile(expected))
    assert ((out.ood_score >= 0) & (out.ood_score <= 1)).all()


def test_ecdf_is_continuous_so_rounding_never_moves_a_whole_rank():
    from workers.ood import ecdf

    ref = torch.sort(torch.rand(873, generator=torch.Generator().manual_seed(0)))[0]
    x = ref[100:110]
    step = ecdf(ref, x + 1e-7) - ecdf(ref, x)        # a rounding-level change of the score
    assert float(step.abs().max()) < 1e-4            # a rank step is 1/872 ~ 1.1e-3
    q = ecdf(ref, torch.tensor([-1.0, float(ref[0]), float(ref[-1]), 2.0, float("nan")]))
    assert q[:4].tolist() == [0.0, 0.0, 1.0, 1.0] and torch.isnan(q[4])
    mid = ecdf(ref, ref)                             # order statistics map to i / (n - 1)
    assert torch.allclose(mid, torch.arange(873.0) / 872, atol=2e-3)  # up to ties
