"""``skysieve import-images``: a labelled folder of PNG/JPEG cutouts -> a cutout store.

The store follows the same contract as ``skysieve ingest`` (:mod:`pipeline.store`):
one band (the mean of the RGB channels, float32; ``bands = ["grey"]``), minus
the stamp's sky level (the median of its outer ring of pixels), with
``exposure`` = the CSV's ``frame`` (so training can split by frame), ``x``,
``y`` from the CSV (NaN if absent), ``ra``/``dec`` and the unmeasured
quantities NaN, ``label`` from the CSV, and ``source_id`` a stable 63-bit hash
of the image's relative path.  Images of another size are centre-cropped or
NaN-padded to ``stamp`` (padded ones get the edge flag).  Unreadable files,
paths outside the folder and MD5 mismatches become rejects rows.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from pipeline import config
from pipeline.errors import ImageFolderError, SourceTableError
from pipeline.ingest.detect import FLAG_EDGE
from pipeline.ingest.fits_io import file_sha256
from pipeline.ingest.scan import reject_row, validate_int
from pipeline.store import (
    building,
    check_unique_ids,
    create_store,
    path_source_id,
    prepare_output,
    write_chunk,
)

__all__ = ["ImportSummary", "import_images"]


@dataclass
class ImportSummary:
    """What an import did (``store`` is None when nothing usable was found)."""

    store: Path | None
    n_sources: int
    n_exposures: int
    rejects: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stamp: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    out: Path | None = None

    def describe(self) -> str:
        """A few human lines for the CLI."""
        if self.store is None:
            head = f"no images imported; nothing written to {self.out}"
        else:
            counts = ", ".join(f"{k} {v:,}" for k, v in sorted(self.classes.items()))
            head = (f"imported {self.n_sources:,} cutouts ({self.stamp}x{self.stamp} px) from "
                    f"{self.n_exposures} frame(s) into {self.store} in {self.seconds:.1f} s: "
                    f"{counts}")
        lines = [head, f"rejects: {len(self.rejects)}"]
        lines += [f"  {r['file']}: {r['reason']}" for r in self.rejects[:10]]
        if len(self.rejects) > 10:
            lines.append(f"  ... {len(self.rejects) - 10} more (see rejects.parquet)")
        return "\n".join(lines)


def _fit(image: np.ndarray, stamp: int) -> tuple[np.ndarray, bool]:
    """Centre-crop or NaN-pad ``image`` (ny, nx) to (stamp, stamp); True when padded."""
    out = np.full((stamp, stamp), np.nan, np.float32)
    ny, nx = image.shape
    # source and destination windows per axis, centred
    sy0, dy0 = max(0, (ny - stamp) // 2), max(0, (stamp - ny) // 2)
    sx0, dx0 = max(0, (nx - stamp) // 2), max(0, (stamp - nx) // 2)
    h, w = min(ny, stamp), min(nx, stamp)
    out[dy0:dy0 + h, dx0:dx0 + w] = image[sy0:sy0 + h, sx0:sx0 + w]
    return out, (ny < stamp or nx < stamp)


def _read_image(path: Path) -> np.ndarray:
    """Grey float32 (ny, nx): the mean of the RGB channels (alpha dropped)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("L", "I", "I;16", "F"):
            return np.asarray(img, dtype=np.float32)
        return np.asarray(img.convert("RGB"), dtype=np.float32).mean(axis=2)


