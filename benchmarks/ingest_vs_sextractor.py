"""Ingest near its limit: skysieve ingest vs sep alone, and vs SExtractor + Cutout2D + FITS files.

    python -m benchmarks ingest_vs_sextractor [--quick]

On the same synthetic FITS exposures (``benchmarks.ingest_cutouts.make_exposure``:
Gaussian stars and elongated galaxies on sky noise, TAN WCS) and the same cores (a
LocalCluster of one single-threaded worker per core), side by side in one run:

- **sep alone**: one task per exposure reads it and runs sep's background and extraction,
  the tutorial way (``sep.Background``, subtract, ``sep.extract``), nothing else: the limit;
- **skysieve ingest**: the whole ``ingest`` (detection, measurement, PSF, stamps, per-stamp
  statistics, the Zarr store), on the same cluster;
- **what survey teams do today**: one task per exposure runs SExtractor (Debian
  ``source-extractor``, a config written here, run with an argv list, never a shell), then
  an astropy ``Cutout2D`` loop over its catalogue and one FITS file per cutout.  Skipped,
  with the reason, where ``source-extractor`` is not installed.

The two catalogues are matched by position (within ``--match-px``, 1.5 px): the matched
fraction of each is reported.  Goals (issue #15): ingest / sep alone >= 0.8; skysieve >= 5x
the SExtractor way.  Writes ``benchmarks/results/ingest_vs_sextractor.json``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks._common import parse_args, report, scratch
from benchmarks.ingest_cutouts import make_exposure

__all__ = ["main", "match_fraction", "sep_alone", "sextractor_way", "sextractor_binary"]

_PARAMS = ("NUMBER", "X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLAGS")


def sextractor_binary() -> str | None:
    """The SExtractor executable on ``PATH`` (``source-extractor`` or ``sex``), else None."""
    return shutil.which("source-extractor") or shutil.which("sex")


def sep_alone(path: str) -> int:
    """sep's background and extraction on one exposure, as sep's tutorial does; the count."""
    import sep

    from pipeline.ingest.fits_io import read_ccd

    data = np.ascontiguousarray(read_ccd(path, 0, check_values=False).data, np.float32)
    sep.set_extract_pixstack(int(max(300_000, data.size // 4)))
    bkg = sep.Background(data, bw=64, bh=64, fw=3, fh=3)
    objects = sep.extract(data - bkg, 5.0, err=bkg.globalrms, minarea=9, deblend_cont=0.05)
    return len(objects)


def warm_worker(path: str, folder: str) -> int:
    """Measure and cut one CCD in this worker and discard it: imports and first calls
    (torch, sep, astropy), as ``sep_alone``'s warm-up pass does for sep; the count."""
    import os

    from pipeline import config
    from pipeline.ingest.exposures import _measure_ccd

    settings = {"threshold": float(config.get("ingest.detect-threshold")),
                "min_area": int(config.get("ingest.min-area")),
                "deblend_cont": float(config.get("ingest.deblend-cont"))}
    spill = Path(folder) / f"warm-{os.getpid()}.npy"
    result = _measure_ccd(path, "warm", 0, settings, None, 64, str(spill))
    spill.unlink(missing_ok=True)
    return len(result["table"])


