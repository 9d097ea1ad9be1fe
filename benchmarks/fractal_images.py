"""A labelled image set with no astronomy in it, for the pretraining study (issue #14).

``python -m benchmarks.fractal_images --out DIR [--classes 32] [--per-class 300]`` writes
``DIR/images/<class>/<n>.png``, ``DIR/labels.csv`` (``path,label``) and ``DIR/systems.json``
(each class's maps), ready for
``skysieve import-images DIR DIR/labels.csv ...``.

The images follow formula-driven supervised learning (FractalDB: Kataoka et al. 2020,
"Pre-training without Natural Images", ACCV): each class is one iterated function system
(2-4 random affine maps, kept only when its attractor fills enough of the frame), and each
image of the class renders that system with its maps' weights jittered, a random rotation,
flip and colour, on a dark background with sensor-like noise.  Nothing is downloaded and
nothing is astronomical: the only thing the classes share with galaxies is that both are
shapes on a dark sky, which is what makes it a fair stand-in for the "large unrelated image
set" of the pretraining study (ImageNet there; it cannot be fetched offline).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["fractal_system", "main", "render", "write_set"]

_CHAINS = 512  # chaos-game chains advanced together
_STEPS = 70  # per chain; the first _BURN are dropped
_BURN = 20


def fractal_system(rng: np.random.Generator, *, min_fill: float = 0.15,
                   size: int = 64) -> np.ndarray:
    """Draw one class: the ``(n_maps, 6)`` parameters ``a b c d e f`` of an IFS.

    The maps are ``(x, y) -> (a x + b y + e, c x + d y + f)`` with parameters uniform in
    [-1, 1], redrawn until every map contracts and the attractor covers at least
    ``min_fill`` of its bounding box (FractalDB's filling-rate test).
    """
    while True:
        n = int(rng.integers(2, 5))
        maps = rng.uniform(-1.0, 1.0, (n, 6))
        if any(np.linalg.norm(m[:4].reshape(2, 2), 2) >= 0.95 for m in maps):
            continue  # not contracting: no attractor
        image = _density(maps, np.ones(n), rng, size)
        if np.count_nonzero(image) / image.size >= min_fill:
            return maps


def _density(maps: np.ndarray, weights: np.ndarray, rng: np.random.Generator,
             size: int) -> np.ndarray:
    """Points of the attractor binned into ``size`` x ``size``, scaled to its bounding box."""
    a = maps[:, :4].reshape(-1, 2, 2)
    t = maps[:, 4:]
    det = np.abs(np.linalg.det(a)) * weights + 1e-3
    p = det / det.sum()
    xy = rng.uniform(-1, 1, (_CHAINS, 2))
    pts = []
    for step in range(_STEPS):
        k = rng.choice(len(maps), size=_CHAINS, p=p)
        xy = np.einsum("nij,nj->ni", a[k], xy) + t[k]
        if step >= _BURN:
            pts.append(xy)
    pts = np.concatenate(pts)
    lo, hi = np.percentile(pts, [0.5, 99.5], axis=0)
    span = float(np.max(hi - lo)) or 1.0
    centre = (lo + hi) / 2
    uv = (pts - centre) / span * 0.85 * size + size / 2
    keep = np.all((uv >= 0) & (uv < size), axis=1)
    ij = uv[keep].astype(int)
    image = np.zeros((size, size))
    np.add.at(image, (ij[:, 1], ij[:, 0]), 1.0)
    return image


def render(maps: np.ndarray, rng: np.random.Generator, *, size: int = 64) -> np.ndarray:
    """One image of a class: ``(size, size, 3)`` uint8, the system with jittered weights.

    The maps' weights vary by a factor 0.5-1.5 each, the image is rotated by a multiple
    of 90 degrees and maybe flipped, coloured with random per-channel gains, put on a
    background of 8-20 counts and given Gaussian noise of 2-5 counts.
    """
    image = _density(maps, rng.uniform(0.5, 1.5, len(maps)), rng, size)
    image = np.log1p(image)
    image /= image.max() or 1.0
    image = np.rot90(image, int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    gains = rng.uniform(0.4, 1.0, 3)
    rgb = image[..., None] * gains * rng.uniform(150, 235)
    rgb += rng.uniform(8, 20) + rng.normal(0, rng.uniform(2, 5), rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def write_set(out: Path, *, classes: int = 32, per_class: int = 300, size: int = 64,
              seed: int = 0) -> int:
    """Write the image set and its ``labels.csv``; return the number of images.

    Parameters
    ----------
    out : Path
        Folder to create (``images/`` and ``labels.csv`` inside).
    classes, per_class : int
        Number of systems, and images of each.
    size : int
        Image side in pixels.
    seed : int
        Seed of the systems and of every image.
    """
    from PIL import Image

    if classes < 2 or per_class < 1 or size < 8:
        raise ValueError(f"fractal_images: need classes >= 2, per_class >= 1 and size >= 8, "
                         f"got {classes}, {per_class}, {size}")
    rng = np.random.default_rng(seed)
    systems = [fractal_system(rng, size=size) for _ in range(classes)]
    rows = []
    for c, maps in enumerate(systems):
        folder = out / "images" / f"fractal{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rel = f"images/fractal{c:02d}/{i:04d}.png"
            Image.fromarray(render(maps, rng, size=size)).save(out / rel)
            rows.append({"path": rel, "label": f"fractal{c:02d}"})
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "systems.json").write_text(json.dumps(
        {"seed": seed, "size": size, "per_class": per_class,
         "systems": {f"fractal{c:02d}": m.round(6).tolist() for c, m in enumerate(systems)}},
        indent=1), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line: write the set, print what was written."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.fractal_images",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", type=int, default=32)
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    n = write_set(args.out, classes=args.classes, per_class=args.per_class, size=args.size,
                  seed=args.seed)
    print(f"wrote {n} images of {args.classes} fractal classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
