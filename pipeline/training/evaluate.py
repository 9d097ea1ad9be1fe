"""Evaluate a checkpoint on a labelled cutout store: metrics, blur robustness, calibration, speed.

``evaluate`` runs a model exactly as ``skysieve classify`` does (``prepare``:
S/N units -> the card's stretch -> resize; :class:`workers.inference.Predictor`)
on the labelled sources of a store, and writes ``evaluation.json`` plus three
figures (``confusion.png``, ``blur_curve.png``, ``reliability.png``) to a folder.

Blur robustness: for each factor ``f`` of the sweep every stamp is convolved with
a Gaussian of FWHM ``f x psf_fwhm`` pixels (its own exposure's PSF FWHM from the
store) *before* normalisation, in ADU, and white noise is added back so that the
per-pixel noise is what it was (the blur shrinks white noise by
:func:`workers.blur.noise_std_factor`; the training augmentation restores it the
same way).  A factor of 0 leaves the stamps untouched.  Where the store has no PSF
estimate (``psf_fwhm`` NaN, e.g. from ``import-images``) the median
adaptive-moment FWHM (:func:`pipeline.imaging.blur_score.apparent_fwhm`) of the most
compact 10% of the store's labelled sources stands in, and the JSON says so.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import __version__, bundled
from pipeline.checks import positive_int
from pipeline.errors import EvaluationError, StoreError
from pipeline.files import to_jsonable, write_json
from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.imaging.preprocess import background_noise, prepare
from pipeline.imaging.psf_shape import wants_round
from pipeline.imaging.rescale import scale_for_model
from pipeline.training.data import load_labelled
from pipeline.training.machine import run_conditions
from pipeline.training.metrics import (classification_metrics, expected_calibration_error, nll,
                                       pairwise_balanced_accuracy, reliability_bins, roc_auc_ovr,
                                       softmax)
from pipeline.training.splits import WHOLE, split_validation
from workers.blur import fwhm_to_sigma, gaussian_blur, noise_std_factor
from workers.checkpoint import load_checkpoint
from workers.inference import Predictor, pick_device

__all__ = ["evaluate", "validate_blur_sweep", "SUBSETS", "JSON_NAME", "FIGURES"]

SUBSETS = ("auto", "val", "all")
JSON_NAME = "evaluation.json"
FIGURES = ("confusion.png", "blur_curve.png", "reliability.png")

_BLOCK = 4096  # stamps prepared and classified at a time (bounds the memory of the sweep)
_PSF_SAMPLE = 20_000  # labelled sources measured for the fallback PSF FWHM
_COMPACT_FRACTION = 0.10
_RELIABILITY_BINS = 15


# --------------------------------------------------------------------------- checks
def validate_blur_sweep(blur_sweep: Sequence[float] | str) -> list[float]:
    """Check a blur sweep and return it as a list of floats.

    Parameters
    ----------
    blur_sweep : sequence of float or str
        Added blur in units of the PSF FWHM, e.g. ``(0, 0.5, 1, 2, 4)`` or the text
        ``"0,0.5,1,2,4"``; each finite and >= 0, no repeats, at least one.

    Returns
    -------
    list of float
        In the order given.

    Raises
    ------
    pipeline.errors.EvaluationError
        A value that is not a finite number >= 0, a repeat, or an empty sweep.
    """
    if isinstance(blur_sweep, str):
        parts = [p.strip() for p in blur_sweep.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise EvaluationError(f"blur sweep {blur_sweep!r} is not a comma-separated list of "
                                  "numbers; e.g. '0,0.5,1,2,4'") from None
    else:
        try:
            values = list(blur_sweep)
        except TypeError:
            raise EvaluationError(f"blur sweep must be a list of numbers like [0, 0.5, 1, 2, 4], "
                                  f"got {blur_sweep!r}") from None
    if not values:
        raise EvaluationError("blur sweep is empty; give at least one factor, e.g. [0, 1, 2]")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (
                math.isfinite(float(v)) and float(v) >= 0):
            raise EvaluationError(f"blur sweep factors must be finite numbers >= 0 (added FWHM in "
                                  f"units of the PSF FWHM), got {v!r} in {values!r}")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise EvaluationError(f"blur sweep {out!r} repeats a factor; give each once")
    return out


def _check_args(subset: str, batch_size: int) -> None:
    if subset not in SUBSETS:
        raise EvaluationError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)}")
    positive_int("batch_size", batch_size, error=EvaluationError)


# --------------------------------------------------------------------------- data
def _select(data: dict[str, Any], card, subset: str, store: Path) -> tuple[np.ndarray, str, str]:
    """Indices of the sources to evaluate, the subset used and why."""
    training = card.training or {}
    same = (bool(training.get("data_sha256")) and training.get("data_sha256") == data["data_sha256"]
            and training.get("pixels_sha256", data["pixels_sha256"]) == data["pixels_sha256"])
    n = data["labels"].size
    if subset == "all" or (subset == "auto" and not same):
        if subset == "all":
            why = "all labelled sources (asked for)"
        elif training.get("data_sha256"):
            why = "all labelled sources (the store is not the model's training data)"
        else:
            why = "all labelled sources (the card records no training data)"
        return np.arange(n), "all", why
    if not same:
        raise StoreError(f"{store}: subset 'val' needs the store the model was trained on "
                         f"(its labels/ids sha256 {data['data_sha256'][:12]}… or pixels sha256 "
                         f"{data['pixels_sha256'][:12]}… differ from the card's "
                         f"{str(training.get('data_sha256'))[:12]}… / "
                         f"{str(training.get('pixels_sha256'))[:12]}…); use subset='all'")
    split = training.get("split") or {}
    if split.get("by", "exposure") in WHOLE:
        val_exp = [str(e) for e in split.get("val_exposures", [])]
        idx = np.flatnonzero(np.isin(data["exposures"], val_exp))
        why = (f"the model's validation exposures ({len(val_exp)}: "
               f"{', '.join(val_exp[:5])}{', …' if len(val_exp) > 5 else ''}), held out in training")
    else:  # by source: the split is deterministic for the card's seed and fraction
        _, idx, _ = split_validation(data["exposures"], data["labels"], by="source",
                                     val_fraction=float(split.get("val_fraction", 0.2)),
                                     seed=int(split.get("seed", training.get("seed", 0))))
        why = "the model's validation sources (split by source, recomputed from the card's seed)"
    if idx.size == 0:
        raise StoreError(f"{store}: the card's validation split selects no source of this store; "
                         "use subset='all'")
    return idx, "val", why


def _reference_psf(images: np.ndarray) -> float:
    """Median adaptive-moment FWHM (px) of the most compact 10% of (a sample of) the stamps."""
    step = max(1, images.shape[0] // _PSF_SAMPLE)
    fwhm = apparent_fwhm(images[::step])
    fwhm = fwhm[np.isfinite(fwhm) & (fwhm > 0)]
    if fwhm.size == 0:
        raise StoreError("no stamp has a measurable size (all weighted fluxes <= 0): cannot "
                         "estimate the PSF FWHM for the blur sweep; set 'psf_fwhm' in the store")
    compact = fwhm[fwhm <= np.percentile(fwhm, 100 * _COMPACT_FRACTION)]
    return float(np.median(compact))


# --------------------------------------------------------------------------- inference
def _logits(predictor: Predictor, images: np.ndarray, psf: np.ndarray, *,
            sigma: np.ndarray | None = None, gen: torch.Generator | None = None,
            psf_shape: np.ndarray | None = None) -> np.ndarray:
    """Logits of raw stamps, block by block, prepared as ``classify`` does (optionally blurred).

    ``psf`` is each stamp's PSF FWHM (px) as ingest would measure it, for a model that
    resamples to it (card ``input_scale``): blurred by ``sigma``, it widens in quadrature.
    """
    card = predictor.card
    if sigma is not None:
        psf = np.hypot(psf, 2.3548 * sigma)
    out = []
    for start in range(0, images.shape[0], _BLOCK):
        block = images[start:start + _BLOCK]
        if sigma is not None:
            block = _blur(block, sigma[start:start + _BLOCK], gen)
        with torch.inference_mode():
            block, bg, noise = scale_for_model(
                np.asarray(block), card.input_scale, psf[start:start + _BLOCK],
                psf_shape=None if psf_shape is None else psf_shape[start:start + _BLOCK])
            x = prepare(block, stretch=card.stretch, image_size=card.image_size,
                        background=bg, noise=noise)
        out.append(predictor.predict_logits(x).numpy())
    return (np.concatenate(out) if out
            else np.zeros((0, card.num_classes), np.float32)).astype(np.float64)


def _blur(images: np.ndarray, sigma: np.ndarray, gen: torch.Generator) -> torch.Tensor:
    """Blur stamps ``(N, C, y, x)`` in ADU by per-stamp ``sigma`` (px), restoring the noise level.

    The residual background is removed first and put back after, NaN pixels (off the
    exposure) count as background during the blur and stay NaN.
    """
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    s = torch.as_tensor(sigma, dtype=torch.float64)
    bg, noise = background_noise(x)
    off = torch.isnan(x)
    d = torch.nan_to_num(x - bg[..., None, None], nan=0.0)
    blurred = gaussian_blur(d, s)
    top_up = (1.0 - noise_std_factor(s) ** 2).clamp_min(0.0).sqrt().to(torch.float32)
    blurred += (top_up[:, None, None, None] * noise[..., None, None]
                * torch.randn(blurred.shape, generator=gen))
    blurred += bg[..., None, None]
    blurred[off] = float("nan")
    return blurred


def _speed(predictor: Predictor, sample: torch.Tensor, *, batch_size: int) -> dict[str, Any]:
    """Model throughput on prepared stamps, through the inference path (``predict_logits``)."""
    dev = predictor.device

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def timed(x: torch.Tensor) -> float:
        sync()
        t0 = time.perf_counter()
        predictor.predict_logits(x)
        sync()
        return time.perf_counter() - t0

    one = sample[:1].contiguous()
    reps = math.ceil(batch_size / sample.shape[0])
    batch = sample.repeat(reps, 1, 1, 1)[:batch_size].contiguous()
    saved = predictor.batch_size
    predictor.batch_size = batch_size
    try:
        with torch.inference_mode():
            for _ in range(5):
                timed(one)
            single = [timed(one) for _ in range(30)]
            timed(batch)
            batched = []
            budget = time.perf_counter() + 20.0
            while len(batched) < 3 or (len(batched) < 10 and time.perf_counter() < budget):
                batched.append(timed(batch))
    finally:
        predictor.batch_size = saved
    t1, tb = float(np.median(single)), float(np.median(batched))
    info: dict[str, Any] = {
        "device": str(dev),
        "device_name": (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "conditions": run_conditions(),
        "what": "model forward on prepared stamps via Predictor.predict_logits "
                "(channels_last; CUDA: autocast), torch.inference_mode",
        "batch1_ms_per_sample": round(1e3 * t1, 4),
        "batch1_runs": len(single),
        "batch_size": batch_size,
        "batched_cutouts_per_s": round(batch_size / tb, 1),
        "batched_runs": len(batched),
    }
    return info


def _prepare_rate(images: np.ndarray, card) -> float:
    """Stamps per second through ``prepare`` (median of 3), on the CPU."""
    block = images[: min(images.shape[0], 1024)]
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            prepare(block, stretch=card.stretch, image_size=card.image_size)
            times.append(time.perf_counter() - t0)
    return round(block.shape[0] / float(np.median(times)), 1)


# --------------------------------------------------------------------------- output
def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- main
def evaluate(model: str | Path, store: Path, *, out: Path,
             blur_sweep: Sequence[float] = (0, 0.5, 1, 2, 4), subset: str = "auto",
             batch_size: int = 256, device: str | None = None, speed: bool = True,
             progress: bool = False, seed: int = 0) -> dict[str, Any]:
    """Evaluate a model on the labelled sources of a cutout store; write JSON and figures.

    Parameters
    ----------
    model : str or Path
        A bundled model name (``"default"``) or a checkpoint ``.pt`` with its card
        (see :func:`pipeline.bundled.resolve`); its sha256 is checked.
    store : Path
        Cutout store with per-source ``label`` (``""`` = unknown, skipped) and ``exposure``;
        ``psf_fwhm`` (px) is used for the blur sweep where present.
    out : Path
        Folder to write ``evaluation.json``, ``confusion.png``, ``blur_curve.png`` and
        ``reliability.png`` into (created).
    blur_sweep : sequence of float, default: (0, 0.5, 1, 2, 4)
        Added Gaussian blur, FWHM in units of each source's PSF FWHM (see the module
        docstring); see :func:`validate_blur_sweep`.
    subset : {"auto", "val", "all"}, default: "auto"
        ``"val"``: the model's validation sources (the store must be the one it was trained
        on, by the labelled-data sha256 on its card); ``"all"``: every labelled source;
        ``"auto"``: ``"val"`` on the training store, else ``"all"``.
    batch_size : int, default: 256
        Stamps per forward pass, and the batch of the batched speed test.
    device : str, optional
        See :func:`workers.inference.pick_device`.
    speed : bool, default: True
        Measure ms/sample at batch 1 and cutouts/s at ``batch_size``.
    progress : bool, default: False
        Print a line per step to stderr.
    seed : int, default: 0
        Seed of the noise added back in the blur sweep.

    Returns
    -------
    dict
        What ``evaluation.json`` holds: ``model``, ``store``, ``subset``, ``n``, ``metrics``
        (accuracy, balanced accuracy, per-class precision/recall/F1, macro F1, confusion
        ``[true][predicted]``, ROC AUC, ECE and NLL raw and calibrated, reliability bins),
        ``temperature``, ``blur`` (``psf`` and the ``curve``, one entry per factor),
        ``speed`` (or None), ``versions``, ``files``.

    Raises
    ------
    pipeline.errors.StoreError
        Unreadable store, no labels, labels the model does not know, a band count that does
        not match the model, ``subset="val"`` on another store.
    workers.checkpoint.CheckpointError
        A checkpoint that cannot be loaded (sha256 mismatch, bad card...).
    pipeline.errors.EvaluationError
        Bad arguments (blur sweep, subset, batch size, device).
    """
    sweep = validate_blur_sweep(blur_sweep)
    _check_args(subset, batch_size)
    store, out = Path(store), Path(out)
    try:
        dev = pick_device(device)
    except ValueError as exc:  # an unknown device, or CUDA asked for and absent
        raise EvaluationError(str(exc)) from exc
    path = bundled.resolve(model)
    net, card = load_checkpoint(path)
    _say(progress, f"model {path} ({card.arch}, sha256 {card.sha256[:12]}…) on {dev}")

    data = load_labelled(store, exclude=card.training.get("excluded_classes", ()))
    unknown = sorted(set(data["labels"].tolist()) - set(card.classes))
    if unknown:
        raise StoreError(f"{store}: labels {unknown!r} are not classes of the model "
                         f"{card.classes!r}; evaluate on a store labelled with the model's "
                         "classes (or relabel those sources as '')")
    if data["images"].shape[1] != card.in_chans:
        raise StoreError(f"{store}: stamps have {data['images'].shape[1]} band(s) "
                         f"{data['bands']!r} but the model takes {card.in_chans} "
                         f"{card.bands!r}")
    idx, used, why = _select(data, card, subset, store)
    images = data["images"][idx]
    y = np.searchsorted(np.asarray(card.classes), data["labels"][idx]).astype(np.int64)
    psf = stamp_psf = data["psf_fwhm"][idx]  # stamp_psf: as the store has it (NaN: unknown)
    shape = (data["psf_shape"][idx] if data.get("psf_shape") is not None and wants_round(card)
             else None)
    _say(progress, f"evaluating on {idx.size} sources: {why}")

    predictor = Predictor(net, card, device=dev, batch_size=batch_size)
    logits = _logits(predictor, images, stamp_psf, psf_shape=shape)
    t = float(card.temperature)
    proba_raw, proba_cal = softmax(logits), softmax(logits, t)
    pred = logits.argmax(axis=1)
    metrics = classification_metrics(y, pred, list(card.classes))
    metrics.update({
        "pairwise": pairwise_balanced_accuracy(logits, y, list(card.classes)),
        "roc_auc": roc_auc_ovr(proba_cal, y, list(card.classes)),
        "ece": {"raw": expected_calibration_error(proba_raw, y, bins=_RELIABILITY_BINS),
                "calibrated": expected_calibration_error(proba_cal, y, bins=_RELIABILITY_BINS)},
        "nll": {"raw": nll(logits, y, 1.0), "calibrated": nll(logits, y, t)},
        "reliability": {"raw": reliability_bins(proba_raw, y, _RELIABILITY_BINS),
                        "calibrated": reliability_bins(proba_cal, y, _RELIABILITY_BINS)},
    })
    _say(progress, f"accuracy {metrics['accuracy']:.4f} balanced {metrics['balanced_accuracy']:.4f}"
                   f" ECE raw {metrics['ece']['raw']:.4f} calibrated "
                   f"{metrics['ece']['calibrated']:.4f}")

    # blur sweep
    missing = ~(np.isfinite(psf) & (psf > 0))
    psf_info: dict[str, Any] = {"source": "store", "n_from_store": int((~missing).sum()),
                                "n_estimated": int(missing.sum()), "estimated_fwhm_px": None}
    if missing.any():
        ref = _reference_psf(data["images"])
        psf = np.where(missing, ref, psf)
        psf_info.update({
            "source": "estimated" if missing.all() else "store+estimated",
            "estimated_fwhm_px": ref,
            "estimate": "median adaptive-moment FWHM (pipeline.imaging.blur_score.apparent_fwhm) of "
                        "the most compact 10% of the store's labelled sources, where the "
                        "store's psf_fwhm is NaN"})
    psf_info["median_fwhm_px"] = float(np.median(psf)) if psf.size else None
    curve = []
    for k, f in enumerate(sweep):
        if f == 0:
            lf = logits
        else:
            gen = torch.Generator().manual_seed(seed * 1000 + k)
            lf = _logits(predictor, images, stamp_psf, sigma=fwhm_to_sigma(f * psf), gen=gen,
                         psf_shape=shape)
        m = classification_metrics(y, lf.argmax(axis=1), list(card.classes))
        curve.append({"factor": f, "added_fwhm_px_median": float(f * np.median(psf)) if psf.size
                      else None, "accuracy": m["accuracy"],
                      "balanced_accuracy": m["balanced_accuracy"], "macro_f1": m["macro_f1"]})
        _say(progress, f"blur x{f:g} PSF FWHM: accuracy {m['accuracy']:.4f} balanced "
                       f"{m['balanced_accuracy']:.4f}")

    speed_info = None
    if speed and idx.size:
        with torch.inference_mode():
            sample = prepare(images[:256], stretch=card.stretch, image_size=card.image_size)
        speed_info = _speed(predictor, sample, batch_size=batch_size)
        speed_info["prepare_cutouts_per_s_cpu"] = _prepare_rate(images, card)
        _say(progress, f"speed: {speed_info['batch1_ms_per_sample']:.3f} ms/sample at batch 1, "
                       f"{speed_info['batched_cutouts_per_s']:.0f} cutouts/s at batch "
                       f"{batch_size}")

    name = str(model) if str(model) in bundled.names() else path.stem
    result = to_jsonable({
        "model": {"name": name, "path": str(path.resolve()), "sha256": card.sha256,
                  "arch": card.arch, "params": card.params, "classes": list(card.classes),
                  "in_chans": card.in_chans, "image_size": card.image_size,
                  "bands": list(card.bands), "stretch": dict(card.stretch)},
        "store": {"path": str(store.resolve()), "data_sha256": data["data_sha256"],
                  "n_labelled": int(data["labels"].size), "n_unlabelled": data["n_unlabelled"],
                  "bands": list(data["bands"]),
                  "is_training_store": data["data_sha256"] == card.training.get("data_sha256")},
        "subset": {"requested": subset, "used": used, "reason": why},
        "n": int(idx.size),
        "temperature": t,
        "metrics": metrics,
        "blur": {"sweep": sweep, "units": "added Gaussian FWHM / PSF FWHM", "psf": psf_info,
                 "seed": seed, "curve": curve},
        "speed": speed_info,
        "versions": {"skysieve": __version__, "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {"json": JSON_NAME, "figures": list(FIGURES)},
    })
    out.mkdir(parents=True, exist_ok=True)
    from pipeline.training import plots  # matplotlib only when writing

    plots.plot_confusion(result, out / "confusion.png")
    plots.plot_blur_curves([result], out / "blur_curve.png")
    plots.plot_reliability([result], out / "reliability.png")
    write_json(out / JSON_NAME, result)
    _say(progress, f"wrote {out / JSON_NAME} and {', '.join(FIGURES)}")
    return result
