"""The synthetic sources: stars, galaxy morphologies, nebulae and star clusters, and their placement.

Each source is a dict ``{"class", "mag", "flux", "size", "extent", "profile"}``:
the class name, its magnitude and flux (ADU at the exposure's zero point), its
intrinsic half-light radius (arcsec; 0 for stars), the reach of its profile
(arcsec, for the stamp size) and its unit-flux GalSim profile (``None`` for a
star, which is the PSF alone). The sizes and magnitudes of the classes overlap
on purpose: neither gives the class away. :func:`place` spreads them over a CCD.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.simulation.instrument import PIXSCALE, gsparams

__all__ = ["GALAXY_TYPES", "BUILDERS", "SIZE_MEDIAN", "sample_sources", "draw_classes",
           "field_sources", "star_mag",
           "elliptical", "lenticular", "spiral", "irregular", "nebula_cluster", "place"]

#: The galaxy morphologies, each with a builder in :data:`BUILDERS`.
GALAXY_TYPES: tuple[str, ...] = ("elliptical", "lenticular", "spiral", "irregular")

# Share of each class among the injected sources (stars common, not overwhelming).
_CLASS_MIX = {"star": 0.30, "elliptical": 0.14, "lenticular": 0.14, "spiral": 0.14,
              "irregular": 0.14, "nebula_cluster": 0.14}
#: Median intrinsic half-light radius (arcsec) of each extended class; with the
#: clip range below, the ranges overlap on purpose (size alone gives the class
#: away for none of them).
SIZE_MEDIAN = {"elliptical": 1.05, "lenticular": 1.25, "spiral": 1.7, "irregular": 1.3,
               "nebula_cluster": 1.5}
_SIZE_SIGMA = 0.38          # log-normal width of the radius distribution
_SIZE_RANGE = (0.6, 3.6)    # arcsec; 2.3-13.7 px
_SERSIC_TRUNC = 6.0         # Sersic profiles truncated at this many half-light radii
_FIELD_STARS = 0.6          # share of stars among the field sources of a pointed exposure

_MIN_SEP = 20.0             # px between sources, except deliberate close pairs
_EDGE = 8.0                 # px: sources stay this far inside the edges...
_EDGE_FRACTION = 0.01       # ...except this share of deliberate edge cases
_PAIR_FRACTION = 0.04       # share of sources placed as a close pair with another


# --------------------------------------------------------------------------- samples


def sample_sources(rng: np.random.Generator, n: int, magzp: float) -> list[dict[str, Any]]:
    """Classes (stratified, shuffled), magnitudes, sizes and GalSim profiles of ``n`` sources.

    About 0.5% of the sources (at least one when there are stars) are saturated
    stars of r = 12-13.5.
    """
    classes = draw_classes(rng, n)
    n_stars = int(np.count_nonzero(classes == "star"))
    n_saturated = max(1, round(0.005 * n)) if n_stars else 0
    star_k = 0
    specs = []
    for name in classes:
        name = str(name)
        if name == "star":
            mag = float(rng.uniform(12.0, 13.5)) if star_k < n_saturated else star_mag(rng)
            star_k += 1
            specs.append(_star(mag, magzp))
        else:
            specs.append(_extended(rng, name, magzp))
    return specs


def draw_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Classes of ``n`` sources in the survey's mix: stratified (largest remainders), shuffled."""
    names = list(_CLASS_MIX)
    quota = np.array([_CLASS_MIX[c] for c in names]) * n
    counts = np.floor(quota).astype(int)
    rest = n - counts.sum()
    if rest:  # largest remainders, ties broken at random
        order = np.lexsort((rng.random(len(names)), -(quota - counts)))
        counts[order[:rest]] += 1
    classes = np.repeat(names, counts)
    rng.shuffle(classes)
    return classes


def field_sources(rng: np.random.Generator, n: int, magzp: float) -> list[dict[str, Any]]:
    """``n`` field stars and small background galaxies (no nebulae), as around a pointed target."""
    specs = []
    for _ in range(n):
        if rng.uniform() < _FIELD_STARS:
            specs.append(_star(star_mag(rng), magzp))
        else:
            specs.append(_extended(rng, str(rng.choice(GALAXY_TYPES)), magzp))
    return specs


