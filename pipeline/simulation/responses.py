"""Detector responses and artefacts of the wide domain: CCD, photographic plate, 8-bit JPEG.

The wide domain (:mod:`pipeline.simulation.wide`) renders a noiseless model in
linear units (electrons for a CCD, "photons" for a plate) and turns it into the
pixels a real archive would hold:

* :func:`observe_ccd`: sky, Poisson and read noise, cosmic rays
  (:func:`add_cosmic_rays`), charge above the full well bleeding along columns
  (:func:`bleed_columns`), the gain and a flat-topped digital clip;
* :func:`observe_plate`: photon noise, a saturating characteristic curve
  (:func:`plate_density`), fog, correlated grain and the scanner's clip, so
  bright stars become large flat discs;
* :func:`jpeg_encode`: an asinh, log, power or linear stretch between a black and
  a white point (:func:`stretch_to_uint8`, 256 levels), then real JPEG
  compression with Pillow, decoded back to float.

Every function takes its random draws from the ``rng`` it is given and its
parameters from a plain dict, so an exposure is reproducible from its seed.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

__all__ = ["STRETCHES", "PLATE_CURVES", "sky_field", "add_cosmic_rays", "bleed_columns",
           "observe_ccd", "plate_density", "observe_plate", "stretch", "stretch_to_uint8",
           "jpeg_encode"]

#: The stretches of an 8-bit exposure (:func:`stretch`).
STRETCHES: tuple[str, ...] = ("asinh", "log", "power", "linear")
#: The characteristic curves of a photographic plate (:func:`plate_density`).
PLATE_CURVES: tuple[str, ...] = ("exp", "logistic")


def sky_field(rng: np.random.Generator, size: int, level: float, gradient: float,
              vignette: float = 0.0) -> np.ndarray:
    """Sky of mean ``level`` with a linear gradient (up to ``gradient``) and optional vignetting."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size) - np.float32(0.5)
    gx, gy = rng.uniform(-gradient, gradient, 2)
    sky = 1 + np.float32(gx) * xx + np.float32(gy) * yy
    if vignette:
        sky -= np.float32(vignette) * (xx * xx + yy * yy) * 2
    return np.float32(level) * sky


# --------------------------------------------------------------------------- CCD


def add_cosmic_rays(rng: np.random.Generator, image: np.ndarray, n: int) -> None:
    """Add ``n`` cosmic-ray hits (electrons) into ``image`` in place.

    About 60% are sharp hits of 1-3 pixels, the rest short straight streaks of
    3-20 pixels at a random angle; each pixel gets 200-20,000 e- (log-uniform).
    """
    ny, nx = image.shape
    for _ in range(n):
        x0, y0 = rng.uniform(0, nx), rng.uniform(0, ny)
        if rng.uniform() < 0.6:
            k = int(rng.integers(1, 4))
            xs = np.floor(x0 + rng.integers(-1, 2, k) * (np.arange(k) > 0)).astype(int)
            ys = np.floor(y0 + rng.integers(-1, 2, k) * (np.arange(k) > 0)).astype(int)
        else:
            length = float(rng.uniform(3, 20))
            phi = rng.uniform(0, math.pi)
            t = np.linspace(0, length, int(math.ceil(length)) + 1)
            xs = np.floor(x0 + t * math.cos(phi)).astype(int)
            ys = np.floor(y0 + t * math.sin(phi)).astype(int)
        energy = np.exp(rng.uniform(math.log(200), math.log(20000), xs.size))
        ok = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        np.add.at(image, (ys[ok], xs[ok]), energy[ok].astype(image.dtype))


def bleed_columns(electrons: np.ndarray, full_well: float) -> int:
    """Spill the charge above ``full_well`` up and down its column, in place; return the columns.

    Each run of over-full pixels in a column is clipped to the full well and its
    excess fills the pixels beyond both ends of the run (half each way) up to
    the full well: the bleed trails of saturated stars on a CCD. Charge that
    reaches the edge of the CCD is lost.
    """
    fw = np.float32(full_well)
    cols = np.nonzero((electrons > fw).any(axis=0))[0]
    for c in cols:
        col = electrons[:, c]
        over = col > fw
        edges = np.diff(np.concatenate(([0], over.view(np.int8), [0])))
        starts, stops = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
        for a, b in zip(starts, stops):
            excess = float((col[a:b] - fw).clip(0).sum())
            col[a:b] = np.minimum(col[a:b], fw)
            _fill(col[b:], 0.5 * excess, fw)
            _fill(col[:a][::-1], 0.5 * excess, fw)
        electrons[:, c] = col
    return int(cols.size)


def _fill(trail: np.ndarray, excess: float, fw: np.float32) -> None:
    """Fill ``trail`` (a view, from the run outwards) up to ``fw`` with ``excess`` charge."""
    if excess <= 0 or trail.size == 0:
        return
    room = np.maximum(fw - trail, 0).astype(np.float64)
    filled = np.cumsum(room)
    k = int(np.searchsorted(filled, excess))   # pixels filled to the brim
    trail[:k] = np.maximum(trail[:k], fw)
    if k < trail.size:
        trail[k] += np.float32(excess - (filled[k - 1] if k else 0.0))


