"""``skysieve import-images``: a labelled folder of PNG/JPEG cutouts -> a cutout store.

The store follows the same contract as ``skysieve ingest`` (:mod:`pipeline.store`):

- bands: colour images keep their channels as bands, greyscale ones (one
  channel, or RGB with equal channels) give one band; ``bands`` chooses names
  and channels (:mod:`pipeline.ingest.image_files`: default ``["R", "G", "B"]``
  or ``["grey"]``; a folder mixing colour and greyscale needs ``bands``);
- pixels: float32, each band minus its sky level (the median of the stamp's
  outer 2-px ring); images of another size are centre-cropped or NaN-padded to
  ``stamp`` (padded ones get the edge flag);
- coordinates: ``exposure`` = the CSV's ``frame`` (so training can split by
  frame; without one, each image's file stem), ``x``, ``y`` from the CSV (NaN
  if absent), ``sky``, ``sky_rms`` the ring median and robust rms (the mean
  over bands), ``radius`` the half-light radius of the central source
  (:mod:`pipeline.imaging.radius`), ``psf_fwhm`` the frame's PSF FWHM: the low
  mode of the apparent FWHM (:func:`pipeline.imaging.blur_score.apparent_fwhm`)
  of the frame's unpadded stamps (:func:`pipeline.ingest.detect.compact_mode`;
  without a ``frame`` column, one value from all the folder's images; NaN with
  fewer than 5), ``psf_e1``/``psf_e2`` the frame's PSF ellipticity, the median of its
  stamps no wider than 1.5 ``psf_fwhm`` (:mod:`pipeline.imaging.psf_shape`; with a
  ``frame`` column only, NaN with fewer than 5), ``label`` from the CSV, ``source_id`` a stable 63-bit hash of
  the image's relative path; ``ra``/``dec`` and the other measurements NaN.

Images of a folder scaled per object (Galaxy Zoo cutouts) have no common
pixel scale: their ``psf_fwhm`` is the folder's compact end, not a seeing.

The images are read twice, never all held at once: a first pass checks every
row (readable, MD5, inside the folder) and notes its shape and colour; after the
store is created, each chunk's images are read again, measured and written.
Chunks hold ``ingest.chunk-bytes`` of ``image`` unless ``chunk_sources`` (or
``ingest.chunk-sources``) says how many images.  Unreadable files, paths
outside the folder and MD5 mismatches become rejects rows.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline import config
from pipeline.errors import ImageFolderError, SourceTableError
from pipeline.imaging.blur_score import apparent_fwhm
from pipeline.imaging.radius import half_light_radius
from pipeline.imaging.psf_shape import psf_ellipticity
from pipeline.ingest.detect import FLAG_EDGE, compact_mode
from pipeline.ingest.fits_io import file_sha256
from pipeline.ingest.image_files import (
    auto_band_plan,
    band_plan,
    fit_stamp,
    is_colour,
    read_planes,
    select_bands,
)
from pipeline.ingest.scan import reject_row, validate_int
from pipeline.store import (
    building,
    check_unique_ids,
    create_store,
    path_source_id,
    prepare_output,
    sources_per_chunk,
    write_chunk,
    write_coords,
)

__all__ = ["ImportSummary", "import_images"]

_MIN_PSF_STAMPS = 5  # stamps a frame needs for its psf_fwhm


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
    bands: list[str] = field(default_factory=list)
    n_chunks: int = 0
    hint: str = ""

    def describe(self) -> str:
        """A few human lines for the CLI."""
        if self.store is None:
            head = f"no images imported; nothing written to {self.out}"
        else:
            counts = ", ".join(f"{k} {v:,}" for k, v in sorted(self.classes.items()))
            head = (f"imported {self.n_sources:,} cutouts ({self.stamp}x{self.stamp} px, bands "
                    f"{','.join(self.bands)}) from {self.n_exposures} frame(s) into "
                    f"{self.store} ({self.n_chunks} chunk(s)) in {self.seconds:.1f} s: {counts}")
        lines = [head, f"rejects: {len(self.rejects)}"]
        lines += [f"  {r['file']}: {r['reason']}" for r in self.rejects[:10]]
        if len(self.rejects) > 10:
            lines.append(f"  ... {len(self.rejects) - 10} more (see rejects.parquet)")
        if self.hint:
            lines.append(self.hint)
        return "\n".join(lines)


def _ring_stats(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust rms (1.4826 MAD) of the outer 2-px ring of each stamp and band."""
    ring = np.ones(stamps.shape[-2:], bool)
    ring[2:-2, 2:-2] = False
    values = stamps[..., ring]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rings -> NaN
        sky = np.nanmedian(values, axis=-1)
        rms = 1.4826 * np.nanmedian(np.abs(values - sky[..., None]), axis=-1)
    return sky.astype(np.float32), rms.astype(np.float32)


