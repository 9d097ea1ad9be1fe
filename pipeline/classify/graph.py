"""The classification graph: one Dask task per cutout-store chunk -> one catalogue part.

Each task reads its own chunk straight from the Zarr store, preprocesses it,
scores blur, runs the worker's cached model in batches and writes one Parquet
part atomically; it returns only a small summary. Pixels never pass through the
client or the scheduler, the model is loaded once per worker process (keyed by
its sha256; on a distributed cluster preloaded by a
:class:`workers.model_cache.ModelPlugin` before the first task), and a rerun
skips the parts that are already whole.

On a whole-exposure store (``attrs["item"] == "exposure"``, written by
:mod:`pipeline.ingest.whole_exposure`) each row is an exposure/CCD, and its blur score
is that exposure's PSF FWHM (measured on its stars at ingest) over the store's
median PSF FWHM; NaN, flagged ``FLAG_EMPTY``, where no PSF could be measured.

The same forward pass scores how far each source lies from the model's training data
(:meth:`workers.inference.Predictor.predict`): ``ood_score`` (the Mahalanobis distance of
its features ranked against the validation stamps, 1.0 = beyond all of them) and
``ood_energy``; both NaN for a model without OOD statistics.  ``FLAG_OOD`` marks
``ood_score`` above the card's threshold, and the run summary gives the fraction of the
night so flagged (``ood_fraction``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from pipeline import __version__, bundled, config
from pipeline.catalogue import part_files
from pipeline.catalogue.layout import (FLAG_EMPTY, FLAG_OOD, OOD_COUNT_KEY, PART_GLOB,
                                       REJECTS_FILE, RUN_FILE, SUMMARY_FILE, healpix_order_doc,
                                       part_path)
from pipeline.classify import run_lock
from pipeline.files import write_json
from pipeline.imaging.stamp_stats import STAMP_STATS
from pipeline.store import read_rows
from workers.checkpoint import ModelCard, load_card, load_checkpoint

__all__ = ["classify", "RunSummary", "classify_chunk"]

_COORDS = ("source_id", "exposure", "ccd", "ra", "dec", "x", "y", "psf_fwhm", "flags")


@dataclass
class RunSummary:
    """What one ``classify`` run did."""

    catalogue: str
    rows: int
    parts: int
    parts_written: int
    parts_skipped: int
    rejects: int
    seconds: float
    model: str
    model_sha256: str
    rows_this_run: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    #: Fraction of the rows flagged ``FLAG_OOD``; ``None`` when the model has no OOD statistics.
    ood_fraction: float | None = None
    ood_flagged: int | None = None
    ood_threshold: float | None = None

    @property
    def cutouts_per_s(self) -> float:
        """Rows classified per second of wall time in this run (skipped parts excluded)."""
        return self.rows_this_run / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the rate."""
        return {**asdict(self), "cutouts_per_s": round(self.cutouts_per_s, 1)}

    def describe(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"catalogue      {self.catalogue}",
            f"rows           {self.rows} in {self.parts} parts "
            f"({self.parts_written} written, {self.parts_skipped} already whole)",
            f"model          {self.model} (sha256 {self.model_sha256[:12]}…)",
            f"rejects        {self.rejects} (inputs rejected at ingest; see {REJECTS_FILE})",
            f"wall time      {self.seconds:.1f} s, {self.cutouts_per_s:,.0f} cutouts/s",
        ]
        if self.ood_fraction is None:
            lines.insert(4, "out of domain  unknown: the model has no OOD statistics "
                            "(ood_score NaN; fit them with `skysieve ood-fit`)")
        else:
            lines.insert(4, f"out of domain  {self.ood_fraction:.2%} of the rows "
                            f"({self.ood_flagged} with ood_score > {self.ood_threshold:g}, "
                            f"flag {FLAG_OOD})")
        for fail in self.failed:
            lines.append(f"FAILED part {fail['part']}: {fail['error']} (rerun to retry)")
        return "\n".join(lines)