def _star(mag: float, magzp: float) -> dict[str, Any]:
    """A star of magnitude ``mag``: the PSF alone."""
    return {"class": "star", "mag": mag, "size": 0.0, "extent": 0.0, "profile": None,
            "flux": 10 ** (-0.4 * (mag - magzp))}


def _extended(rng: np.random.Generator, name: str, magzp: float) -> dict[str, Any]:
    """A galaxy or nebula/cluster of class ``name``: its radius, magnitude and profile."""
    radius = _radius(rng, name)
    # Mean surface brightness within the half-light radius, mag/arcsec^2.
    mu = rng.uniform(19.8, 21.8) if rng.uniform() < 0.85 else rng.uniform(21.8, 23.0)
    mag = float(mu - 2.5 * math.log10(2 * math.pi * radius**2))
    profile, extent = BUILDERS[name](rng, radius)
    return {"class": name, "mag": mag, "size": radius, "extent": extent, "profile": profile,
            "flux": 10 ** (-0.4 * (mag - magzp))}


def _radius(rng: np.random.Generator, name: str) -> float:
    """Intrinsic half-light radius (arcsec): log-normal, resampled into ``_SIZE_RANGE``."""
    while True:
        radius = SIZE_MEDIAN[name] * math.exp(rng.normal(0.0, _SIZE_SIGMA))
        if _SIZE_RANGE[0] <= radius <= _SIZE_RANGE[1]:
            return float(radius)


def star_mag(rng: np.random.Generator) -> float:
    """A star magnitude: counts rising 0.3 dex per magnitude between r = 16 and 21.8."""
    lo, hi, slope = 16.0, 21.8, 0.3 * math.log(10)
    u = rng.uniform()
    return float(math.log(math.exp(slope * lo) + u * (math.exp(slope * hi)
                                                      - math.exp(slope * lo))) / slope)


# --------------------------------------------------------------------------- profiles


@dataclass
class _Part:
    """One component of a composite source, in units of the design radius."""

    kind: str        # "sersic", "gauss" or "point"
    frac: float      # share of the flux
    dx: float = 0.0
    dy: float = 0.0
    n: float = 1.0   # Sersic index
    r: float = 0.0   # half-light radius (sersic) or sigma (gauss)
    q: float = 1.0   # own axis ratio along x before the global shear
    angle: float = 0.0  # own rotation (radians) after its own shear


@functools.lru_cache(maxsize=16)
def _sersic_quantiles(n: float) -> tuple[np.ndarray, np.ndarray]:
    """Radius (in half-light radii) against enclosed-light fraction of a truncated Sersic."""
    from scipy.special import gammainc, gammaincinv

    b = gammaincinv(2 * n, 0.5)
    top = gammainc(2 * n, b * _SERSIC_TRUNC ** (1 / n))
    frac = np.linspace(0.0, top, 2049)
    return frac / top, (gammaincinv(2 * n, frac) / b) ** n


