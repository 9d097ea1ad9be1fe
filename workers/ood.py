"""Out-of-distribution scores of a classifier, from the forward pass that gives its probabilities.

Two scores per stamp, both "higher = less like the training data":

* the **energy** ``E(x) = -T logsumexp(f(x) / T)`` of the logits ``f(x)`` (Liu et al. 2020,
  "Energy-based out-of-distribution detection"), ``T`` the card's temperature;
* the **Mahalanobis distance** of the penultimate features ``h(x)`` to the nearest class
  (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution samples"):
  class-conditional Gaussians with one shared covariance ``S`` fitted on the training split,
  ``M(x) = min_k (h - mu_k)^T S^-1 (h - mu_k)``.

The penultimate features are the input of the model's last ``nn.Linear`` (the head), taken
by a forward pre-hook: generic across the zoo (:func:`last_linear`), and untouched by
:func:`workers.fuse.fuse_conv_bn` (which only replaces convolutions and batch norms).

:class:`OODStats` holds what scoring needs, in a whitened form so that one stamp costs one
``D x d`` matrix product: ``z = (h - c) A`` with ``A = V U diag(s)^-1/2`` (``V`` an optional
PCA projection to ``d <= max_dim`` dimensions for wide heads, ``U, s`` the eigen-decomposition
of the shrunk shared covariance), so ``M(x) = min_k |z - m_k|^2`` with ``m_k`` the whitened
class means.  It also keeps the sorted validation scores, the in-distribution reference:
:meth:`OODStats.quantile` is the fraction of validation stamps with a lower score (1.0 =
beyond everything seen).  The statistics are written as a small ``.npz`` (:func:`ood_bytes`,
byte-identical for identical statistics, read with ``allow_pickle=False``) whose sha256 the
model card records (:mod:`workers.checkpoint`).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OODStats", "last_linear", "energy_score", "penultimate_features", "fit_ood_stats",
           "ledoit_wolf_shrinkage",
           "ood_bytes", "ood_from_bytes", "DEFAULT_THRESHOLD", "MAX_DIM"]

#: Default ``ood_score`` above which a source is flagged (the 0.99 validation quantile).
DEFAULT_THRESHOLD = 0.99
#: Widest feature space kept as it is; wider heads are PCA-projected to this many dimensions.
MAX_DIM = 512
_ARRAYS = ("center", "transform", "means", "val_mahalanobis", "val_energy")
_MAX_REFERENCE = 200_000  # validation scores kept (evenly spaced order statistics beyond)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Return ``(name, module)`` of the model's final ``nn.Linear``, whose input is the feature vector.

    The last ``nn.Linear`` in registration order; where the model records ``num_classes``
    its ``out_features`` must equal it (every model of ``workers.models`` registers its head last).

    Raises
    ------
    ValueError
        No ``nn.Linear``, or the last one does not output ``num_classes`` logits.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head: no penultimate "
                         "features for the Mahalanobis score")
    name, head = found[-1]
    k = getattr(model, "num_classes", None)
    if isinstance(k, int) and head.out_features != k:
        raise ValueError(f"{type(model).__name__}: the last nn.Linear {name!r} gives "
                         f"{head.out_features} outputs, not the model's {k} classes")
    return name, head


def energy_score(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy ``-T logsumexp(logits / T)`` per row (float32; lower = more in-distribution).

    Parameters
    ----------
    logits : torch.Tensor or numpy.ndarray
        ``(N, K)`` raw logits.
    temperature : float, default: 1.0
        ``T`` (the card's calibration temperature).
    """
    t = torch.as_tensor(logits).float()
    temp = float(temperature)
    return (-temp * torch.logsumexp(t / temp, dim=1)).numpy().astype(np.float32)


