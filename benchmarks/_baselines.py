"""Simple baselines the ``real_skies`` benchmark measures beside the models, in the same run.

* :func:`hand_features`: 19 hand-made features of the source at the centre of each stamp
  (size, concentration, profile, shape, asymmetry, S/N), the kind a careful astronomer
  would feed a linear classifier;
* :func:`fit_logistic` / :func:`predict_logistic`: an L2-regularised, class-balanced
  logistic regression fitted by L-BFGS in torch, on features standardised on the
  training set (scikit-learn is not a dependency);
* :class:`PlainCNN` / :func:`train_plain_cnn`: a plain ~105k-parameter CNN trained
  without augmentation, early stopping on a held-out part of the training data.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEATURES", "hand_features", "fit_logistic", "predict_logistic", "PlainCNN",
           "train_plain_cnn", "predict_cnn", "BASELINES_VERSION"]

#: Bumped when a baseline changes, so that a rerun redoes its units.
BASELINES_VERSION = 1

FEATURES = ("log_fwhm", "peak_over_flux", "conc_2_6", "conc_4_12", "r20", "r50", "r80",
            "conc_r80_r20", "ellipticity", "moment_size", "kron_radius", "asymmetry",
            "profile_2_4_over_core", "profile_4_8_over_core", "log_peak_snr", "log_flux_snr",
            "flat_top_pixels", "gini", "log_area_half_max")

_RADII = np.arange(0.5, 20.01, 0.5)


def _centre(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux-weighted centroid (y, x) of the positive pixels within 3 px of the central peak."""
    n, h, w = img.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y0, x0 = int(cy) - 4, int(cx) - 4
    win = img[:, y0:y0 + 10, x0:x0 + 10].reshape(n, -1).argmax(axis=1)
    py, px = y0 + win // 10, x0 + win % 10
    yy, xx = np.mgrid[:h, :w]
    near = ((yy[None] - py[:, None, None]) ** 2 + (xx[None] - px[:, None, None]) ** 2) <= 9
    wgt = np.where(near, np.clip(img, 0, None), 0.0)
    tot = wgt.sum(axis=(1, 2))
    ok = tot > 0
    y = np.where(ok, (wgt * yy).sum(axis=(1, 2)) / np.where(ok, tot, 1), py)
    x = np.where(ok, (wgt * xx).sum(axis=(1, 2)) / np.where(ok, tot, 1), px)
    return y, x


def _radius_at(curve: np.ndarray, frac: float) -> np.ndarray:
    """Radius (px) where the normalised growth curve ``(N, len(_RADII))`` first reaches ``frac``."""
    above = curve >= frac
    i = np.where(above.any(axis=1), above.argmax(axis=1), curve.shape[1] - 1)
    lo = np.clip(i - 1, 0, None)
    c0, c1 = curve[np.arange(len(i)), lo], curve[np.arange(len(i)), i]
    r0, r1 = _RADII[lo], _RADII[i]
    t = np.where(c1 > c0, (frac - c0) / np.where(c1 > c0, c1 - c0, 1), 0.0)
    return np.where(i == 0, _RADII[0] * frac / np.maximum(curve[:, 0], 1e-9),
                    r0 + np.clip(t, 0, 1) * (r1 - r0))