def _write_config(folder: Path) -> Path:
    """SExtractor's config, parameter list and filter: the settings of skysieve's defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "skysieve.param").write_text("\n".join(_PARAMS) + "\n")
    (folder / "skysieve.conv").write_text("CONV NORM\n1 2 1\n2 4 2\n1 2 1\n")
    settings = {
        "CATALOG_TYPE": "ASCII_HEAD", "PARAMETERS_NAME": str(folder / "skysieve.param"),
        "DETECT_TYPE": "CCD", "DETECT_MINAREA": "9", "DETECT_THRESH": "5.0",
        "ANALYSIS_THRESH": "5.0", "FILTER": "Y", "FILTER_NAME": str(folder / "skysieve.conv"),
        "DEBLEND_NTHRESH": "32", "DEBLEND_MINCONT": "0.05", "CLEAN": "N",
        "BACK_SIZE": "64", "BACK_FILTERSIZE": "3", "BACKPHOTO_TYPE": "GLOBAL",
        "CHECKIMAGE_TYPE": "NONE", "VERBOSE_TYPE": "QUIET", "NTHREADS": "1",
        "MEMORY_PIXSTACK": "3000000", "MEMORY_OBJSTACK": "30000", "WRITE_XML": "N",
    }
    config = folder / "skysieve.sex"
    config.write_text("".join(f"{k:<18s} {v}\n" for k, v in settings.items()))
    return config


def sextractor_way(path: str, config: str, out_dir: str, stamp: int) -> dict:
    """SExtractor catalogue, a ``Cutout2D`` loop over it and one FITS file per cutout.

    Returns the 0-based positions (``x``, ``y``) and the number of files written.
    """
    from astropy.io import fits
    from astropy.nddata import Cutout2D

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalogue = out / "catalogue.txt"
    # argv list, no shell: paths with spaces or quotes are passed as they are
    subprocess.run([sextractor_binary() or "source-extractor", str(path), "-c", str(config),
                    "-CATALOG_NAME", str(catalogue)], check=True, capture_output=True)
    table = np.loadtxt(catalogue, comments="#", ndmin=2)
    x, y = table[:, 1] - 1.0, table[:, 2] - 1.0  # FITS 1-based -> 0-based
    with fits.open(path, memmap=True) as hdul:
        data = hdul[0].data
        for k in range(len(x)):
            pos = (int(np.floor(x[k] + 0.5)), int(np.floor(y[k] + 0.5)))
            cut = Cutout2D(data, pos, stamp, mode="partial", fill_value=np.nan, copy=True)
            fits.PrimaryHDU(cut.data.astype(np.float32)).writeto(out / f"cutout_{k:06d}.fits")
    return {"x": x, "y": y, "files": len(x) + 1}


def match_fraction(ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray,
                   radius: float) -> float:
    """Fraction of the ``a`` positions with a ``b`` position within ``radius`` px."""
    from scipy.spatial import cKDTree

    if len(ax) == 0:
        return float("nan")
    if len(bx) == 0:
        return 0.0
    dist, _ = cKDTree(np.column_stack([bx, by])).query(np.column_stack([ax, ay]), k=1)
    return float(np.mean(dist <= radius))


def _files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the result payload."""
    args = parse_args(__doc__, argv, quick_help="two small exposures", model=False,
                      options={"--stamp": {"type": int, "default": 64},
                               "--match-px": {"type": float, "default": 1.5},
                               "--exposures": {"type": int, "default": None}})
    from cluster import connect
    from pipeline.ingest.exposures import ingest
    from pipeline.store import read_rows

    size, n_src = (2048, 1000) if args.quick else (4096, 4000)
    n_exp = args.exposures or (2 if args.quick else 8)
    binary = sextractor_binary()
    with scratch("skysieve-bench-sex-") as work:
        paths = [work / "in" / f"exp_{i:04d}.fits" for i in range(n_exp)]
        paths[0].parent.mkdir()
        for i, path in enumerate(paths):
            make_exposure(path, size, n_src, seed=100 + i)
        with connect("local", n_workers=2, threads_per_worker=1) as client:
            cores = sum(client.nthreads().values())
            # warm-up: imports and page cache, in every worker
            client.gather(client.map(sep_alone, [str(p) for p in paths], pure=False))
            t0 = time.perf_counter()
            counts = client.gather(client.map(sep_alone, [str(p) for p in paths], pure=False))
            t_sep = time.perf_counter() - t0
            client.run(warm_worker, str(paths[0]), str(work))  # every worker, as sep's
            ingest(paths[:1], work / "warm.zarr")
            t0 = time.perf_counter()
            summary = ingest(paths, work / "night.zarr")
            t_ingest = time.perf_counter() - t0
            store_files = _files(work / "night.zarr")
            rows, _ = read_rows(work / "night.zarr", 0, summary.n_sources, ("exposure", "x", "y"))
            sex = None
            if binary:
                config = _write_config(work / "sex")
                t0 = time.perf_counter()
                futures = [client.submit(sextractor_way, str(p), str(config),
                                         str(work / "sex" / p.stem), args.stamp, pure=False)
                           for p in paths]
                sex = client.gather(futures)
                t_sex = time.perf_counter() - t0
        n_sep = int(sum(counts))
        rate_sep = n_sep / t_sep
        rate_ingest = summary.n_sources / t_ingest
        rows_out = [
            {"method": "sep alone: background + extraction", "sources": n_sep,
             "seconds": t_sep, "cutouts_per_s": rate_sep, "files_written": 0},
            {"method": "skysieve ingest (detect + measure + stamps + Zarr)",
             "sources": summary.n_sources, "seconds": t_ingest, "cutouts_per_s": rate_ingest,
             "files_written": store_files},
        ]
        payload = {"settings": {"quick": args.quick, "exposure_size": size,
                                "sources_injected": n_src, "exposures": n_exp,
                                "stamp": args.stamp, "cores": cores,
                                "cluster": "LocalCluster 2 workers x 1 thread",
                                "match_px": args.match_px,
                                "detection": "threshold 5 sigma, min area 9, deblend 0.05, "
                                             "64 px background mesh, 3x3 filter"},
                   "ratio_to_sep_alone": rate_ingest / rate_sep,
                   "ingest_phase_seconds": summary.phases,
                   "goal_sep": "ingest / sep alone >= 0.8"}
        if sex is None:
            payload["sextractor"] = {"status": "skipped", "reason": (
                "source-extractor (or sex) is not on PATH: install the Debian package "
                "`source-extractor` to run this row")}
        else:
            exposure = np.asarray(rows["exposure"], dtype=object).astype(str)
            ours_in_sex, sex_in_ours = [], []
            for path, res in zip(paths, sex):
                mine = exposure == path.stem
                sx, sy = rows["x"][mine], rows["y"][mine]
                ours_in_sex.append(match_fraction(sx, sy, res["x"], res["y"], args.match_px)
                                   * mine.sum())
                sex_in_ours.append(match_fraction(res["x"], res["y"], sx, sy, args.match_px)
                                   * len(res["x"]))
            n_sex = int(sum(len(r["x"]) for r in sex))
            rate_sex = n_sex / t_sex
            rows_out.append({"method": "SExtractor + Cutout2D loop + one FITS per cutout",
                             "sources": n_sex, "seconds": t_sex, "cutouts_per_s": rate_sex,
                             "files_written": int(sum(r["files"] for r in sex))})
            version = subprocess.run([binary, "--version"], capture_output=True, text=True)
            payload["sextractor"] = {
                "status": "measured", "binary": binary,
                "version": (version.stdout or version.stderr).strip().splitlines()[0],
                "speedup": rate_ingest / rate_sex, "goal": "skysieve >= 5x",
                "matched_fraction_of_skysieve": float(sum(ours_in_sex) / summary.n_sources),
                "matched_fraction_of_sextractor": float(sum(sex_in_ours) / max(1, n_sex))}
        payload["rows"] = rows_out
    line = f"ingest / sep alone = {payload['ratio_to_sep_alone']:.2f} (goal >= 0.8)"
    if payload["sextractor"]["status"] == "measured":
        s = payload["sextractor"]
        line += (f"; vs SExtractor way {s['speedup']:.1f}x (goal >= 5x), matched "
                 f"{s['matched_fraction_of_skysieve']:.3f} / {s['matched_fraction_of_sextractor']:.3f}")
    else:
        line += f"; SExtractor row skipped: {payload['sextractor']['reason']}"
    return report("ingest_vs_sextractor", payload, rows_out, line)


if __name__ == "__main__":
    main()