def _chunk_bounds(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    stops = np.cumsum(chunks)
    return [(int(stop - n), int(stop)) for n, stop in zip(chunks, stops)]


def _reference_fwhm(group) -> float | None:
    """Median PSF FWHM (px) over a bounded sample of the store's sources, or None."""
    arr = group["psf_fwhm"]
    step = max(1, arr.shape[0] // 100_000)
    sample = np.asarray(arr[::step], dtype=np.float64)
    sample = sample[np.isfinite(sample) & (sample > 0)]
    return float(np.median(sample)) if sample.size else None


def classify_chunk(store: str, start: int, stop: int, part: str, *, checkpoint: str,
                   sha256: str, batch_size: int, reference_fwhm: float | None,
                   healpix_order: int, row_group_size: int,
                   metadata: dict[str, Any]) -> dict[str, Any]:
    """Classify rows ``[start, stop)`` of ``store`` and write catalogue part ``part``.

    Runs inside a worker: reads its chunk from the store itself and returns a
    small summary (rows, seconds), never the pixels.
    """
    import torch
    from astropy_healpix import lonlat_to_healpix
    import astropy.units as u

    from pipeline.imaging.blur_score import apparent_fwhm
    from pipeline.imaging.preprocess import prepare
    from workers.model_cache import get_predictor

    t0 = time.perf_counter()
    rows, attrs = read_rows(store, start, stop, ("image", *_COORDS, "label", *STAMP_STATS))
    images = rows["image"].astype(np.float32, copy=False)
    cols = {name: rows[name] for name in _COORDS}
    labels = _strings(rows["label"]) if "label" in rows else None
    # Measured once when the chunk was written (pipeline.imaging.stamp_stats); older stores: here.
    stored = all(name in rows for name in STAMP_STATS)

    predictor = get_predictor(checkpoint, sha256=sha256, batch_size=batch_size)
    card = predictor.card
    with torch.inference_mode():
        x = prepare(images, stretch=card.stretch, image_size=card.image_size,
                    background=rows["stamp_bg"] if stored else None,
                    noise=rows["stamp_noise"] if stored else None)
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
        # Whole exposures (pipeline.ingest.whole_exposure): the blur score is the exposure's own PSF
        # FWHM (measured on its stars at ingest) over the store's median; NaN (FLAG_EMPTY)
        # where no PSF was measured.  The stamp-centre moments would measure the target.
        fwhm = cols["psf_fwhm"].astype(np.float32)
    elif stored:
        fwhm = rows["stamp_fwhm"].astype(np.float32)
    else:
        fwhm = apparent_fwhm(images)
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
    healpix = np.full(ra.shape, -1, dtype=np.int64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.any():
        healpix[ok] = lonlat_to_healpix(ra[ok] * u.deg, dec[ok] * u.deg, 2**healpix_order,
                                        order="nested")
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
    if labels is not None:
        data["true_label"] = pa.array(labels, pa.string())
    table = pa.table(data)
    flagged = int(outside.sum()) if threshold is not None else None
    part_files.write_part(table, Path(part),
                          metadata={**metadata, "blur_reference_fwhm": ref,
                                    OOD_COUNT_KEY: flagged},
                          row_group_size=row_group_size)
    return {"part": Path(part).name, "rows": table.num_rows, "seconds": time.perf_counter() - t0}


def _strings(values) -> list[str]:
    """Zarr v3 strings (numpy StringDType, which refuses ``astype(str)``) as Python strings."""
    return [str(v) for v in np.asarray(values, dtype=object)]


def _fingerprint(store: Path, group, card: ModelCard, order: int) -> dict[str, Any]:
    """What a rerun must share with the run that wrote ``out`` to resume it."""
    attrs = dict(group.attrs)
    return {
        "store": str(store.resolve()),
        "store_created": attrs.get("created"),
        "n_sources": int(group["image"].shape[0]),
        "chunk_sources": int(group["image"].chunks[0]),
        "model_sha256": card.sha256,
        "ood_sha256": card.ood.get("sha256") if card.ood else None,
        "healpix_order": order,
    }


def _prepare_out(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` (or check that it holds the same run, to resume) and record the fingerprint."""
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory; choose another --out")
    is_catalogue = run_file.exists() or any(out.glob(PART_GLOB))
    if out.exists() and not is_catalogue and any(out.iterdir()):
        raise FileExistsError(f"{out}: is a non-empty directory that is not a skysieve "
                              "catalogue; choose another --out")
    if overwrite and is_catalogue:
        shutil.rmtree(out)
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise FileExistsError(f"{out}: holds a catalogue from a different run (differs in "
                                  f"{', '.join(changed)}); pass --overwrite to start over or "
                                  "choose another --out")
    elif out.exists() and out.is_dir() and any(out.glob(PART_GLOB)):
        raise FileExistsError(f"{out}: holds catalogue parts but no {RUN_FILE}; pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, fingerprint)
    for stale in out.glob(".part-*.tmp"):  # leftovers of a run killed mid-write
        stale.unlink(missing_ok=True)


def classify(store: Path, out: Path, *, model: str | Path | None = None,
             batch_size: int | None = None, overwrite: bool = False,
             progress: bool = True) -> RunSummary:
    """Classify every cutout in ``store`` and write the catalogue directory ``out``.

    Parameters
    ----------
    store : Path
        Cutout store written by ``skysieve ingest`` or ``import-images``.
    out : Path
        Catalogue directory (created). A rerun with the same store and model
        resumes: parts already whole are kept.
    model : str or Path, optional
        A bundled model name (``"default"``) or a checkpoint path. Default: config.
    batch_size : int, optional
        Images per forward pass. Default: config ``classify.batch-size``.
    overwrite : bool, default: False
        Delete an existing catalogue at ``out`` first.
    progress : bool, default: True
        Show a progress bar on the terminal.

    Returns
    -------
    RunSummary
        Also written as ``out/_summary.json``.
    """
    import dask
    import zarr

    from pipeline.store import check_model_bands, open_store

    t0 = time.perf_counter()
    store, out = Path(store), Path(out)
    ds = open_store(store)  # validates the contract; the task reads with zarr directly
    group = zarr.open_group(str(store), mode="r")
    model_name = str(config.resolve("classify.model", model))
    checkpoint = bundled.resolve(model_name)
    card = load_card(checkpoint)
    check_model_bands(ds.attrs["bands"], in_chans=card.in_chans, model_bands=card.bands,
                      store=str(store), model=model_name)
    load_checkpoint(checkpoint, sha256=card.sha256)  # a bad checkpoint: one error here, not one per part
    batch_size = int(config.resolve("classify.batch-size", batch_size))
    order = int(config.get("classify.healpix-order"))
    row_group_size = int(config.get("classify.row-group-size"))

    fingerprint = _fingerprint(store, group, card, order)
    with run_lock.exclusive(out):
        _prepare_out(out, fingerprint, overwrite)
        bounds = _chunk_bounds(ds["image"].chunks[0]) if ds.sizes["source"] else []
        metadata = {
            "classes": list(card.classes), "model": model_name, "model_arch": card.arch,
            "model_sha256": card.sha256, "skysieve_version": __version__,
            "healpix_order": healpix_order_doc(order), "store": str(store.resolve()),
            "ood": ({"threshold": card.ood_threshold, "sha256": card.ood["sha256"],
                     "flag": FLAG_OOD} if card.ood else None),
            "run_config": {"batch_size": batch_size, "model": model_name, "store": str(store),
                           "overwrite": overwrite},
        }
        reference = _reference_fwhm(group) if "psf_fwhm" in group else None
        todo = [(part_path(out, i), start, stop) for i, (start, stop) in enumerate(bounds)]
        skipped = sum(part.exists() for part, _, _ in todo)
        todo = [job for job in todo if not job[0].exists()]

        def make_task(part: Path, start: int, stop: int) -> Any:
            """One chunk's task under a fresh key (a resubmitted task gets a new one)."""
            return dask.delayed(classify_chunk, pure=False)(
                str(store), start, stop, str(part), checkpoint=str(checkpoint), sha256=card.sha256,
                batch_size=batch_size, reference_fwhm=reference, healpix_order=order,
                row_group_size=row_group_size, metadata=metadata,
                dask_key_name=f"classify-{part.stem}-{uuid.uuid4().hex[:8]}")

        model_plugin = {"path": str(checkpoint), "sha256": card.sha256, "batch_size": batch_size}
        results, failed = _run_tasks(todo, make_task, progress=progress, preload=model_plugin)
        for stale in out.glob(".part-*.tmp"):  # written by a task whose worker died
            stale.unlink(missing_ok=True)
        _copy_rejects(ds, out)
        footers = _part_footers(out)
        rows = sum(n for n, _ in footers)
        ood_fraction, ood_flagged = _ood_fraction(footers, has_stats=bool(card.ood))
        summary = RunSummary(
            catalogue=str(out), rows=rows, parts=len(bounds), parts_written=len(results),
            parts_skipped=skipped, rejects=len(ds.attrs.get("rejects", [])),
            seconds=time.perf_counter() - t0, model=model_name, model_sha256=card.sha256,
            failed=failed, rows_this_run=sum(r["rows"] for r in results),
            ood_fraction=ood_fraction, ood_flagged=ood_flagged,
            ood_threshold=card.ood_threshold)
        write_json(out / SUMMARY_FILE, summary.to_dict())
    return summary


def _run_tasks(todo: list[tuple[Path, int, int]], make_task: Callable[..., Any], *,
               progress: bool, attempts: int = 3,
               preload: dict[str, Any] | None = None) -> tuple[list[dict], list[dict]]:
    """Run one task per ``(part, start, stop)`` on the current distributed client (or threads).

    On a distributed client, ``preload`` (the ``path``, ``sha256`` and ``batch_size``
    the tasks pass to :func:`workers.model_cache.get_predictor`) is registered first
    as a :class:`workers.model_cache.ModelPlugin`: every worker, and every worker
    that joins or restarts later, loads the model once before its first task, and
    the tasks find it in the worker's cache.  Registering it replaces the plugin of
    an earlier run (and drops that run's model); a worker that cannot load the
    checkpoint fails the run here with its error, before any task.

    A task whose future ends neither finished nor erred (cancelled or lost when the
    scheduler dropped it with a dead worker) is submitted again, up to ``attempts``
    times: writing a part is atomic and deterministic, so a repeat cannot double rows.

    Returns
    -------
    results, failed
        The tasks' summaries, and one entry per failed part: its file, its rows, its
        final status and the error (a worker that died on it - usually over its
        memory limit - says what to lower).
    """
    import dask

    if not todo:
        return [], []
    try:
        from distributed import get_client, wait
        client = get_client()
    except (ImportError, ValueError):
        client = None
    if client is None:
        return list(dask.compute(*(make_task(*job) for job in todo), scheduler="threads")), []
    from distributed import KilledWorker

    if preload is not None:
        from workers.model_cache import ModelPlugin

        client.register_plugin(ModelPlugin(**preload))
    results, failed = [], []
    for attempt in range(1, attempts + 1):
        futures = client.compute([make_task(*job) for job in todo])
        if progress and sys.stderr.isatty():
            from distributed import progress as progress_bar
            progress_bar(futures)
        wait(futures)
        again = []
        for (part, start, stop), fut in zip(todo, futures):
            if fut.status == "finished":
                results.append(fut.result())
            elif fut.status == "error":
                exc = fut.exception()
                error = repr(exc)
                if isinstance(exc, KilledWorker):
                    error = (f"the workers running rows {start}:{stop} ({stop - start} cutouts) "
                             f"died, probably over their memory limit: give workers more memory "
                             f"or re-ingest with a smaller ingest.chunk-sources (now "
                             f"{stop - start}) ({error})")
                failed.append({"part": part.name, "rows": [start, stop], "status": "error",
                               "error": error})
            elif attempt < attempts:
                again.append((part, start, stop))
            else:
                failed.append({"part": part.name, "rows": [start, stop], "status": fut.status,
                               "error": f"the task ended {fut.status!r} {attempts} times"})
        if not again:
            break
        todo = again
    return results, failed


def _part_footers(out: Path) -> list[tuple[int, dict[str, Any]]]:
    """Rows and skysieve metadata of every part, from the footers."""
    return [part_files.read_footer(p) for p in sorted(out.glob(PART_GLOB))]


def _ood_fraction(footers: list[tuple[int, dict[str, Any]]], *,
                  has_stats: bool) -> tuple[float | None, int | None]:
    """Fraction and number of the catalogue's rows flagged ``FLAG_OOD`` (``None``: unknown)."""
    if not has_stats:
        return None, None
    counts = [meta.get(OOD_COUNT_KEY) for _, meta in footers]
    if any(c is None for c in counts):  # cannot happen for one run's fingerprint
        return None, None
    rows = sum(n for n, _ in footers)
    flagged = int(sum(counts))
    return (flagged / rows if rows else 0.0), flagged


def _copy_rejects(ds, out: Path) -> None:
    rejects = list(ds.attrs.get("rejects", []))
    table = pa.table({
        "file": pa.array([str(r.get("file", "")) for r in rejects], pa.string()),
        "hdu": pa.array([str(r.get("hdu", "")) for r in rejects], pa.string()),
        "reason": pa.array([str(r.get("reason", "")) for r in rejects], pa.string()),
    })
    part_files.write_table(table, out / REJECTS_FILE)
