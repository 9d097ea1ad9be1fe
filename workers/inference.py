"""Batched inference inside one worker process, on the CPU or one GPU.

:class:`Predictor` wraps a model in eval mode with its card and turns prepared
stamps ``(N, C, y, x)`` (see ``pipeline.imaging.preprocess.prepare``) into calibrated
class probabilities, ``batch_size`` stamps per forward pass under
``torch.inference_mode()``.

- Every ``Conv2d -> BatchNorm2d`` pair is folded into one convolution
  (:func:`workers.fuse.fuse_conv_bn`; 1.7x faster for the default model on the CPU).
- CPU: float32, ``channels_last`` (1.3-1.9x faster for the conv nets on this
  project's AVX2 machines, see docs/architecture.md), no autocast (bf16 was 4-50x slower).
- CUDA: pinned host memory and ``non_blocking`` copies, ``channels_last``,
  autocast in bf16 where supported (else fp16), ``cudnn.benchmark``; the logits
  stay on the device until the whole chunk is done (one synchronisation).

:meth:`Predictor.predict` also scores how far each stamp lies from the training data
(:mod:`workers.ood`), in the same forward pass: the energy of the logits, and, when the
checkpoint carries OOD statistics, the raw OOD score (:meth:`workers.ood.OODStats.distance`:
from the kNN distance of the input of the last ``nn.Linear``, taken by a forward pre-hook into
a per-thread buffer, as the tasks of a multi-threaded worker share one predictor, and the
confidence) ranked against the validation stamps.

Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.checkpoint import ModelCard
from workers.fuse import fuse_conv_bn
from workers.ood import OODStats, last_linear

__all__ = ["pick_device", "autocast_dtype", "physical_device", "Predictor", "Prediction"]


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for ``N`` stamps.

    Attributes
    ----------
    proba : numpy.ndarray
        ``(N, K)`` float32 calibrated probabilities (see :meth:`Predictor.predict_proba`).
    energy : numpy.ndarray
        ``(N,)`` float32 energy ``-T logsumexp(logits / T)`` (lower = more familiar).
    distance : numpy.ndarray
        ``(N,)`` float32 raw OOD distance (:meth:`workers.ood.OODStats.distance`); NaN without
        OOD statistics.
    ood_score : numpy.ndarray
        ``(N,)`` float32 fraction of validation stamps with a lower distance
        (1.0 = at or beyond the largest); NaN without OOD statistics.
    """

    proba: np.ndarray
    energy: np.ndarray
    distance: np.ndarray
    ood_score: np.ndarray


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """Choose the device of this process.

    Parameters
    ----------
    prefer : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``... (checked), or ``None``: ``cuda`` (the visible
        device 0 of this process; dask-cuda gives each worker its own
        ``CUDA_VISIBLE_DEVICES``) when CUDA is available, else ``cpu``.

    Returns
    -------
    torch.device
    """
    if prefer is None:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(prefer)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {prefer!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {prefer!r} asked for but CUDA is not available in this "
                             f"process (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); use 'cpu'")
        if device.index is None:
            device = torch.device("cuda", 0)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {prefer!r}: only {torch.cuda.device_count()} CUDA "
                             "device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {prefer!r}; use 'cpu', 'cuda' or 'cuda:N'")
    return device