def _ring_stats(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust rms (1.4826 MAD) of each stamp's outer 2-px ring."""
    ring = np.ones(stamps.shape[1:], bool)
    ring[2:-2, 2:-2] = False
    values = stamps[:, ring]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rings -> NaN
        sky = np.nanmedian(values, axis=1)
        rms = 1.4826 * np.nanmedian(np.abs(values - sky[:, None]), axis=1)
    return sky.astype(np.float32), rms.astype(np.float32)


def import_images(directory: str | Path, labels_csv: str | Path, out: str | Path, *,
                  overwrite: bool = False, stamp: int | None = None,
                  chunk_sources: int | None = None) -> ImportSummary:
    """Turn a labelled folder of PNG/JPEG cutouts into a cutout store.

    Parameters
    ----------
    directory : str or Path
        Folder the CSV's ``path`` column is relative to.
    labels_csv : str or Path
        CSV with ``path`` and ``label``; optional ``frame`` (-> ``exposure``),
        ``x``, ``y`` (position on the frame, px) and ``md5`` (checked).
    out : str or Path
        The store to write.
    overwrite : bool, default: False
        Replace an existing store.
    stamp : int, optional
        Stamp side; default the images' own size when all are equal and
        square, else config ``ingest.stamp``.
    chunk_sources : int, optional
        Cutouts per chunk (config ``ingest.chunk-sources``).

    Returns
    -------
    ImportSummary

    Raises
    ------
    ImageFolderError
        ``directory`` is not a directory, or a bad ``stamp`` or ``chunk_sources``.
    SourceTableError
        The CSV is unreadable or lacks ``path``/``label``.
    StoreError
        ``out`` exists and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    directory, labels_csv, out = Path(directory), Path(labels_csv), Path(out)
    if not directory.is_dir():
        raise ImageFolderError(f"{directory}: not a directory of images")
    chunk_sources = validate_int("chunk_sources",
                                 config.resolve("ingest.chunk-sources", chunk_sources), 1,
                                 1 << 20, error=ImageFolderError)
    if stamp is not None:
        stamp = validate_int("stamp", stamp, 4, 1024, error=ImageFolderError)
    try:
        table = pd.read_csv(labels_csv, dtype={"path": str, "label": str, "frame": str,
                                               "md5": str})
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad table
        raise SourceTableError(f"{labels_csv}: cannot read the labels CSV ({exc})") from exc
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise SourceTableError(f"{labels_csv}: missing columns {missing!r}; the labels CSV "
                               f"needs path,label[,frame,x,y,md5]; it has {list(table.columns)!r}")
    out = prepare_output(out, overwrite=overwrite)  # refuse before any work

    rejects: list[dict[str, Any]] = []
    images, keep, seen = [], [], set()
    root = directory.resolve()
    total_bytes = 0
    digest = hashlib.sha256()
    for i, row in enumerate(table.itertuples(index=False)):
        rel = str(row.path)
        path = (directory / rel).resolve()
        where = str(directory / rel)
        if not path.is_relative_to(root):
            rejects.append(reject_row(where, -1, f"row {i}: path {rel!r} is outside the "
                                      "image folder"))
            continue
        if rel in seen:
            rejects.append(reject_row(where, -1, f"row {i}: duplicate path"))
            continue
        label = row.label
        if not isinstance(label, str) or not label.strip():
            rejects.append(reject_row(where, -1, f"row {i}: empty label"))
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            rejects.append(reject_row(where, -1, f"row {i}: cannot read ({exc})"))
            continue
        md5 = getattr(row, "md5", None)
        if isinstance(md5, str) and md5.strip():
            got = hashlib.md5(data).hexdigest()
            if got != md5.strip():
                rejects.append(reject_row(where, -1, f"row {i}: MD5 mismatch (expected "
                                          f"{md5.strip()!r}, got {got!r})"))
                continue
        try:
            image = _read_image(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
            rejects.append(reject_row(where, -1, f"row {i}: not a readable image "
                                      f"({type(exc).__name__}: {exc})"))
            continue
        if image.ndim != 2 or min(image.shape) < 1:
            rejects.append(reject_row(where, -1, f"row {i}: image of shape {image.shape!r} "
                                      "is not 2-D"))
            continue
        seen.add(rel)
        total_bytes += len(data)
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
        images.append(image)
        keep.append(i)

    summary = ImportSummary(store=None, n_sources=0, n_exposures=0, rejects=rejects, out=out)
    if not images:
        summary.seconds = time.perf_counter() - t0
        return summary
    shapes = {im.shape for im in images}
    if stamp is None:
        only = next(iter(shapes))
        stamp = only[0] if len(shapes) == 1 and only[0] == only[1] else int(
            config.get("ingest.stamp"))
    fitted = [_fit(im, stamp) for im in images]
    stamps = np.stack([f[0] for f in fitted])
    padded = np.array([f[1] for f in fitted])
    sky, sky_rms = _ring_stats(stamps)
    stamps -= sky[:, None, None]

    rows = table.iloc[keep].reset_index(drop=True)
    rel = [str(PurePosixPath(Path(p).as_posix())) for p in rows["path"]]
    n = len(rows)
    exposure = (rows["frame"].fillna("").astype(str).to_numpy() if "frame" in rows.columns
                else np.array([PurePosixPath(r).stem for r in rel], dtype=object))
    nan32 = np.full(n, np.nan, np.float32)
    coords = pd.DataFrame({
        "source_id": path_source_id(rel), "exposure": exposure,
        "ccd": np.zeros(n, np.int16),
        "x": pd.to_numeric(rows["x"], errors="coerce").to_numpy(np.float64) if "x" in rows
        else np.full(n, np.nan),
        "y": pd.to_numeric(rows["y"], errors="coerce").to_numpy(np.float64) if "y" in rows
        else np.full(n, np.nan),
        "ra": np.full(n, np.nan), "dec": np.full(n, np.nan),
        "flux": nan32, "a": nan32, "b": nan32, "theta": nan32, "fwhm": nan32,
        "psf_fwhm": nan32, "sky": sky, "sky_rms": sky_rms, "snr": nan32,
        "flags": np.where(padded, FLAG_EDGE, 0).astype(np.int32),
        "label": rows["label"].astype(str).str.strip().to_numpy(),
        "_rel": rel,
    })
    check_unique_ids(coords["source_id"].to_numpy(), coords["_rel"].to_numpy(), where=str(out))
    order = coords.sort_values(["exposure", "_rel"], kind="stable").index.to_numpy()
    coords = coords.iloc[order].reset_index(drop=True)
    stamps = stamps[order]
    csv_sha, csv_bytes = file_sha256(labels_csv)
    inputs = [{"path": str(labels_csv.resolve()), "sha256": csv_sha, "bytes": csv_bytes},
              {"path": str(root), "sha256": digest.hexdigest(), "bytes": total_bytes,
               "files": n, "note": "sha256 over 'relpath NUL sha256(file)' lines in CSV order"}]
    with building(out, overwrite=overwrite) as tmp:
        create_store(tmp, coords, stamp=stamp, bands=["grey"], chunk_sources=chunk_sources,
                     pixel_scale=math.nan, inputs=inputs, rejects=rejects,
                     extra_attrs={"source": "import-images"})
        for start in range(0, n, chunk_sources):
            write_chunk(tmp, start, stamps[start:start + chunk_sources, None])
    summary.store = out
    summary.n_sources = n
    summary.n_exposures = int(pd.Series(exposure).nunique())
    summary.stamp = stamp
    summary.classes = coords["label"].value_counts().to_dict()
    summary.seconds = time.perf_counter() - t0
    return summary