def _assemble(rng: np.random.Generator, parts: list[_Part], radius: float, q: float,
              ) -> tuple[Any, float]:
    """Build the GalSim profile of ``parts`` with centroid 0 and half-light radius ``radius``.

    The parts are recentred on their flux-weighted centroid (so the truth
    position is the centroid), scaled so the intrinsic circularised half-light
    radius is ``radius`` arcsec (estimated from 4,000 samples of the profile),
    inclined to axis ratio ``q`` and rotated at random. Returns the unit-flux
    profile and its extent (arcsec) for the stamp size.
    """
    import galsim

    fracs = np.array([p.frac for p in parts], dtype=float)
    fracs /= fracs.sum()
    cx = float(np.dot(fracs, [p.dx for p in parts]))
    cy = float(np.dot(fracs, [p.dy for p in parts]))
    counts = rng.multinomial(4000, fracs)
    radii = []
    for part, k in zip(parts, counts):
        if not k:
            continue
        if part.kind == "sersic":
            u_tab, r_tab = _sersic_quantiles(part.n)
            rr = part.r * np.interp(rng.uniform(0, 1, k), u_tab, r_tab)
            phi = rng.uniform(0, 2 * math.pi, k)
            px, py = rr * np.cos(phi), rr * np.sin(phi)
        elif part.kind == "gauss":
            px, py = rng.normal(0, part.r, (2, k))
        else:
            px, py = np.zeros(k), np.zeros(k)
        radii.append(np.hypot(px + part.dx - cx, py + part.dy - cy))
    hlr0 = float(np.median(np.concatenate(radii)))
    scale = radius / hlr0

    gsp = gsparams()
    objs = []
    extent = 0.0
    for part, frac in zip(parts, fracs):
        if part.kind == "sersic":
            if part.n == 1.0:
                obj = galsim.Exponential(half_light_radius=part.r, gsparams=gsp)
                reach = 4.0 * part.r
            else:
                obj = galsim.Sersic(n=part.n, half_light_radius=part.r,
                                    trunc=_SERSIC_TRUNC * part.r, gsparams=gsp)
                reach = 4.5 * part.r
        elif part.kind == "gauss":
            obj = galsim.Gaussian(sigma=part.r, gsparams=gsp)
            reach = 3.0 * part.r
        else:
            obj = galsim.DeltaFunction(gsparams=gsp)
            reach = 0.0
        if part.q != 1.0:
            obj = obj.shear(g1=(1 - part.q) / (1 + part.q), g2=0.0)
            reach /= math.sqrt(min(part.q, 1 / part.q))
        if part.angle:
            obj = obj.rotate(part.angle * galsim.radians)
        objs.append(obj.withFlux(float(frac)).shift(part.dx - cx, part.dy - cy))
        extent = max(extent, math.hypot(part.dx - cx, part.dy - cy) + reach)
    profile = objs[0] if len(objs) == 1 else galsim.Sum(objs, gsparams=gsp)
    profile = profile.dilate(scale)
    if q != 1.0:
        profile = profile.shear(g1=(1 - q) / (1 + q), g2=0.0)
    profile = profile.rotate(float(rng.uniform(0, 360)) * galsim.degrees)
    return profile, extent * scale / math.sqrt(q)