def _read_table(labels_csv: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(labels_csv, dtype={"path": str, "label": str, "frame": str,
                                               "md5": str})
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad table
        raise SourceTableError(f"{labels_csv}: cannot read the labels CSV ({exc})") from exc
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise SourceTableError(f"{labels_csv}: missing columns {missing!r}; the labels CSV "
                               f"needs path,label[,frame,x,y,md5]; it has {list(table.columns)!r}")
    return table


def _check_rows(table: pd.DataFrame, directory: Path, rejects: list[dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """First pass: every row's file, read and checked; what the second pass needs, no pixels."""
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    root = directory.resolve()
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
            planes = read_planes(path)
        except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
            rejects.append(reject_row(where, -1, f"row {i}: not a readable image "
                                      f"({type(exc).__name__}: {exc})"))
            continue
        if planes.ndim != 3 or min(planes.shape[1:]) < 1:
            rejects.append(reject_row(where, -1, f"row {i}: image of shape {planes.shape!r} "
                                      "is not 2-D"))
            continue
        seen.add(rel)
        entries.append({"row": i, "rel": rel, "path": path, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "shape": planes.shape[1:], "colour": is_colour(planes)})
    return entries


def _missing_hint(table: pd.DataFrame, directory: Path, labels_csv: Path) -> str:
    """When no path was found under ``directory``: the folder they are relative to, if any."""
    for base in (labels_csv.resolve().parent, directory.resolve().parent):
        if base == directory.resolve():
            continue
        sample = [str(p) for p in table["path"].head(20)]
        if sample and all((base / p).is_file() for p in sample):
            return (f"hint: the CSV's paths are relative to {base}, not {directory}; "
                    f"pass {base} as DIRECTORY")
    return ""


def _load_chunk(entries: Sequence[dict[str, Any]], plan: Sequence[tuple[str, str]],
                stamp: int, resize: int | None = None) -> np.ndarray:
    """Second pass: one chunk's images as stamps ``(n, band, stamp, stamp)`` float32."""
    out = np.empty((len(entries), len(plan), stamp, stamp), np.float32)
    for k, entry in enumerate(entries):
        data = entry["path"].read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ImageFolderError(f"{entry['path']}: changed while being imported; run the "
                                   "import again")
        planes = select_bands(read_planes(entry["path"]), plan)
        if resize is not None:
            planes = downscale(planes, resize)
        out[k] = fit_stamp(planes, stamp)[0]
    return out


def downscale(planes: np.ndarray, side: int) -> np.ndarray:
    """Resample ``planes`` (C, ny, nx) to (C, side, side), antialiased (the area each pixel covers).

    For image sets already cut to each source's size (Galaxy Zoo scales its
    cutouts to the galaxy): the whole galaxy, downscaled, as the CNN-comparison
    study planned, instead of its centre cropped.
    """
    import torch
    import torch.nn.functional as F

    if planes.shape[-2:] == (side, side):
        return planes
    x = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                         antialias=True)[0].numpy()


def _frame_psf(exposure: np.ndarray, fwhm: np.ndarray, padded: np.ndarray, by_frame: bool
               ) -> np.ndarray:
    """``psf_fwhm`` per source: the compact mode of its frame's (or the folder's) stamp FWHMs."""
    usable = np.where(padded, np.nan, fwhm)
    if not by_frame:
        return np.full(len(fwhm), compact_mode(usable, min_count=_MIN_PSF_STAMPS), np.float32)
    psf = np.full(len(fwhm), np.nan, np.float32)
    for _, idx in pd.Series(np.arange(len(fwhm))).groupby(exposure, sort=False):
        psf[idx.to_numpy()] = compact_mode(usable[idx.to_numpy()], min_count=_MIN_PSF_STAMPS)
    return psf


def _frame_shapes(store: Path, frames: np.ndarray, compact: np.ndarray,
                  noise: np.ndarray) -> np.ndarray:
    """``(n, 2)`` PSF ellipticity per source, each frame's from its compact stamps, read back
    from the store being built one frame at a time (sky already subtracted)."""
    import zarr

    image = zarr.open_array(str(store / "image"), mode="r")
    out = np.full((len(frames), 2), np.nan, np.float32)
    for _, idx in pd.Series(np.arange(len(frames))).groupby(frames, sort=False):
        rows = idx.to_numpy()
        use = rows[compact[rows]]
        if use.size >= _MIN_PSF_STAMPS:
            stamps = np.asarray(image.get_orthogonal_selection((use, 0)), np.float32)
            out[rows] = psf_ellipticity(stamps, np.zeros(use.size, np.float32), noise[use],
                                        min_count=_MIN_PSF_STAMPS)
    return out


def import_images(directory: str | Path, labels_csv: str | Path, out: str | Path, *,
                  overwrite: bool = False, stamp: int | None = None,
                  chunk_sources: int | None = None, bands: str | Sequence[str] | None = None,
                  chunk_bytes: int | str | None = None, resize: int | None = None
                  ) -> ImportSummary:
    """Turn a labelled folder of PNG/JPEG cutouts into a cutout store (module docstring).

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
        Images per chunk; default config ``ingest.chunk-sources`` when set,
        else as many as fit in ``chunk_bytes``.
    bands : str or sequence of str, optional
        The store's bands (``"grey"``, ``"i,r,g"``, ``"g:B,r:G,i:R"``; see
        :func:`pipeline.ingest.image_files.band_plan`); default from the images.
    chunk_bytes : int or str, optional
        Bytes of ``image`` per chunk (config ``ingest.chunk-bytes``).
    resize : int, optional
        Downscale every whole image to ``resize`` x ``resize`` px (antialiased,
        :func:`downscale`) before it is fitted to the stamp, which defaults to
        ``resize``; without it, images are centre-cropped or padded.

    Returns
    -------
    ImportSummary

    Raises
    ------
    ImageFolderError
        ``directory`` is not a directory, a bad ``stamp``, ``chunk_sources`` or
        ``bands``, or colour and greyscale images mixed without ``bands``.
    SourceTableError
        The CSV is unreadable or lacks ``path``/``label``.
    StoreError
        ``out`` exists and ``overwrite`` is False.
    """
    t0 = time.perf_counter()
    directory, labels_csv, out = Path(directory), Path(labels_csv), Path(out)
    if not directory.is_dir():
        raise ImageFolderError(f"{directory}: not a directory of images")
    if chunk_sources is not None:
        chunk_sources = validate_int("chunk_sources", chunk_sources, 1, 1 << 20,
                                     error=ImageFolderError)
    if stamp is not None:
        stamp = validate_int("stamp", stamp, 4, 1024, error=ImageFolderError)
    if resize is not None:
        resize = validate_int("resize", resize, 4, 1024, error=ImageFolderError)
    plan = band_plan(bands)
    table = _read_table(labels_csv)
    out = prepare_output(out, overwrite=overwrite)  # refuse before any work

    rejects: list[dict[str, Any]] = []
    entries = _check_rows(table, directory, rejects)
    summary = ImportSummary(store=None, n_sources=0, n_exposures=0, rejects=rejects, out=out)
    if not entries:
        summary.hint = _missing_hint(table, directory, labels_csv)
        summary.seconds = time.perf_counter() - t0
        return summary
    if plan is None:
        plan = auto_band_plan([e["colour"] for e in entries], [e["rel"] for e in entries],
                              str(directory))
    band_names = [name for name, _ in plan]
    if resize is not None:
        for e in entries:
            e["shape"] = (resize, resize)
    shapes = {e["shape"] for e in entries}
    if stamp is None:
        only = next(iter(shapes))
        stamp = only[0] if len(shapes) == 1 and only[0] == only[1] else int(
            config.get("ingest.stamp"))
    chunk = sources_per_chunk(stamp, len(plan), chunk_sources=chunk_sources,
                              chunk_bytes=chunk_bytes, error=ImageFolderError)

    rows = table.iloc[[e["row"] for e in entries]].reset_index(drop=True)
    rel = [str(PurePosixPath(Path(e["rel"]).as_posix())) for e in entries]
    n = len(rows)
    by_frame = "frame" in rows.columns
    exposure = (rows["frame"].fillna("").astype(str).to_numpy() if by_frame
                else np.array([PurePosixPath(r).stem for r in rel], dtype=object))
    padded = np.array([e["shape"][0] < stamp or e["shape"][1] < stamp for e in entries])
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
        "psf_fwhm": nan32, "sky": nan32, "sky_rms": nan32, "snr": nan32, "radius": nan32,
        "psf_e1": nan32, "psf_e2": nan32,
        "flags": np.where(padded, FLAG_EDGE, 0).astype(np.int32),
        "label": rows["label"].astype(str).str.strip().to_numpy(),
        "_rel": rel,
    })
    check_unique_ids(coords["source_id"].to_numpy(), coords["_rel"].to_numpy(), where=str(out))
    order = coords.sort_values(["exposure", "_rel"], kind="stable").index.to_numpy()
    coords = coords.iloc[order].reset_index(drop=True)
    entries = [entries[k] for k in order]
    padded = padded[order]
    digest = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e["row"]):  # CSV order, as before
        digest.update(f"{e['rel']}\0{e['sha256']}\n".encode())
    csv_sha, csv_bytes = file_sha256(labels_csv)
    inputs = [{"path": str(labels_csv.resolve()), "sha256": csv_sha, "bytes": csv_bytes},
              {"path": str(directory.resolve()), "sha256": digest.hexdigest(),
               "bytes": sum(e["bytes"] for e in entries), "files": n,
               "note": "sha256 over 'relpath NUL sha256(file)' lines in CSV order"}]
    measured = {name: np.full(n, np.nan, np.float32)
                for name in ("sky", "sky_rms", "radius", "stamp_fwhm")}
    noise = np.full(n, np.nan, np.float32)
    with building(out, overwrite=overwrite) as tmp:
        create_store(tmp, coords, stamp=stamp, bands=band_names, chunk_sources=chunk,
                     pixel_scale=math.nan, inputs=inputs, rejects=rejects,
                     extra_attrs={"source": "import-images", "resize": resize,
                                  "band_channels": {name: ch for name, ch in plan}})
        for start in range(0, n, chunk):
            stamps = _load_chunk(entries[start:start + chunk], plan, stamp, resize)
            sky, rms = _ring_stats(stamps)
            stamps -= sky[:, :, None, None]
            part = slice(start, start + len(stamps))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rings
                measured["sky"][part] = np.nanmean(sky, axis=1)
                measured["sky_rms"][part] = np.nanmean(rms, axis=1)
            measured["radius"][part] = half_light_radius(stamps)
            measured["stamp_fwhm"][part] = apparent_fwhm(stamps)
            noise[part] = rms[:, 0]
            write_chunk(tmp, start, stamps)
        frames, fwhm = coords["exposure"].to_numpy(), measured.pop("stamp_fwhm")
        psf = _frame_psf(frames, fwhm, padded, by_frame)
        psf_e = np.full((n, 2), np.nan, np.float32)
        if by_frame:  # a folder of unrelated images has no one PSF
            psf_e = _frame_shapes(tmp, frames, ~padded & (fwhm <= 1.5 * psf), noise)
        write_coords(tmp, {**measured, "psf_fwhm": psf, "psf_e1": psf_e[:, 0],
                           "psf_e2": psf_e[:, 1]})
    summary.store = out
    summary.n_sources = n
    summary.n_exposures = int(pd.Series(exposure).nunique())
    summary.stamp = stamp
    summary.bands = band_names
    summary.n_chunks = -(-n // chunk)
    summary.classes = coords["label"].value_counts().to_dict()
    summary.seconds = time.perf_counter() - t0
    return summary