def observe_ccd(rng: np.random.Generator, model: np.ndarray, p: dict[str, Any],
                ) -> np.ndarray:
    """A CCD readout of ``model`` (electrons): noise, cosmic rays, bleeding, gain, clip (ADU).

    ``p`` holds ``sky`` (e-/px), ``gain``, ``rdnoise``, ``full_well`` (e-),
    ``saturate`` (ADU), ``cosmics`` (hits) and ``skysub`` (the mean sky, ADU,
    subtracted after the clip when true).
    """
    size = model.shape[0]
    lam = model + sky_field(rng, size, p["sky"], 0.02)
    np.clip(lam, 0, None, out=lam)
    electrons = rng.poisson(lam).astype(np.float32)
    electrons += rng.normal(0.0, p["rdnoise"], lam.shape).astype(np.float32)
    add_cosmic_rays(rng, electrons, int(p["cosmics"]))
    bleed_columns(electrons, p["full_well"])
    adu = np.minimum(electrons / np.float32(p["gain"]), np.float32(p["saturate"]))
    if p["skysub"]:
        adu -= np.float32(p["sky"] / p["gain"])
    return adu.astype(np.float32)


# --------------------------------------------------------------------------- plate


def plate_density(x: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Photographic density of exposure ``x`` (linear units): fog plus a saturating curve.

    ``exp``: ``fog + dmax (1 - exp(-x / xsat))``; ``logistic`` (the H&D curve,
    toe and shoulder): ``fog + dmax / (1 + (x / xsat)^-gamma)``.
    """
    x = np.maximum(np.asarray(x, dtype=np.float32), np.float32(0))
    if p["curve"] == "exp":
        d = -np.expm1(-x / np.float32(p["xsat"]))
    else:
        with np.errstate(divide="ignore"):
            d = 1.0 / (1.0 + (x / np.float32(p["xsat"])) ** np.float32(-p["gamma"]))
    return (np.float32(p["fog"]) + np.float32(p["dmax"]) * d).astype(np.float32)


def observe_plate(rng: np.random.Generator, model: np.ndarray, p: dict[str, Any],
                  ) -> np.ndarray:
    """A scanned plate of ``model`` (linear units): photon noise, curve, grain, scanner clip.

    ``p`` holds ``sky``, the curve of :func:`plate_density`, ``grain`` (rms
    density of the grain at the top of the curve, correlated over ``grain_px``
    pixels), ``clip`` (the scanner's highest density) and ``unit`` (output
    units per density). Returns ``min(D, clip) * unit``.
    """
    from scipy.ndimage import gaussian_filter

    size = model.shape[0]
    x = model + sky_field(rng, size, p["sky"], 0.06, vignette=float(rng.uniform(0, 0.1)))
    np.clip(x, 0, None, out=x)
    x = rng.poisson(x).astype(np.float32)
    d = plate_density(x, p)
    grain = gaussian_filter(rng.normal(0.0, 1.0, d.shape).astype(np.float32), p["grain_px"])
    grain *= np.float32(p["grain"] / max(float(grain.std()), 1e-12))
    top = float(p["fog"] + p["dmax"])
    d += grain * np.sqrt(np.clip(d / np.float32(top), 0.05, 1.0))
    np.clip(d, 0, p["clip"], out=d)
    return (d * np.float32(p["unit"])).astype(np.float32)


# --------------------------------------------------------------------------- 8-bit JPEG


def stretch(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Map ``image`` to [0, 1]: ``black`` to 0, ``white`` to 1, through the ``stretch`` curve.

    ``asinh`` and ``log`` soften by ``soften`` (image units); ``power`` raises
    to ``gamma``; ``linear`` is the straight line. Values outside are clipped.
    """
    span = max(float(p["white"] - p["black"]), 1e-12)
    v = np.clip((image.astype(np.float64) - p["black"]) / span, 0.0, None)
    kind = p["stretch"]
    if kind == "asinh":
        q = span / max(float(p["soften"]), 1e-12)
        v = np.arcsinh(v * q) / math.asinh(q)
    elif kind == "log":
        q = span / max(float(p["soften"]), 1e-12)
        v = np.log1p(v * q) / math.log1p(q)
    elif kind == "power":
        v = v ** float(p["gamma"])
    elif kind != "linear":
        raise ValueError(f"unknown stretch {kind!r}; use one of {STRETCHES}")
    return np.clip(v, 0.0, 1.0)


def stretch_to_uint8(image: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """:func:`stretch`, then 256 levels: ``round(255 v)`` as uint8."""
    return np.rint(stretch(image, p) * 255.0).astype(np.uint8)


def jpeg_encode(levels: np.ndarray, quality: int) -> tuple[np.ndarray, int]:
    """JPEG-compress a uint8 image in memory with Pillow and decode it.

    Returns the decoded pixels as float32 (still 0-255 integers) and the size
    of the compressed stream in bytes.
    """
    from PIL import Image

    if levels.dtype != np.uint8:
        raise ValueError(f"jpeg_encode needs uint8 levels, not {levels.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="JPEG", quality=int(quality))
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        out = np.asarray(decoded.convert("L"), dtype=np.float32)
    return out, len(data)