def elliptical(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """de Vaucouleurs-like spheroid (n = 3.5-4.5), round to moderately flattened.

    Like every builder: returns the unit-flux GalSim profile of half-light
    radius ``radius`` (arcsec) and its extent (arcsec).
    """
    n = float(rng.choice([3.5, 4.0, 4.5]))
    return _assemble(rng, [_Part("sersic", 1.0, n=n, r=1.0)], radius, q=rng.uniform(0.6, 1.0))


def lenticular(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """n = 4 bulge plus a smooth exponential disk seen inclined; no arms."""
    q_disk = float(rng.uniform(0.15, 0.5))
    q_bulge = float(rng.uniform(0.7, 0.95))
    bt = float(rng.uniform(0.25, 0.5))
    parts = [_Part("sersic", 1 - bt, n=1.0, r=1.0),
             _Part("sersic", bt, n=4.0, r=float(rng.uniform(0.2, 0.4)), q=q_bulge / q_disk)]
    return _assemble(rng, parts, radius, q=q_disk)


def spiral(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """Small bulge, exponential disk and logarithmic arms traced by chains of knots."""
    bt = float(rng.uniform(0.05, 0.2))
    disk = float(rng.uniform(0.3, 0.45))
    parts = [_Part("sersic", bt, n=4.0, r=float(rng.uniform(0.15, 0.3))),
             _Part("sersic", disk, n=1.0, r=1.0)]
    arms = 2 if rng.uniform() < 0.75 else 3
    pitch = math.radians(float(rng.uniform(14, 26)))
    r_in, r_out = float(rng.uniform(0.3, 0.45)), float(rng.uniform(1.7, 2.3))
    arm_flux = (1 - bt - disk) / arms
    phase0 = float(rng.uniform(0, 2 * math.pi))
    for a in range(arms):
        # A continuous arm of overlapping segments, plus a few bright HII regions.
        segs = int(rng.integers(10, 15))
        bright = int(rng.integers(2, 6))
        # Evenly spaced along the arm (arc length grows with r on a log spiral).
        t = np.concatenate([np.linspace(0, 1, segs), rng.uniform(0, 1, bright)])
        r = r_in + t * (r_out - r_in)
        theta = np.log(r / r_in) / math.tan(pitch)
        r = r * (1 + rng.normal(0, 0.03, t.size))
        phi = theta + phase0 + 2 * math.pi * a / arms
        w = np.concatenate([rng.lognormal(0.0, 0.25, segs), 2.5 * rng.lognormal(0.0, 0.4, bright)])
        w *= np.exp(-0.8 * t)
        w = w / w.sum() * arm_flux
        sig = np.concatenate([rng.uniform(0.1, 0.14, segs), rng.uniform(0.05, 0.09, bright)])
        elong = np.concatenate([np.full(segs, 0.35), np.ones(bright)])
        for rk, pk, wk, sk, qk in zip(r, phi, w, sig, elong):
            # Segments are stretched along the arm: pitch below the local circle.
            parts.append(_Part("gauss", float(wk), dx=float(rk * math.cos(pk)),
                               dy=float(rk * math.sin(pk)), r=float(sk), q=float(qk),
                               angle=float(pk + math.pi / 2 - pitch)))
    return _assemble(rng, parts, radius, q=rng.uniform(0.55, 1.0))


def irregular(rng: np.random.Generator, radius: float) -> tuple[Any, float]:
    """Clumpy and lopsided: a faint offset disk plus several bright offset clumps."""
    base = float(rng.uniform(0.2, 0.45))
    parts = [_Part("sersic", base, n=1.0, r=1.0, q=float(rng.uniform(0.4, 1.0)),
                   dx=float(rng.normal(0, 0.25)), dy=float(rng.normal(0, 0.25)))]
    k = int(rng.integers(3, 9))
    shift = rng.normal(0, 0.35, 2)                      # the clumps are lopsided
    w = rng.lognormal(0.0, 0.6, k)
    w = w / w.sum() * (1 - base)
    for i in range(k):
        dx, dy = rng.normal(0, 0.8, 2) + shift
        parts.append(_Part("gauss", float(w[i]), dx=float(dx), dy=float(dy),
                           r=float(rng.uniform(0.12, 0.4))))
    return _assemble(rng, parts, radius, q=rng.uniform(0.5, 1.0))


def nebula_cluster(rng: np.random.Generator, radius: float, *, form: str | None = None,
                   ) -> tuple[Any, float]:
    """A resolved star cluster (many points + unresolved glow) or a nebula with a few stars.

    ``form`` ("star_cluster" or "nebula") fixes the kind; ``None`` draws it (60% clusters).
    """
    parts = []
    cluster = rng.uniform() < 0.6 if form is None else form == "star_cluster"
    if cluster:  # star cluster: a sprinkle of point sources
        glow = float(rng.uniform(0.15, 0.35))
        parts.append(_Part("gauss", glow, r=float(rng.uniform(0.6, 1.0))))
        k = int(rng.integers(20, 50))
        w = rng.pareto(2.0, k) + 1
        w = w / w.sum() * (1 - glow)
        # Plummer-like: a core and an extended halo of members.
        pos = rng.normal(0, 1.0, (k, 2)) / np.sqrt(rng.uniform(0.3, 1.0, (k, 1)))
    else:  # emission nebula: a smooth, lumpy cloud with a few embedded stars
        diffuse = float(rng.uniform(0.7, 0.85))
        blobs = int(rng.integers(4, 9))
        wb = rng.lognormal(0, 0.4, blobs)
        wb = wb / wb.sum() * diffuse
        for i in range(blobs):
            dx, dy = rng.normal(0, 0.6, 2)
            parts.append(_Part("gauss", float(wb[i]), dx=float(dx), dy=float(dy),
                               r=float(rng.uniform(0.6, 1.2)), q=float(rng.uniform(0.3, 1.0))))
        k = int(rng.integers(4, 13))
        w = rng.pareto(2.0, k) + 1
        w = w / w.sum() * (1 - diffuse)
        pos = rng.normal(0, 0.8, (k, 2))
    for i in range(k):
        parts.append(_Part("point", float(w[i]), dx=float(pos[i, 0]), dy=float(pos[i, 1])))
    profile, extent = _assemble(rng, parts, radius, q=rng.uniform(0.6, 1.0))
    return profile, max(extent, 3.0 * radius)


#: The profile builder of each extended class: ``builder(rng, radius) -> (profile, extent)``.
BUILDERS: dict[str, Callable[..., tuple[Any, float]]] = {
    "elliptical": elliptical, "lenticular": lenticular, "spiral": spiral,
    "irregular": irregular, "nebula_cluster": nebula_cluster}


# --------------------------------------------------------------------------- placement


def place(rng: np.random.Generator, specs: list[dict[str, Any]], size: int, *,
          scale: float = PIXSCALE, min_sep: float = _MIN_SEP) -> np.ndarray:
    """Positions (x, y), 0-based, of the sources on a ``size`` CCD, shape (n, 2).

    Sources keep ``max(min_sep, 1.5 (r1 + r2) + 6)`` px apart (``r`` the
    half-light radius in px at ``scale`` arcsec/px; ``min_sep`` 20 px by
    default) and 8 px inside the edges, except a small share of deliberate
    close pairs (6-18 px from a partner) and of edge cases (within 8 px of an
    edge). In a crowded field the rule is relaxed rather than a source dropped.
    """
    n = len(specs)
    rad = np.array([s["size"] for s in specs]) / scale
    xy = np.full((n, 2), np.nan)
    roles = rng.uniform(size=n)
    n_pairs = int(round(_PAIR_FRACTION * n))
    pair_of: dict[int, int] = {}
    if n >= 4 and n_pairs:
        members = rng.permutation(n)[:2 * n_pairs]
        pair_of = {int(b): int(a) for a, b in zip(members[0::2], members[1::2])}
    order = np.argsort(-rad, kind="stable")
    placed: list[int] = []
    lo, hi = _EDGE, size - 1 - _EDGE
    for i in order:
        i = int(i)
        if i in pair_of and not np.isnan(xy[pair_of[i], 0]):
            continue  # placed next to its partner below
        for attempt in range(40):
            if roles[i] < _EDGE_FRACTION:  # an edge case: somewhere in the outer 8 px
                cand = rng.uniform(0, size - 1, (32, 2))
                side = rng.integers(0, 4, 32)
                band = rng.uniform(0, _EDGE, 32)
                cand[side == 0, 0] = band[side == 0]
                cand[side == 1, 0] = size - 1 - band[side == 1]
                cand[side == 2, 1] = band[side == 2]
                cand[side == 3, 1] = size - 1 - band[side == 3]
            else:
                cand = rng.uniform(lo, hi, (32, 2))
            ok = _free(cand, xy, rad, placed, rad[i], slack=max(0.0, 1 - attempt / 30),
                       min_sep=min_sep)
            if ok.any():
                xy[i] = cand[int(np.argmax(ok))]
                break
        else:
            xy[i] = cand[0]  # crowded: accept the overlap rather than drop the source
        placed.append(i)
        for j in [j for j, a in pair_of.items() if a == i]:
            xy[j] = _partner(rng, xy[i], rad[i], rad[j], size)
            placed.append(j)
    # Partners whose anchor came later were skipped above; place them now.
    for j, a in pair_of.items():
        if np.isnan(xy[j, 0]):
            xy[j] = _partner(rng, xy[a], rad[a], rad[j], size)
    return xy


def _free(cand: np.ndarray, xy: np.ndarray, rad: np.ndarray, placed: list[int], r: float,
          *, slack: float, min_sep: float = _MIN_SEP) -> np.ndarray:
    """Which candidate positions keep the separation rule (relaxed by ``slack`` < 1)."""
    if not placed:
        return np.ones(len(cand), dtype=bool)
    idx = np.asarray(placed)
    d = np.hypot(cand[:, None, 0] - xy[idx, 0], cand[:, None, 1] - xy[idx, 1])
    need = np.maximum(min_sep, slack * (1.5 * (rad[idx] + r) + 6))
    return (d >= need).all(axis=1)


def _partner(rng: np.random.Generator, anchor: np.ndarray, r1: float, r2: float,
             size: int) -> np.ndarray:
    """A close-pair position 6-18 px (more for big galaxies) from ``anchor``."""
    dist = float(rng.uniform(6.0, 18.0)) + 0.5 * (r1 + r2)
    for _ in range(20):
        phi = rng.uniform(0, 2 * math.pi)
        pos = anchor + dist * np.array([math.cos(phi), math.sin(phi)])
        if (pos >= _EDGE).all() and (pos <= size - 1 - _EDGE).all():
            return pos
    return np.clip(pos, 0, size - 1)
