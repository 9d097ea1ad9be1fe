"""Out-of-distribution scores of a classifier, from the forward pass that gives its probabilities.

Every score is "higher = less like the training data":

* the **k-nearest-neighbour distance** (Sun et al. 2022, "Out-of-distribution detection with
  deep nearest neighbors") of the penultimate features ``h(x)``: the Euclidean distance from
  ``h/|h|`` to the ``k``-th nearest (``k`` = :data:`KNN_K`) of a bank of L2-normalised
  training features (at most :data:`MAX_BANK`, subsampled evenly, stored as float16);
* **1 - confidence**, ``1 - max softmax(f(x) / T)`` of the logits ``f(x)``, ``T`` the card's
  temperature;
* the catalogue's ``ood_score`` combines them (:meth:`OODStats.distance`):
  ``max(q_knn, q_conf)``, each the score's quantile among the validation stamps (1 where the
  Mahalanobis distance below exceeds every validation stamp's), then ranked again among the
  validation stamps' own combined scores.  A source is flagged when it lies far from the
  training features *or* the model is unusually unsure of it: on real skies the kNN distance
  separates real sets from synthetic stamps best and 1 - confidence ranks errors best, and
  their maximum keeps most of both (docs/models.md, the measured table).  The kNN distance
  of normalised features ignores their magnitude: the Mahalanobis guard catches stamps whose
  features blow up (a 40-sigma checkerboard);
* the **energy** ``E(x) = -T logsumexp(f(x) / T)`` (Liu et al. 2020, "Energy-based
  out-of-distribution detection"), recorded raw;
* the **Mahalanobis distance** of ``h(x)`` to the nearest class (Lee et al. 2018, "A simple
  unified framework for detecting out-of-distribution samples"): class-conditional Gaussians
  with one shared covariance ``S`` fitted on the training split,
  ``M(x) = min_k (h - mu_k)^T S^-1 (h - mu_k)``.  On real skies it ranks faint real stamps as
  *more* familiar than synthetic ones; it is what ``ood_score`` ranks for statistics without a
  bank (sidecars written before it), and kept for comparison.

The penultimate features are the input of the model's last ``nn.Linear`` (the head), taken
by a forward pre-hook: generic across the zoo (:func:`last_linear`), and untouched by
:func:`workers.fuse.fuse_conv_bn` (which only replaces convolutions and batch norms).

:class:`OODStats` holds what scoring needs: the bank (one ``B x D`` product and a top-``k``
per stamp), the sorted validation scores (the in-distribution reference of each quantile), and
the Mahalanobis statistics in a whitened form: ``z = (h - c) A`` with ``A = V U diag(s)^-1/2``
(``V`` an optional PCA projection to ``d <= max_dim`` dimensions for wide heads, ``U, s`` the
eigen-decomposition of the shrunk shared covariance), so ``M(x) = min_k |z - m_k|^2`` with
``m_k`` the whitened class means.  :meth:`OODStats.quantile` is the fraction of validation
stamps with a lower score, linear between them (:func:`ecdf`; 1.0 = at or beyond the largest).  The statistics are written as a
small ``.npz`` (:func:`ood_bytes`, byte-identical for identical statistics, read with
``allow_pickle=False``) whose sha256 the model card records (:mod:`workers.checkpoint`);
they are fitted by ``pipeline.training.ood``.
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

__all__ = ["OODStats", "ecdf", "last_linear", "energy_score", "unconfidence", "penultimate_features",
           "l2_normalise", "knn_distance", "ood_bytes", "ood_from_bytes", "DEFAULT_THRESHOLD",
           "MAX_DIM", "KNN_K", "MAX_BANK", "COMBINED"]

#: Default ``ood_score`` above which a source is flagged (the 0.99 validation quantile).
DEFAULT_THRESHOLD = 0.99
#: Widest feature space kept as it is; wider heads are PCA-projected to this many dimensions.
MAX_DIM = 512
#: The neighbour whose distance is the kNN score (real-sky AUROCs within 0.01 for k = 1, 50).
KNN_K = 10
#: Most training features in the kNN bank (subsampled evenly beyond).  The cost grows with
#: it (one core: ~20 us a stamp for 2,323 x 96, ~5 for 512, beside ~100 for the default
#: model's predict); the real-sky AUROCs did not (512 rows: the mean real-vs-synthetic AUROC
#: 0.864 against 0.882 for 2,323, errors ranked as well; benchmarks/results/ood_real*.md).
MAX_BANK = 512
#: What ``ood_score`` ranks with a bank (:meth:`OODStats.distance`).
COMBINED = "max(q_knn, q_confidence); 1 beyond the validation Mahalanobis distances"
_ARRAYS = ("center", "transform", "means", "val_mahalanobis", "val_energy")
#: Arrays of the combined score, all present or all absent (sidecars written before it).
_KNN_ARRAYS = ("bank", "knn_k", "temperature", "val_knn", "val_unconfidence", "val_combined")
_DTYPES = {"bank": np.float16, "knn_k": np.int64}  # the rest float32


def ecdf(ref: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The empirical distribution function of sorted ``ref`` at ``x``, continuous in ``x``.

    Linear between consecutive order statistics (``ref[i]`` maps to ``i / (n - 1)``), 0 at
    and below the smallest, 1 at and above the largest, NaN for NaN.  Continuous, so that a
    rounding-level change of a score (another thread count, batch size or device) moves its
    quantile by as little, never by a whole rank.
    """
    n = ref.numel()
    if n < 2:
        return torch.where(torch.isnan(x), x, (x >= ref.reshape(-1)[0]).to(x.dtype))
    idx = torch.searchsorted(ref, x.to(ref.dtype)).clamp(1, n - 1)
    lo, hi = ref[idx - 1], ref[idx]
    gap = hi - lo
    frac = torch.where(gap > 0, (x - lo) / torch.where(gap > 0, gap, torch.ones_like(gap)),
                       torch.zeros_like(gap))
    q = ((idx - 1).to(x.dtype) + frac.clamp(0.0, 1.0)) / (n - 1)
    return torch.where(x >= ref[-1], torch.ones_like(q), q)  # ties at the top: 1


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


