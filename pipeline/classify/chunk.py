"""What one classify task does inside a worker: whole store chunks in, one catalogue part out.

:func:`classify_chunk` reads its rows straight from the Zarr store, one chunk at a time
(:func:`pipeline.store.read_rows`, which reads plain and sharded chunk files itself),
prepares the stamps on the model's device (the GPU where the worker has one, so the
stretch costs the CPU nothing there), runs the worker's cached model in batches, and
hands the part to the process's writer thread (:func:`pipeline.catalogue.part_files.
write_part_soon`): the task never waits for the fsync, and the part still appears whole
or not at all.  It returns a small summary, never the pixels.

On a whole-exposure store (``attrs["item"] == "exposure"``, written by
:mod:`pipeline.ingest.whole_exposure`) each row is an exposure/CCD, and its blur score
is that exposure's PSF FWHM (measured on its stars at ingest) over the store's
median PSF FWHM; NaN, flagged ``FLAG_EMPTY``, where no PSF could be measured.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.catalogue import part_files
from pipeline.catalogue.layout import FLAG_EMPTY, FLAG_OOD, OOD_COUNT_KEY
from pipeline.imaging.stamp_stats import STAMP_STATS
from pipeline.ingest.sky_index import healpix_index
from pipeline.store import read_rows

__all__ = ["COORDS", "classify_chunk"]

#: The store's per-source columns a task copies into its part.
COORDS = ("source_id", "exposure", "ccd", "ra", "dec", "x", "y", "psf_fwhm", "flags")


def classify_chunk(store: str, start: int, stop: int, part: str, *, checkpoint: str,
                   sha256: str, batch_size: int, reference_fwhm: float | None,
                   healpix_order: int, row_group_size: int,
                   metadata: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Classify rows ``[start, stop)`` of ``store`` and hand catalogue part ``part`` to the writer.

    Runs inside a worker: reads its rows from the store itself, ``step`` at a time (one
    store chunk; default all of them at once), the next chunk in a helper thread while
    this one is scored (on a GPU worker the read would otherwise wait for the model, and
    the model for the read), so a part of several chunks holds the pixels of two chunks
    at most, and returns a small summary (part, rows, seconds), never the pixels.  The
    part is on disk, whole, once :func:`pipeline.catalogue.part_files.flush_parts` has
    returned in this process (``classify`` calls it on every worker before it counts the
    parts).
    """
    from workers.model_cache import get_predictor

    t0 = time.perf_counter()
    predictor = get_predictor(checkpoint, sha256=sha256, batch_size=batch_size)
    step = int(step or (stop - start))
    reads = [(lo, min(stop, lo + step)) for lo in range(start, stop, step)]
    if len(reads) == 1:
        pieces = [_score_rows(*_read(store, *reads[0]), predictor, healpix_order)]
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="skysieve-read") as pool:
            pending = pool.submit(_read, store, *reads[0])
            pieces = []
            for following in [*reads[1:], None]:
                rows, attrs = pending.result()
                if following is not None:
                    pending = pool.submit(_read, store, *following)
                pieces.append(_score_rows(rows, attrs, predictor, healpix_order))
    cols = {name: np.concatenate([piece[name] for piece in pieces]) for name in pieces[0]}
    card = predictor.card
    threshold = card.ood_threshold
    fwhm = cols.pop("fwhm")
    ref = reference_fwhm
    if ref is None:  # no PSF estimate in the store (e.g. imported images): the part's compact end
        finite = fwhm[np.isfinite(fwhm)]
        ref = float(np.percentile(finite, 10)) if finite.size else 1.0
    blur = (fwhm / np.float32(ref)).astype(np.float32)

    flags = cols["flags"].astype(np.int32) | np.where(np.isfinite(blur), 0, FLAG_EMPTY).astype(np.int32)
    ood_score = cols["ood_score"]
    outside = ood_score > threshold if threshold is not None else np.zeros(flags.shape, bool)
    flags |= np.where(outside, FLAG_OOD, 0).astype(np.int32)
    probs = cols["probs"]
    classes = list(card.classes)
    best = probs.argmax(axis=1)
    data: dict[str, Any] = {
        "source_id": pa.array(cols["source_id"].astype(np.int64)),
        "exposure": pa.array(_strings(cols["exposure"]), pa.string()),
        "ccd": pa.array(cols["ccd"].astype(np.int16)),
        "ra": pa.array(cols["ra"]), "dec": pa.array(cols["dec"]),
        "x": pa.array(cols["x"].astype(np.float64)), "y": pa.array(cols["y"].astype(np.float64)),
        "label": pa.array(np.asarray(classes, dtype=object)[best], pa.string()),
    }
    for k, name in enumerate(classes):
        data[f"p_{name}"] = pa.array(probs[:, k])
    data.update({
        "confidence": pa.array(probs.max(axis=1)),
        "blur_score": pa.array(blur),
        "psf_fwhm": pa.array(cols["psf_fwhm"].astype(np.float32)),
        "ood_score": pa.array(ood_score.astype(np.float32)),
        "ood_energy": pa.array(cols["ood_energy"].astype(np.float32)),
        "healpix": pa.array(cols["healpix"]),
        "flags": pa.array(flags),
    })
    if "label" in cols:
        data["true_label"] = pa.array(_strings(cols["label"]), pa.string())
    table = pa.table(data)
    flagged = int(outside.sum()) if threshold is not None else None
    part_files.write_part_soon(table, Path(part),
                               metadata={**metadata, "blur_reference_fwhm": ref,
                                         OOD_COUNT_KEY: flagged},
                               row_group_size=row_group_size)
    return {"part": Path(part).name, "rows": table.num_rows, "seconds": time.perf_counter() - t0}