def hand_features(images: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of each stamp.

    Parameters
    ----------
    images : numpy.ndarray
        Background-subtracted stamps ``(N, H, W)`` or ``(N, C, H, W)`` (bands summed),
        NaN outside the image (counted as 0).

    Returns
    -------
    numpy.ndarray
        float64 ``(N, len(FEATURES))``; may hold NaN or inf where a feature is undefined
        (a stamp without positive flux): :func:`fit_logistic` replaces those.
    """
    from pipeline.imaging.blur_score import apparent_fwhm

    img = np.asarray(images, dtype=np.float64)
    if img.ndim == 4:
        img = np.nan_to_num(img).sum(axis=1)
    img = np.nan_to_num(img)
    n, h, w = img.shape
    ring = np.ones((h, w), bool)
    ring[2:-2, 2:-2] = False
    sigma = 1.4826 * np.median(np.abs(img[:, ring] - np.median(img[:, ring], axis=1)[:, None]),
                               axis=1)
    sigma = np.maximum(sigma, 1e-3)
    cy, cx = _centre(img)
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    r = np.hypot(dy, dx)

    growth = np.stack([(img * (r < R)).sum(axis=(1, 2)) for R in _RADII], axis=1)
    total = growth[:, np.searchsorted(_RADII, 16.0)]
    pos_total = np.where(total > 0, total, np.nan)
    curve = growth / np.where(total > 0, total, 1.0)[:, None]
    flux = {R: growth[:, np.searchsorted(_RADII, R)] for R in (2.0, 4.0, 6.0, 12.0)}
    peak = img[:, h // 2 - 4:h // 2 + 5, w // 2 - 4:w // 2 + 5].reshape(n, -1).max(axis=1)
    r20, r50, r80 = (_radius_at(curve, q) for q in (0.2, 0.5, 0.8))

    gw = np.exp(-r ** 2 / (2 * 3.0 ** 2)) * np.clip(img, 0, None)
    gs = np.maximum(gw.sum(axis=(1, 2)), 1e-12)
    ixx, iyy = (gw * dx ** 2).sum(axis=(1, 2)) / gs, (gw * dy ** 2).sum(axis=(1, 2)) / gs
    ixy = (gw * dx * dy).sum(axis=(1, 2)) / gs
    size2 = np.maximum(ixx + iyy, 1e-12)
    ellipticity = np.hypot(ixx - iyy, 2 * ixy) / size2

    in12 = (r < 12) & (img > 0)
    kron = (r * img * in12).sum(axis=(1, 2)) / np.maximum((img * in12).sum(axis=(1, 2)), 1e-12)
    in8 = r < 8
    rot = img[:, ::-1, ::-1]
    asym = (np.abs(img - rot) * in8).sum(axis=(1, 2)) / np.maximum(
        2 * (np.abs(img) * in8).sum(axis=(1, 2)), 1e-12)

    def mean_in(lo: float, hi: float) -> np.ndarray:
        m = (r >= lo) & (r < hi)
        return (img * m).sum(axis=(1, 2)) / np.maximum(m.sum(axis=(1, 2)), 1)

    core = np.where(mean_in(0, 1.5) > 0, mean_in(0, 1.5), np.nan)
    flat = ((img > 0.9 * peak[:, None, None]) & (r < 4)).sum(axis=(1, 2))
    vals = np.sort(np.where(in8, np.abs(img), 0).reshape(n, -1), axis=1)
    m_pix = int(in8.sum(axis=(1, 2)).max())
    vals = vals[:, -m_pix:]
    rank = np.arange(1, m_pix + 1)
    gini = ((2 * rank - m_pix - 1) * vals).sum(axis=1) / np.maximum(
        (m_pix - 1) * vals.sum(axis=1), 1e-12)
    area = ((img > 0.5 * peak[:, None, None]) & (r < 12)).sum(axis=(1, 2))

    with np.errstate(all="ignore"):
        fwhm = apparent_fwhm(img.astype(np.float32)).astype(np.float64)
        cols = [np.log10(fwhm), peak / pos_total,
                flux[2.0] / np.where(flux[6.0] > 0, flux[6.0], np.nan),
                flux[4.0] / np.where(flux[12.0] > 0, flux[12.0], np.nan), r20, r50, r80,
                5 * np.log10(r80 / r20), ellipticity, np.sqrt(size2), kron, asym,
                mean_in(2, 4) / core, mean_in(4, 8) / core,
                np.log10(np.maximum(peak, 1e-3) / sigma),
                np.log10(np.maximum(total, 1e-3) / sigma), flat.astype(np.float64), gini,
                np.log10(np.maximum(area, 1))]
    return np.stack(cols, axis=1)


# --------------------------------------------------------------------------- logistic regression
def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float = 1e-3,
                 max_iter: int = 300) -> dict[str, Any]:
    """Fit a class-balanced multinomial logistic regression with an L2 penalty on the weights.

    Non-finite feature values are replaced by the training median; features are then
    standardised with the training mean and standard deviation (kept in the model).
    The loss is the inverse-class-frequency weighted cross-entropy plus
    ``l2 * ||W||^2``, minimised by L-BFGS (strong Wolfe line search) in float64.
    """
    x = np.asarray(x, np.float64)
    finite = np.where(np.isfinite(x), x, np.nan)
    median = np.nanmedian(finite, axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    x = np.where(np.isfinite(x), x, median)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = torch.as_tensor((x - mean) / std)
    t = torch.as_tensor(np.asarray(y, np.int64))
    counts = np.bincount(np.asarray(y), minlength=n_classes)
    weight = torch.as_tensor(len(y) / (n_classes * np.maximum(counts, 1)), dtype=torch.float64)
    w = torch.zeros((x.shape[1], n_classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, t, weight=weight) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"median": median, "mean": mean, "std": std, "w": w.detach().numpy(),
            "b": b.detach().numpy(), "l2": l2}


def predict_logistic(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K)`` of :func:`fit_logistic`'s model."""
    x = np.asarray(x, np.float64)
    x = np.where(np.isfinite(x), x, model["median"])
    logits = ((x - model["mean"]) / model["std"]) @ model["w"] + model["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- plain CNN
class PlainCNN(nn.Module):
    """Three conv-ReLU-maxpool blocks (16, 32, 64 channels), pooling to 4x4, two linear layers.

    About 105k parameters for one input band and two classes.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 2, hidden: int = 80):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, hidden), nn.ReLU(),
                                  nn.Dropout(0.25), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of prepared stamps ``(N, C, H, W)``."""
        return self.head(self.features(x))


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def predict_cnn(model: nn.Module, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    """Softmax probabilities of prepared stamps."""
    model.eval()
    with torch.inference_mode():
        out = [torch.softmax(model(x[i:i + batch]), dim=1) for i in range(0, x.shape[0], batch)]
    return torch.cat(out).numpy().astype(np.float64)


def train_plain_cnn(x_train: torch.Tensor, y_train: np.ndarray, x_val: torch.Tensor,
                    y_val: np.ndarray, n_classes: int, *, epochs: int = 40, patience: int = 8,
                    lr: float = 1e-3, batch_size: int = 64,
                    seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Train :class:`PlainCNN` with Adam and class-weighted cross-entropy, no augmentation.

    Early stopping on the validation balanced accuracy after ``patience`` epochs without
    improvement; the best weights are kept.  Deterministic for a seed and thread count.

    Returns
    -------
    (PlainCNN, dict)
        The model (best weights, eval mode) and ``epochs_run``, ``best_epoch``,
        ``best_val_bacc``, ``params``, ``seconds``.
    """
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PlainCNN(x_train.shape[1], n_classes)
        counts = np.bincount(y_train, minlength=n_classes)
        weight = torch.as_tensor(len(y_train) / (n_classes * np.maximum(counts, 1)),
                                 dtype=torch.float32)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        rng = np.random.default_rng(seed)
        yt = torch.as_tensor(y_train, dtype=torch.int64)
        best = (-1.0, 0, None)
        run = 0
        for epoch in range(1, epochs + 1):
            run = epoch
            model.train()
            perm = rng.permutation(len(y_train))
            for start in range(0, len(perm), batch_size):
                idx = torch.as_tensor(perm[start:start + batch_size])
                loss = F.cross_entropy(model(x_train[idx]), yt[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            bacc = _balanced_accuracy(y_val, predict_cnn(model, x_val).argmax(axis=1))
            print(f"plain CNN epoch {epoch}/{epochs} val_bacc {bacc:.4f} "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            if bacc > best[0] + 1e-9:
                best = (bacc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            elif epoch - best[1] >= patience:
                break
        model.load_state_dict(best[2])
        model.eval()
    params = sum(p.numel() for p in model.parameters())
    return model, {"epochs_run": run, "best_epoch": best[1], "best_val_bacc": best[0],
                   "params": int(params), "seconds": round(time.perf_counter() - t0, 2),
                   "epochs": epochs, "patience": patience, "lr": lr, "batch_size": batch_size,
                   "optimizer": "Adam", "augment": "none",
                   "loss": "cross-entropy weighted by inverse class frequency"}