def unconfidence(logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> torch.Tensor:
    """``1 - max softmax(logits / T)`` per row, float32, on the logits' device.

    Parameters
    ----------
    logits : torch.Tensor or numpy.ndarray
        ``(N, K)`` raw logits.
    temperature : float, default: 1.0
        ``T`` (the card's calibration temperature).
    """
    t = torch.as_tensor(logits).float()
    return 1.0 - torch.softmax(t / float(temperature), dim=1).max(dim=1).values


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32; all-zero rows stay zero)."""
    f = np.asarray(features, np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_distance(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each L2-normalised feature row to its ``k``-th nearest bank row, ``(N,)``.

    Parameters
    ----------
    features : torch.Tensor
        ``(N, D)`` features (normalised here).
    bank : torch.Tensor
        ``(B, D)`` L2-normalised reference features, ``B >= k``, on the same device.
    k : int
        Which neighbour (1 = the nearest).
    """
    z = torch.nn.functional.normalize(features.float(), dim=1)
    sim = z @ bank.T
    if sim.device.type == "cpu" and sim.shape[0]:  # numpy's introselect: ~4x faster than topk
        b = sim.shape[1]
        kth = torch.from_numpy(np.partition(sim.numpy(), b - k, axis=1)[:, b - k].copy())
    else:
        kth = sim.topk(k, dim=1).values[:, -1]  # cosine similarity of the k-th neighbour
    return (2.0 - 2.0 * kth).clamp_min(0.0).sqrt()


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
    """Fitted OOD statistics: the kNN bank, the Mahalanobis statistics, the validation references.

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
    bank : numpy.ndarray, optional
        ``(B, D)`` float16 L2-normalised training features of the kNN score.  Without it
        (sidecars written before it) ``ood_score`` ranks the Mahalanobis distance.
    knn_k : int
        The neighbour of the kNN score (with ``bank``).
    temperature : float
        Of the confidence (the card's, with ``bank``).
    val_knn, val_unconfidence, val_combined : numpy.ndarray, optional
        Sorted kNN distances, ``1 - confidence`` and combined scores of the validation stamps
        (with ``bank``).
    info : dict
        What was fitted (dims, counts, shrinkage, quantiles), for the card; not in the file.
    """

    center: np.ndarray
    transform: np.ndarray
    means: np.ndarray
    val_mahalanobis: np.ndarray
    val_energy: np.ndarray
    bank: np.ndarray | None = None
    knn_k: int = 0
    temperature: float = 1.0
    val_knn: np.ndarray | None = None
    val_unconfidence: np.ndarray | None = None
    val_combined: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict, repr=False,
                                                          compare=False)

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, np.float32)
        self.transform = np.asarray(self.transform, np.float32)
        self.means = np.asarray(self.means, np.float32)
        refs = ["val_mahalanobis", "val_energy"]
        if self.bank is not None:
            self.bank = np.asarray(self.bank, np.float16)
            refs += ["val_knn", "val_unconfidence", "val_combined"]
        for name in refs:
            v = getattr(self, name)
            setattr(self, name, None if v is None else np.sort(np.asarray(v, np.float32)))
        self.knn_k, self.temperature = int(self.knn_k), float(self.temperature)
        d_in = self.center.shape[0] if self.center.ndim == 1 else -1
        problems = []
        if self.center.ndim != 1 or self.transform.ndim != 2 or self.transform.shape[0] != d_in:
            problems.append(f"center {self.center.shape} and transform {self.transform.shape} "
                            "must be (D,) and (D, d)")
        elif self.means.ndim != 2 or self.means.shape[1] != self.transform.shape[1]:
            problems.append(f"means {self.means.shape} must be (K, {self.transform.shape[1]})")
        elif not np.isfinite(self.means).all(axis=1).any():
            problems.append("no class has finite means")
        if self.bank is not None:
            if self.bank.ndim != 2 or self.bank.shape[1] != d_in:
                problems.append(f"bank {self.bank.shape} must be (B, {d_in})")
            elif not 1 <= self.knn_k <= self.bank.shape[0]:
                problems.append(f"knn_k {self.knn_k} must lie in [1, {self.bank.shape[0]}] "
                                "(the bank's rows)")
            if not (np.isfinite(self.bank).all() and self.temperature > 0):
                problems.append("bank is not finite or temperature is not positive")
        elif any(getattr(self, n) is not None for n in _KNN_ARRAYS[3:]):
            problems.append("kNN validation scores without a bank")
        for name in refs:
            v = getattr(self, name)
            if v is None or v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
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

    @property
    def score(self) -> str:
        """What ``ood_score`` ranks: :data:`COMBINED` with a bank, else ``"mahalanobis"``."""
        return COMBINED if self.bank is not None else "mahalanobis"

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._cache:
            ok = np.isfinite(self.means).all(axis=1)
            means = torch.as_tensor(self.means[ok], device=device)
            self._cache[key] = (torch.as_tensor(self.center, device=device),
                                torch.as_tensor(self.transform, device=device),
                                means, (means * means).sum(1))
        return self._cache[key]

    def _knn_tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = f"knn:{device}"
        if key not in self._cache:  # float32 (float16 products are slow on the CPU), unit rows
            bank, ref_knn, ref_conf = (torch.as_tensor(np.asarray(a, np.float32), device=device)
                                       for a in (self.bank, self.val_knn, self.val_unconfidence))
            self._cache[key] = (nn.functional.normalize(bank, dim=1), ref_knn, ref_conf,
                                torch.tensor(float(self.val_mahalanobis[-1]), device=device))
        return self._cache[key]

    def _features(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        f = torch.as_tensor(features)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"OOD statistics expect features (N, {self.dim}), got "
                             f"{tuple(f.shape)}")
        return f

    def mahalanobis(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class, ``(N,)`` float32, on the features' device.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            ``(N, D)`` penultimate features.
        """
        f = self._features(features)
        center, transform, means, means_sq = self._tensors(f.device)
        with torch.autocast(f.device.type, enabled=False):
            z = (f.float() - center) @ transform
            d = (z * z).sum(1, keepdim=True) - 2.0 * (z @ means.T) + means_sq
        return d.min(dim=1).values.clamp_min(0.0)

    def knn(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Distance of the normalised features to the ``knn_k``-th nearest bank row, ``(N,)`` float32.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            ``(N, D)`` penultimate features.

        Raises
        ------
        ValueError
            Statistics without a bank (written before it): refit them with ``skysieve ood-fit``.
        """
        if self.bank is None:
            raise ValueError("these OOD statistics have no kNN bank (written before it, or "
                             "fitted with knn_k=0); refit them with skysieve ood-fit")
        f = self._features(features)
        with torch.autocast(f.device.type, enabled=False):
            return knn_distance(f, self._knn_tensors(f.device)[0], self.knn_k)

    def distance(self, features: torch.Tensor | np.ndarray,
                 logits: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """The raw score ``ood_score`` ranks (:attr:`score`), ``(N,)`` float32, on the features' device.

        With a bank: ``max(q_knn, q_conf)``, the quantiles of the kNN distance and of
        ``1 - confidence`` among the validation stamps, and 1 where the Mahalanobis distance
        exceeds every validation stamp's (features blown up in magnitude, which the
        normalised kNN does not see); without a bank: the Mahalanobis distance.

        Parameters
        ----------
        features : torch.Tensor or numpy.ndarray
            ``(N, D)`` penultimate features.
        logits : torch.Tensor or numpy.ndarray, optional
            ``(N, K)`` raw logits of the same stamps; needed with a bank.
        """
        if self.bank is None:
            return self.mahalanobis(features)
        if logits is None:
            raise ValueError(f"the OOD score {COMBINED} needs the logits of the stamps too: "
                             "call distance(features, logits)")
        f = self._features(features)
        _, ref_knn, ref_conf, max_maha = self._knn_tensors(f.device)
        lg = torch.as_tensor(logits).to(f.device)
        with torch.autocast(f.device.type, enabled=False):
            q_knn = ecdf(ref_knn, self.knn(f).contiguous())
            q_conf = ecdf(ref_conf, unconfidence(lg, self.temperature).contiguous())
            q = torch.maximum(q_knn, q_conf).float()
            return torch.where(self.mahalanobis(f) > max_maha, torch.ones_like(q), q)

    def quantile(self, scores: np.ndarray, *, energy: bool = False) -> np.ndarray:
        """Fraction of validation stamps scoring lower than each of ``scores`` (:func:`ecdf`; NaN stays NaN).

        Parameters
        ----------
        scores : numpy.ndarray
            Scores of :meth:`distance` (or energies with ``energy=True``).
        energy : bool, default: False
            Rank against the validation energies instead.
        """
        ref = (self.val_energy if energy else
               self.val_combined if self.bank is not None else self.val_mahalanobis)
        s = torch.as_tensor(np.asarray(scores, np.float64))
        return ecdf(torch.as_tensor(np.asarray(ref, np.float64)), s).numpy().astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the file (see :func:`ood_bytes`); those of the combined score with a bank."""
        out = {name: getattr(self, name) for name in _ARRAYS}
        if self.bank is not None:
            out.update({name: np.asarray(getattr(self, name), _DTYPES.get(name, np.float32))
                        for name in _KNN_ARRAYS})
        return out


def ood_bytes(stats: OODStats) -> bytes:
    """Serialise the statistics as an ``.npz`` (uncompressed, fixed timestamps: reproducible bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in stats.arrays().items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.asarray(arr, order="C"), allow_pickle=False)
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
            knn = [n for n in _KNN_ARRAYS if n in npz.files]
            missing = [n for n in _ARRAYS if n not in npz.files]
            if knn:  # all of them or none
                missing += [n for n in _KNN_ARRAYS if n not in knn]
            if missing:
                raise ValueError(f"lacks the array(s) {', '.join(missing)}")
            arrays = {n: npz[n] for n in _ARRAYS + tuple(knn)}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"not a readable .npz ({exc})") from exc
    for name, arr in arrays.items():
        want = np.dtype(_DTYPES.get(name, np.float32))
        if arr.dtype != want:
            raise ValueError(f"array {name!r} is {arr.dtype}, expected {want}")
    for name in ("knn_k", "temperature"):
        if name in arrays:
            if arrays[name].shape != ():
                raise ValueError(f"array {name!r} must be a scalar, got shape "
                                 f"{arrays[name].shape}")
            arrays[name] = arrays[name].item()
    return OODStats(**arrays, info=dict(info or {}))