def _read(store: str, start: int, stop: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Rows ``[start, stop)`` of everything a part needs, and the store's attrs."""
    return read_rows(store, start, stop, ("image", *COORDS, "label", "healpix", "psf_e1",
                                          "psf_e2", *STAMP_STATS))


def _score_rows(rows: dict[str, np.ndarray], attrs: dict[str, Any], predictor: Any,
                healpix_order: int) -> dict[str, np.ndarray]:
    """The part's columns for the rows of one read (:func:`_read`), and their ``fwhm``.

    ``probs`` (normalised), ``ood_score`` / ``ood_energy`` (NaN without OOD statistics),
    ``healpix`` (from ingest where it wrote this order), the store's :data:`COORDS` and
    ``label`` where present, and ``fwhm``: the apparent FWHM the blur score divides.
    """
    import torch

    from pipeline.imaging.blur_score import apparent_fwhm
    from pipeline.imaging.preprocess import prepare
    from pipeline.imaging.psf_shape import stored_psf_shape
    from pipeline.imaging.rescale import scale_for_model

    images = rows["image"]  # float32, or float16 in a half-precision store
    cols: dict[str, np.ndarray] = {name: rows[name] for name in COORDS}
    # Measured once when the chunk was written (pipeline.imaging.stamp_stats); older stores: here.
    stored = all(name in rows for name in STAMP_STATS)
    card = predictor.card
    shape = stored_psf_shape(rows, card)  # elongated PSFs made round (classify.round-psf)
    pixels, bg, noise = scale_for_model(
        images if not card.input_scale else images.astype(np.float32, copy=False),
        card.input_scale, cols["psf_fwhm"], rows["stamp_bg"] if stored else None,
        rows["stamp_noise"] if stored else None, psf_shape=shape)
    with torch.inference_mode():
        if predictor.device.type != "cpu":  # the stretch runs on the GPU, beside the model
            pixels = torch.as_tensor(pixels).to(predictor.device)
        x = prepare(pixels, stretch=card.stretch, image_size=card.image_size,
                    background=bg, noise=noise)
    pred = predictor.predict(x)  # one forward pass: probabilities and OOD scores
    probs = pred.proba.astype(np.float32)
    cols["probs"] = probs / probs.sum(axis=1, keepdims=True)
    if card.ood_threshold is None:  # no OOD statistics: both scores unknown
        cols["ood_score"] = np.full(probs.shape[0], np.nan, np.float32)
        cols["ood_energy"] = cols["ood_score"].copy()
    else:
        cols["ood_score"], cols["ood_energy"] = pred.ood_score, pred.energy

    if attrs.get("item") == "exposure":
        # Whole exposures: the blur score is the exposure's own PSF FWHM over the store's
        # median; NaN (FLAG_EMPTY) where no PSF was measured.  The stamp-centre moments
        # would measure the target.
        cols["fwhm"] = cols["psf_fwhm"].astype(np.float32)
    elif stored:
        cols["fwhm"] = rows["stamp_fwhm"].astype(np.float32)
    else:
        cols["fwhm"] = apparent_fwhm(images.astype(np.float32, copy=False))
    cols["ra"] = cols["ra"].astype(np.float64)
    cols["dec"] = cols["dec"].astype(np.float64)
    if "healpix" in rows and attrs.get("healpix_order") == healpix_order:
        cols["healpix"] = rows["healpix"].astype(np.int64)  # computed once at ingest
    else:  # older stores, or another order: 0.3 ms per 1,024 sources
        cols["healpix"] = healpix_index(cols["ra"], cols["dec"], healpix_order)
    if "label" in rows:
        cols["label"] = rows["label"]
    return cols


def _strings(values: np.ndarray) -> list[str]:
    """Store strings (object arrays, or numpy StringDType from Zarr) as Python strings."""
    return [str(v) for v in np.asarray(values, dtype=object)]
