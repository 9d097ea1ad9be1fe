"""What one classify task does inside a worker: one store chunk in, one catalogue part out.

:func:`classify_chunk` reads its chunk straight from the Zarr store
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
                   metadata: dict[str, Any]) -> dict[str, Any]:
    """Classify rows ``[start, stop)`` of ``store`` and hand catalogue part ``part`` to the writer.

    Runs inside a worker: reads its chunk from the store itself and returns a
    small summary (part, rows, seconds), never the pixels.  The part is on disk,
    whole, once :func:`pipeline.catalogue.part_files.flush_parts` has returned in
    this process (``classify`` calls it on every worker before it counts the parts).
    """
    import torch

    from pipeline.imaging.blur_score import apparent_fwhm
    from pipeline.imaging.preprocess import prepare
    from pipeline.imaging.rescale import scale_for_model
    from workers.model_cache import get_predictor

    t0 = time.perf_counter()
    rows, attrs = read_rows(store, start, stop,
                            ("image", *COORDS, "label", "healpix", *STAMP_STATS))
    images = rows["image"]  # float32, or float16 in a half-precision store
    cols = {name: rows[name] for name in COORDS}
    # Measured once when the chunk was written (pipeline.imaging.stamp_stats); older stores: here.
    stored = all(name in rows for name in STAMP_STATS)

    predictor = get_predictor(checkpoint, sha256=sha256, batch_size=batch_size)
    card = predictor.card
    pixels, bg, noise = scale_for_model(
        images if not card.input_scale else images.astype(np.float32, copy=False),
        card.input_scale, cols["psf_fwhm"], rows["stamp_bg"] if stored else None,
        rows["stamp_noise"] if stored else None)
    with torch.inference_mode():
        if predictor.device.type != "cpu":  # the stretch runs on the GPU, beside the model
            pixels = torch.as_tensor(pixels).to(predictor.device)
        x = prepare(pixels, stretch=card.stretch, image_size=card.image_size,
                    background=bg, noise=noise)
    pred = predictor.predict(x)  # one forward pass: probabilities and OOD scores
    probs = pred.proba.astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    threshold = card.ood_threshold
    if threshold is None:  # no OOD statistics: both scores unknown
        ood_score = np.full(probs.shape[0], np.nan, np.float32)
        ood_energy = ood_score.copy()
    else:
        ood_score, ood_energy = pred.ood_score, pred.energy

    if attrs.get("item") == "exposure":
        # Whole exposures: the blur score is the exposure's own PSF FWHM over the store's
        # median; NaN (FLAG_EMPTY) where no PSF was measured.  The stamp-centre moments
        # would measure the target.
        fwhm = cols["psf_fwhm"].astype(np.float32)
    elif stored:
        fwhm = rows["stamp_fwhm"].astype(np.float32)
    else:
        fwhm = apparent_fwhm(images.astype(np.float32, copy=False))
    ref = reference_fwhm
    if ref is None:  # no PSF estimate in the store (e.g. imported images): the chunk's compact end
        finite = fwhm[np.isfinite(fwhm)]
        ref = float(np.percentile(finite, 10)) if finite.size else 1.0
    blur = (fwhm / np.float32(ref)).astype(np.float32)

    flags = cols["flags"].astype(np.int32) | np.where(np.isfinite(blur), 0, FLAG_EMPTY).astype(np.int32)
    outside = ood_score > threshold if threshold is not None else np.zeros(flags.shape, bool)
    flags |= np.where(outside, FLAG_OOD, 0).astype(np.int32)
    ra = cols["ra"].astype(np.float64)
    dec = cols["dec"].astype(np.float64)
    if "healpix" in rows and attrs.get("healpix_order") == healpix_order:
        healpix = rows["healpix"].astype(np.int64)  # computed once at ingest
    else:  # older stores, or another order: 0.3 ms per 1,024 sources
        healpix = healpix_index(ra, dec, healpix_order)
    classes = list(card.classes)
    best = probs.argmax(axis=1)
    data: dict[str, Any] = {
        "source_id": pa.array(cols["source_id"].astype(np.int64)),
        "exposure": pa.array(_strings(cols["exposure"]), pa.string()),
        "ccd": pa.array(cols["ccd"].astype(np.int16)),
        "ra": pa.array(ra), "dec": pa.array(dec),
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
        "ood_energy": pa.array(ood_energy.astype(np.float32)),
        "healpix": pa.array(healpix),
        "flags": pa.array(flags),
    })
    if "label" in rows:
        data["true_label"] = pa.array(_strings(rows["label"]), pa.string())
    table = pa.table(data)
    flagged = int(outside.sum()) if threshold is not None else None
    part_files.write_part_soon(table, Path(part),
                               metadata={**metadata, "blur_reference_fwhm": ref,
                                         OOD_COUNT_KEY: flagged},
                               row_group_size=row_group_size)
    return {"part": Path(part).name, "rows": table.num_rows, "seconds": time.perf_counter() - t0}


def _strings(values: np.ndarray) -> list[str]:
    """Store strings (object arrays, or numpy StringDType from Zarr) as Python strings."""
    return [str(v) for v in np.asarray(values, dtype=object)]
