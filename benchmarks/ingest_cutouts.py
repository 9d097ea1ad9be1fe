"""Ingest cutouts/s: skysieve's vectorised stamps vs an astropy ``Cutout2D`` loop.

    python benchmarks/ingest_cutouts.py [--quick]
    python -m benchmarks.ingest_cutouts [--quick]

On FITS exposures generated here (Gaussian point sources and elongated
galaxies, sky, noise, TAN WCS), side by side in one run:

- ``cut_stamps`` (one padded gather per CCD) over the detected positions;
- a ``Cutout2D(mode="partial", fill_value=nan)`` loop over the same positions;
- the whole ``ingest`` (sep detection, measurement, Zarr write; threaded scheduler).

Medians over repeats.  Writes ``benchmarks/results/ingest_cutouts.json`` and prints
a Markdown table.  Not a test: nothing passes or fails on a time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

try:
    from benchmarks._common import median_time, parse_args, report, scratch
except ModuleNotFoundError:  # run as a script: put the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks._common import median_time, parse_args, report, scratch


def make_exposure(path: Path, size: int, n: int, seed: int) -> None:
    """Write a ``size``² float32 FITS exposure with ``n`` sources and a TAN WCS."""
    from astropy.io import fits
    from astropy.wcs import WCS

    rng = np.random.default_rng(seed)
    image = rng.normal(500.0, 8.0, (size, size)).astype(np.float32)
    r = 10
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    for _ in range(n):
        x, y = rng.uniform(5, size - 5, 2)
        ix, iy = int(x), int(y)
        dx, dy = xx - (x - ix), yy - (y - iy)
        s = rng.uniform(1.2, 3.0)
        q = rng.uniform(0.4, 1.0)
        prof = np.exp(-(dx**2 + (dy / q) ** 2) / (2 * s * s))
        prof *= rng.uniform(2e3, 5e4) / prof.sum()
        y0, y1, x0, x1 = max(iy - r, 0), min(iy + r + 1, size), max(ix - r, 0), min(ix + r + 1, size)
        image[y0:y1, x0:x1] += prof[y0 - (iy - r):y1 - (iy - r), x0 - (ix - r):x1 - (ix - r)]
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + seed * 0.1, 2.0]
    wcs.wcs.crpix = [size / 2, size / 2]
    wcs.wcs.cd = np.diag([-0.25, 0.25]) / 3600
    header = wcs.to_header()
    header["FILTER"] = "r"
    fits.PrimaryHDU(image, header=header).writeto(path, overwrite=True)


def cutout2d_loop(data: np.ndarray, x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """The baseline: one ``Cutout2D`` per source, copied into an (N, size, size) array."""
    from astropy.nddata import Cutout2D

    out = np.empty((len(x), size, size), np.float32)
    for k in range(len(x)):
        pos = (int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5)))
        out[k] = Cutout2D(data, pos, size, mode="partial", fill_value=np.nan, copy=False).data
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the result payload."""
    args = parse_args(__doc__, argv, quick_help="one small exposure, few repeats", model=False,
                      options={"--stamp": {"type": int, "default": 64}})

    from pipeline.imaging.cutouts import cut_stamps
    from pipeline.ingest.detect import detect
    from pipeline.ingest.fits_io import read_ccd
    from pipeline.ingest.exposures import ingest

    size, n_src, n_exp, repeats = (1024, 600, 1, 3) if args.quick else (4096, 4000, 2, 5)
    stamp = args.stamp
    with scratch("skysieve-bench-") as work:
        paths = []
        for i in range(n_exp):
            path = work / f"exp_{i:04d}.fits"
            make_exposure(path, size, n_src, seed=i)
            paths.append(path)
        ccd = read_ccd(paths[0], 0)
        table, _ = detect(ccd.data)
        x, y = table["x"].to_numpy(), table["y"].to_numpy()
        n = len(x)

        fast, _ = cut_stamps(ccd.data, x, y, stamp)
        slow = cutout2d_loop(ccd.data, x, y, stamp)
        assert np.array_equal(fast, slow, equal_nan=True), "vectorised stamps differ from Cutout2D"

        t_fast = median_time(lambda: cut_stamps(ccd.data, x, y, stamp), repeats=repeats)
        t_slow = median_time(lambda: cutout2d_loop(ccd.data, x, y, stamp), repeats=repeats)
        counts = []

        def whole() -> None:
            summary = ingest(paths, work / "bench.zarr", stamp=stamp, overwrite=True)
            counts.append(summary.n_sources)

        t_whole = median_time(whole, repeats=max(1, repeats // 2))
        n_whole = counts[-1]

    rows = [
        {"method": "skysieve cut_stamps (vectorised)", "sources": n, "seconds": t_fast,
         "cutouts/s": n / t_fast},
        {"method": "astropy Cutout2D loop", "sources": n, "seconds": t_slow,
         "cutouts/s": n / t_slow},
        {"method": "whole skysieve ingest (detect + measure + Zarr)", "sources": n_whole,
         "seconds": t_whole, "cutouts/s": n_whole / t_whole},
    ]
    speedup = t_slow / t_fast
    payload = {
        "settings": {"quick": args.quick, "exposure_size": size, "sources_injected": n_src,
                     "exposures": n_exp, "stamp": stamp, "repeats": repeats,
                     "scheduler": "dask threads (no client)"},
        "results": rows,
        "cutting_speedup": speedup,
        "goal": ">= 10x for the cutting",
    }
    return report("ingest_cutouts", payload, rows,
                  f"cutting speedup vs Cutout2D: {speedup:.1f}x (goal >= 10x)")


if __name__ == "__main__":
    main()