def penultimate_features(model: nn.Module, batches: Iterable[torch.Tensor], *,
                         device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Features (the input of :func:`last_linear`) and logits of prepared stamps, in one pass.

    The model is put in eval mode and run under ``torch.inference_mode``; the hook is removed
    afterwards.  For fitting statistics; inference uses :class:`workers.inference.Predictor`.

    Parameters
    ----------
    model : torch.nn.Module
    batches : iterable of torch.Tensor
        Prepared stamps ``(n, C, y, x)``, one batch at a time.
    device : str or torch.device, default: "cpu"
        Where ``model`` is.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``(N, D)`` float32 features and ``(N, K)`` float32 logits.
    """
    _, head = last_linear(model)
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    feats, logits = [], []
    model.eval()
    try:
        with torch.inference_mode():
            for xb in batches:
                seen.clear()
                xb = xb.to(device).contiguous(memory_format=torch.channels_last)
                out = model(xb).float().cpu()
                feats.append(seen[-1].flatten(1).float().cpu())
                logits.append(out)
    finally:
        handle.remove()
    if not feats:
        return (np.zeros((0, head.in_features), np.float32),
                np.zeros((0, head.out_features), np.float32))
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


@dataclass
class OODStats:
    """Fitted statistics of the Mahalanobis score plus the in-distribution reference scores.

    Attributes
    ----------
    center : numpy.ndarray
        ``(D,)`` mean training feature.
    transform : numpy.ndarray
        ``(D, d)`` PCA projection (when ``D > max_dim``) times the whitening of the shared
        covariance: ``z = (h - center) @ transform``.
    means : numpy.ndarray
        ``(K, d)`` whitened class means (NaN rows for classes absent from the fit).
    val_mahalanobis, val_energy : numpy.ndarray
        Sorted scores of the validation stamps.
    info : dict
        What was fitted (dims, counts, shrinkage, quantiles), for the card; not in the file.
    """

    center: np.ndarray
    transform: np.ndarray
    means: np.ndarray
    val_mahalanobis: np.ndarray
    val_energy: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, np.float32)
        self.transform = np.asarray(self.transform, np.float32)
        self.means = np.asarray(self.means, np.float32)
        self.val_mahalanobis = np.sort(np.asarray(self.val_mahalanobis, np.float32))
        self.val_energy = np.sort(np.asarray(self.val_energy, np.float32))
        d_in = self.center.shape[0] if self.center.ndim == 1 else -1
        problems = []
        if self.center.ndim != 1 or self.transform.ndim != 2 or self.transform.shape[0] != d_in:
            problems.append(f"center {self.center.shape} and transform {self.transform.shape} "
                            "must be (D,) and (D, d)")
        elif self.means.ndim != 2 or self.means.shape[1] != self.transform.shape[1]:
            problems.append(f"means {self.means.shape} must be (K, {self.transform.shape[1]})")
        elif not np.isfinite(self.means).all(axis=1).any():
            problems.append("no class has finite means")
        for name in ("val_mahalanobis", "val_energy"):
            v = getattr(self, name)
            if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
                problems.append(f"{name} must be a non-empty 1-D array of finite scores")
        for name in ("center", "transform"):
            if not np.isfinite(getattr(self, name)).all():
                problems.append(f"{name} is not finite")
        if problems:
            raise ValueError("invalid OOD statistics: " + "; ".join(problems))

    @property
    def dim(self) -> int:
        """``D``: width of the features (the head's ``in_features``)."""
        return int(self.center.shape[0])

    @property
    def num_classes(self) -> int:
        """``K``: classes (rows of :attr:`means`)."""
        return int(self.means.shape[0])

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._cache:
            ok = np.isfinite(self.means).all(axis=1)
            means = torch.as_tensor(self.means[ok], device=device)
            self._cache[key] = (torch.as_tensor(self.center, device=device),
                                torch.as_tensor(self.transform, device=device),
                                means, (means * means).sum(1))
        return self._cache[key]

    def mahalanobis(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class, ``(N,)`` float32, on the features' device.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            ``(N, D)`` penultimate features.
        """
        f = torch.as_tensor(features)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"OOD statistics expect features (N, {self.dim}), got "
                             f"{tuple(f.shape)}")
        center, transform, means, means_sq = self._tensors(f.device)
        with torch.autocast(f.device.type, enabled=False):
            z = (f.float() - center) @ transform
            d = (z * z).sum(1, keepdim=True) - 2.0 * (z @ means.T) + means_sq
        return d.min(dim=1).values.clamp_min(0.0)

    def quantile(self, scores: np.ndarray, *, energy: bool = False) -> np.ndarray:
        """Fraction of validation stamps scoring lower than each of ``scores`` (NaN stays NaN).

        Parameters
        ----------
        scores : numpy.ndarray
            Mahalanobis scores (or energies with ``energy=True``).
        energy : bool, default: False
            Rank against the validation energies instead.
        """
        ref = self.val_energy if energy else self.val_mahalanobis
        s = np.asarray(scores, np.float64)
        q = np.searchsorted(ref, s, side="left").astype(np.float64) / ref.size
        return np.where(np.isnan(s), np.nan, q).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the file (see :func:`ood_bytes`)."""
        return {name: getattr(self, name) for name in _ARRAYS}


def _shared_covariance(g: np.ndarray, y: np.ndarray,
                       k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class means ``(k, d)`` (NaN rows for absent classes), the within-class residuals and
    their pooled covariance."""
    means = np.full((k, g.shape[1]), np.nan)
    resid = np.empty_like(g)
    for c in range(k):
        rows = y == c
        if rows.any():
            means[c] = g[rows].mean(axis=0)
            resid[rows] = g[rows] - means[c]
    return means, resid, resid.T @ resid / max(g.shape[0], 1)


def ledoit_wolf_shrinkage(resid: np.ndarray, cov: np.ndarray, *, max_rows: int = 20_000) -> float:
    """Ledoit & Wolf (2004) shrinkage of ``cov`` towards ``mean(eigenvalues) * I``, in [0, 1].

    ``resid`` are the centred rows ``cov`` was computed from (``cov = resid.T resid / n``);
    the variance term is estimated on at most ``max_rows`` of them (evenly spaced).
    """
    n, p = resid.shape
    mu = float(np.trace(cov)) / p
    delta = float(((cov - mu * np.eye(p)) ** 2).sum()) / p
    if delta <= 0 or n < 2:
        return 1.0
    x = resid[np.linspace(0, n - 1, min(n, max_rows)).round().astype(int)]
    m = x.shape[0]
    sq = (x * x).sum(axis=1)
    # sum_i |x_i x_i^T - S|_F^2 = sum_i |x_i|^4 - 2 sum_i x_i^T S x_i + m |S|_F^2
    spread = (sq ** 2).sum() - 2.0 * ((x @ cov) * x).sum() + m * (cov ** 2).sum()
    beta = min(float(spread) / (m * m) / p * (m / n), delta)  # scaled to the n rows of cov
    return float(np.clip(beta / delta, 0.0, 1.0))


def fit_ood_stats(train_features: np.ndarray, train_labels: np.ndarray,
                  val_features: np.ndarray, val_logits: np.ndarray, *, num_classes: int,
                  temperature: float = 1.0, max_dim: int = MAX_DIM,
                  shrinkage: float | None = None) -> OODStats:
    """Fit the Mahalanobis statistics on training features; rank the validation scores.

    Parameters
    ----------
    train_features : numpy.ndarray
        ``(N, D)`` penultimate features of the training stamps (no augmentation).
    train_labels : numpy.ndarray
        ``(N,)`` class indices in ``[0, num_classes)``.
    val_features, val_logits : numpy.ndarray
        ``(M, D)`` features and ``(M, K)`` logits of held-out validation stamps.
    num_classes : int
        ``K``; classes without training stamps get NaN means and are left out of the minimum.
    temperature : float, default: 1.0
        Of the energy score (the card's temperature).
    max_dim : int, default: :data:`MAX_DIM`
        Features wider than this are projected on their first ``max_dim`` principal components.
    shrinkage : float, optional
        Weight ``a`` of the shrunk covariance ``(1 - a) S + a mean(eig S) I``; default the
        Ledoit-Wolf estimate (:func:`ledoit_wolf_shrinkage`: near 0 for many training stamps
        per feature, larger for few).  A floor of 1e-6 keeps it invertible (dead ReLU units).

    Returns
    -------
    OODStats
    """
    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels).astype(np.int64)
    if f.ndim != 2 or y.shape != (f.shape[0],) or f.shape[0] < 2:
        raise ValueError(f"fit_ood_stats: need (N >= 2, D) features and (N,) labels, got "
                         f"{f.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"fit_ood_stats: labels must lie in [0, {num_classes})")
    if np.asarray(val_features).shape[0] == 0:
        raise ValueError("fit_ood_stats: no validation stamps to rank the scores against")
    center = f.mean(axis=0)
    g = f - center
    dim = f.shape[1]
    projection = None
    if dim > max_dim:
        _, vecs = np.linalg.eigh(g.T @ g / g.shape[0])
        projection = vecs[:, ::-1][:, :max_dim]
        g = g @ projection
    means, resid, cov = _shared_covariance(g, y, num_classes)
    if shrinkage is None:
        shrinkage = ledoit_wolf_shrinkage(resid, cov)
    shrinkage = max(float(shrinkage), 1e-6)
    s, u = np.linalg.eigh(cov)
    s = np.clip(s, 0.0, None)
    scale = float(np.mean(s)) if np.mean(s) > 0 else 1.0
    whiten = u / np.sqrt((1.0 - shrinkage) * s + shrinkage * scale)
    transform = whiten if projection is None else projection @ whiten
    stats = OODStats(center=center, transform=transform, means=means @ whiten,
                     val_mahalanobis=np.zeros(1), val_energy=np.zeros(1))
    val_m = stats.mahalanobis(torch.as_tensor(np.asarray(val_features, np.float32))).numpy()
    val_e = energy_score(val_logits, temperature)
    if val_m.size > _MAX_REFERENCE:
        pick = np.linspace(0, val_m.size - 1, _MAX_REFERENCE).round().astype(int)
        val_m, val_e = np.sort(val_m)[pick], np.sort(val_e)[pick]
    levels = (0.5, 0.9, 0.95, 0.99)
    info = {
        "dim": int(dim), "reduced_dim": int(transform.shape[1]), "pca": projection is not None,
        "covariance": "shared within-class, Ledoit-Wolf shrinkage towards a scaled identity",
        "shrinkage": float(shrinkage), "energy_temperature": float(temperature),
        "n_train": int(f.shape[0]), "n_val": int(np.asarray(val_features).shape[0]),
        "classes_fitted": int(np.isfinite(means).all(axis=1).sum()),
        "val_mahalanobis_quantiles": {str(q): float(np.quantile(val_m, q)) for q in levels},
        "val_energy_quantiles": {str(q): float(np.quantile(val_e, q)) for q in levels},
    }
    return OODStats(center=center, transform=transform, means=means @ whiten,
                    val_mahalanobis=val_m, val_energy=val_e, info=info)


def ood_bytes(stats: OODStats) -> bytes:
    """Serialise the statistics as an ``.npz`` (uncompressed, fixed timestamps: reproducible bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in stats.arrays().items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def ood_from_bytes(data: bytes, *, info: dict[str, Any] | None = None) -> OODStats:
    """Read statistics written by :func:`ood_bytes` (``allow_pickle=False``).

    Raises
    ------
    ValueError
        Not an ``.npz`` of the expected arrays, or arrays of inconsistent shapes.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [n for n in _ARRAYS if n not in npz.files]
            if missing:
                raise ValueError(f"lacks the array(s) {', '.join(missing)}")
            arrays = {n: npz[n] for n in _ARRAYS}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"not a readable .npz ({exc})") from exc
    for name, arr in arrays.items():
        if arr.dtype != np.float32:
            raise ValueError(f"array {name!r} is {arr.dtype}, expected float32")
    return OODStats(**arrays, info=dict(info or {}))