def autocast_dtype(device: torch.device, *, bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype inference uses on ``device``: ``None`` (float32) on the CPU.

    Parameters
    ----------
    device : torch.device
    bf16_supported : bool, optional
        Whether the GPU computes in bfloat16 (Ampere and later); default: ask CUDA
        (only ever called for a CUDA device, so the CPU path never touches CUDA).

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16`` where supported (same range as float32: no overflow in
        the logits), else ``torch.float16``; ``None`` for the CPU, where bf16 was
        4-50x slower than float32 for these models.
    """
    if device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float16


def physical_device(device: torch.device, env: dict[str, str] | None = None) -> str:
    """Name the hardware behind ``device`` in this process, for logs and run summaries.

    dask-cuda starts worker ``i`` with ``CUDA_VISIBLE_DEVICES`` rotated so that its
    own GPU comes first; ``cuda:0`` in that worker is then the GPU listed first.

    Parameters
    ----------
    device : torch.device
    env : dict, optional
        Environment to read ``CUDA_VISIBLE_DEVICES`` from (default ``os.environ``).

    Returns
    -------
    str
        ``"cpu"``, or ``"gpu:<index or UUID>"`` as the driver numbers it.
    """
    if device.type != "cuda":
        return "cpu"
    env = os.environ if env is None else env
    index = device.index or 0
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return f"gpu:{visible[index]}" if index < len(visible) else f"gpu:{index}"


class Predictor:
    """A model ready for batched inference.

    Parameters
    ----------
    model : torch.nn.Module
        The network; it is moved to ``device``, put in eval mode and (``fuse``)
        has its batch norms folded in place: do not train it afterwards.
    card : workers.checkpoint.ModelCard
        Its card (classes, input size, temperature).
    device : str or torch.device, optional
        See :func:`pick_device`.
    batch_size : int, default: 256
        Stamps per forward pass.
    channels_last : bool, default: True
        Use the ``channels_last`` memory format.
    fuse : bool, default: True
        Fold batch norms into the convolutions before them (same outputs to
        float32 rounding).
    ood : workers.ood.OODStats, optional
        The checkpoint's OOD statistics (:func:`workers.checkpoint.load_ood_stats`).
    """

    def __init__(self, model: nn.Module, card: ModelCard, *,
                 device: str | torch.device | None = None, batch_size: int = 256,
                 channels_last: bool = True, fuse: bool = True, ood: OODStats | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = pick_device(device)
        self.card = card
        self.batch_size = batch_size
        self.channels_last = bool(channels_last)
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.fused_pairs = fuse_conv_bn(model) if fuse else 0
        self.model = model.to(self.device, memory_format=self._memory_format).eval()
        self._autocast_dtype = autocast_dtype(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.ood = ood
        self._tap = threading.local()
        if ood is not None:
            layer, head = last_linear(self.model)
            if head.in_features != ood.dim:
                raise ValueError(f"{card.arch}: OOD statistics of {ood.dim} features, but the "
                                 f"last nn.Linear {layer!r} takes {head.in_features}")
            tap = self._tap

            def keep_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                sink = getattr(tap, "sink", None)
                if sink is not None:  # only the thread that asked for features
                    sink.append(args[0])

            head.register_forward_pre_hook(keep_input)

    @property
    def classes(self) -> list[str]:
        """Class names in column order of :meth:`predict_proba`."""
        return list(self.card.classes)

    def __repr__(self) -> str:
        return (f"Predictor(arch={self.card.arch!r}, sha256={self.card.sha256[:12]!r}, "
                f"device={str(self.device)!r}, batch_size={self.batch_size})")

    def _check(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        with warnings.catch_warnings():  # read-only numpy arrays: never written to
            warnings.simplefilter("ignore", UserWarning)
            t = torch.as_tensor(x)
        c, s = self.card.in_chans, self.card.image_size
        if t.ndim != 4 or t.shape[1] != c or tuple(t.shape[2:]) != (s, s):
            raise ValueError(f"{self.card.arch} ({self.card.sha256[:12]}) expects prepared stamps "
                             f"(N, {c}, {s}, {s}), got shape {tuple(t.shape)!r}; call "
                             f"pipeline.imaging.preprocess.prepare(..., image_size={s})")
        return t.to(torch.float32)

    def _forward(self, x: torch.Tensor | np.ndarray, *,
                 distances: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(N, K)`` and (``distances``) OOD distances ``(N,)``, on the CPU."""
        x = self._check(x)
        n = x.shape[0]
        distances = distances and self.ood is not None
        if n == 0:
            return (torch.zeros((0, self.card.num_classes), dtype=torch.float32),
                    torch.zeros(0) if distances else None)
        cuda = self.device.type == "cuda"
        if cuda and not x.is_cuda:
            x = x.contiguous().pin_memory()
        outs, dists = [], []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                xb = x[start:start + self.batch_size]
                xb = xb.to(self.device, non_blocking=cuda).contiguous(
                    memory_format=self._memory_format)
                sink: list[torch.Tensor] | None = [] if distances else None
                self._tap.sink = sink
                try:
                    if cuda:
                        with torch.autocast("cuda", dtype=self._autocast_dtype):
                            outs.append(self.model(xb).float())
                    else:
                        outs.append(self.model(xb))
                finally:
                    self._tap.sink = None
                if sink:
                    dists.append(self.ood.distance(sink[-1].flatten(1), outs[-1]))
            logits = torch.cat(outs)
            dist = torch.cat(dists).to("cpu") if distances else None
        return logits.to("cpu").float(), dist

    def predict_logits(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Return the raw logits ``(N, K)`` (float32, on the CPU) of prepared stamps ``x``."""
        return self._forward(x, distances=False)[0]

    def predict(self, x: torch.Tensor | np.ndarray) -> Prediction:
        """Probabilities and out-of-distribution scores of prepared stamps, in one forward pass.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray
            Prepared stamps ``(N, in_chans, image_size, image_size)``.

        Returns
        -------
        Prediction
            ``distance`` and ``ood_score`` are NaN when the model has no OOD statistics.
        """
        logits, dist = self._forward(x, distances=True)
        temperature = float(self.card.temperature)
        proba = torch.softmax(logits / temperature, dim=1).numpy()
        energy = (-temperature * torch.logsumexp(logits / temperature, dim=1)).numpy()
        if dist is None:
            nan = np.full(logits.shape[0], np.nan, np.float32)
            return Prediction(proba, energy.astype(np.float32), nan, nan.copy())
        d = dist.numpy().astype(np.float32)
        return Prediction(proba, energy.astype(np.float32), d, self.ood.quantile(d))

    def predict_proba(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Return class probabilities ``(N, K)``, float32, rows summing to 1.

        They are ``softmax(logits / card.temperature)``; columns follow :attr:`classes`.

        Parameters
        ----------
        x : torch.Tensor or numpy.ndarray
            Prepared stamps ``(N, in_chans, image_size, image_size)``.
        """
        logits = self.predict_logits(x)
        return torch.softmax(logits / float(self.card.temperature), dim=1).numpy()
