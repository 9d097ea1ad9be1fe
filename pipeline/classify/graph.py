"""The classification graph: one Dask task per run of store chunks -> one catalogue part.

A part holds whole consecutive chunks of one store, up to ``classify.part-rows`` rows
(16,384: 16 chunks of 1,024), while the run keeps at least ``classify.min-parts`` parts
where it has that many chunks (:func:`chunks_per_part`): a release of 10^9 cutouts makes
~61,000 parts and tasks rather than ~980,000, and a small store still spreads over the
workers.  Each task (:func:`pipeline.classify.chunk.classify_chunk`) reads its own chunks
straight from the Zarr store, one at a time, preprocesses them, scores blur, runs the
worker's cached model in batches and hands one Parquet part to its process's writer thread, which writes it
atomically off the task's critical path; it returns only a small summary.  Pixels never
pass through the client or the scheduler, the model is loaded once per worker process
(keyed by its sha256; on a distributed cluster preloaded by a
:class:`workers.model_cache.ModelPlugin` before the first task), the writers are flushed
before the parts are counted (:mod:`pipeline.classify.tasks`), and a rerun skips the
parts that are already whole.

Several stores (a release ingested in pieces) make one catalogue: their chunks are
numbered in the order given, and the run's fingerprint (``_run.json``) records every
store, so a rerun resumes only with the same stores in the same order.

The same forward pass scores how far each source lies from the model's training data
(:meth:`workers.inference.Predictor.predict`): ``ood_score`` (the Mahalanobis distance of
its features ranked against the validation stamps, 1.0 = at or beyond the largest) and
``ood_energy``; both NaN for a model without OOD statistics.  ``FLAG_OOD`` marks
``ood_score`` above the card's threshold, and the run summary gives the fraction of the
night so flagged (``ood_fraction``).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from pipeline import __version__, bundled, config
from pipeline.catalogue import part_files
from pipeline.catalogue.layout import (FLAG_OOD, OOD_COUNT_KEY, PART_GLOB, REJECTS_FILE,
                                       RUN_FILE, SUMMARY_FILE, healpix_order_doc, part_path)
from pipeline.classify import run_lock
from pipeline.classify.chunk import classify_chunk
from pipeline.classify.tasks import Job, run_tasks
from pipeline.errors import StoreError
from pipeline.files import write_json
from workers.checkpoint import ModelCard, load_card, load_checkpoint

__all__ = ["classify", "RunSummary", "classify_chunk", "chunks_per_part", "planned_parts"]


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


def _stores(store: Path | str | Sequence[Path | str]) -> list[Path]:
    """The stores of one run, in order; the same store twice would double its rows."""
    stores = [Path(store)] if isinstance(store, (str, Path)) else [Path(s) for s in store]
    if not stores:
        raise StoreError("classify: no cutout store given; pass one or more STORE.zarr")
    seen: dict[Path, Path] = {}
    for s in stores:
        twin = seen.setdefault(s.resolve(), s)
        if twin is not s:
            raise StoreError(f"classify: store {s} is given twice ({twin}); give each store once")
    return stores


def chunks_per_part(chunks: Sequence[int], chunk_rows: int, *, part_rows: int,
                    min_parts: int) -> int:
    """Whole chunks per catalogue part: as many as ``part_rows`` holds, fewer for a small run.

    Parameters
    ----------
    chunks : sequence of int
        The number of chunks of each store of the run.
    chunk_rows : int
        The most sources in one chunk over the run's stores.
    part_rows : int
        Most rows per part (``classify.part-rows``).
    min_parts : int
        Parts the run keeps at least, where its chunks allow (``classify.min-parts``).

    Returns
    -------
    int
        At least 1.  It depends on the stores alone, never on the cluster, so a rerun on
        another cluster finds the same parts.
    """
    if part_rows < 1 or min_parts < 1:
        raise ValueError(f"classify.part-rows and classify.min-parts must be >= 1, got "
                         f"{part_rows!r} and {min_parts!r}; fix the configuration")
    return max(1, min(part_rows // max(1, chunk_rows), sum(chunks) // min_parts))


def planned_parts(stores: Sequence[Path | str]) -> int:
    """How many parts ``classify`` of ``stores`` writes under the current configuration."""
    import zarr

    groups = [zarr.open_group(str(s), mode="r") for s in _stores(list(stores))]
    per_part = _configured_per_part(groups)
    return sum(len(_part_bounds(g, per_part)) for g in groups)


def _part_bounds(group, per_part: int) -> list[tuple[int, int, int]]:
    """``(start, stop, step)`` of each part of one store: ``per_part`` whole chunks of ``step`` rows."""
    n, step = int(group["image"].shape[0]), int(group["image"].chunks[0])
    span = step * per_part
    return [(start, min(n, start + span), step) for start in range(0, n, span)]


def _configured_per_part(groups: list) -> int:
    """:func:`chunks_per_part` of the stores' groups under ``classify.part-rows`` / ``min-parts``."""
    counts = [-(-int(g["image"].shape[0]) // int(g["image"].chunks[0])) for g in groups]
    return chunks_per_part(counts, max(int(g["image"].chunks[0]) for g in groups),
                           part_rows=int(config.get("classify.part-rows")),
                           min_parts=int(config.get("classify.min-parts")))


def _reference_fwhm(groups: list) -> float | None:
    """Median PSF FWHM (px) over a bounded sample of the stores' sources, or None."""
    samples = []
    for group in groups:
        if "psf_fwhm" in group:
            arr = group["psf_fwhm"]
            samples.append(np.asarray(arr[::max(1, arr.shape[0] // 100_000)], dtype=np.float64))
    sample = np.concatenate(samples) if samples else np.zeros(0)
    sample = sample[np.isfinite(sample) & (sample > 0)]
    return float(np.median(sample)) if sample.size else None


def _fingerprint(stores: list[Path], groups: list, card: ModelCard, order: int,
                 per_part: int) -> dict[str, Any]:
    """What a rerun must share with the run that wrote ``out`` to resume it.

    One store: its path, creation time, size and chunking (as catalogues written before
    several stores could be classified at once record it).  Several: the same for each,
    in order (the order numbers the parts).  ``chunks_per_part`` where a part holds more
    than one chunk (catalogues of one chunk a part, written before, carry no such key).
    """
    def one(store: Path, group) -> dict[str, Any]:
        return {"store": str(store.resolve()), "store_created": dict(group.attrs).get("created"),
                "n_sources": int(group["image"].shape[0]),
                "chunk_sources": int(group["image"].chunks[0])}

    which = (one(stores[0], groups[0]) if len(stores) == 1
             else {"stores": [one(s, g) for s, g in zip(stores, groups)]})
    return {**which, "model_sha256": card.sha256,
            "ood_sha256": card.ood.get("sha256") if card.ood else None, "healpix_order": order,
            **({"chunks_per_part": per_part} if per_part > 1 else {})}


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
            changed = sorted(k for k in {**previous, **fingerprint}
                             if previous.get(k) != fingerprint.get(k))
            raise FileExistsError(f"{out}: holds a catalogue from a different run (differs in "
                                  f"{', '.join(changed)}); pass --overwrite to start over or "
                                  "choose another --out")
    elif out.exists() and out.is_dir() and any(out.glob(PART_GLOB)):
        raise FileExistsError(f"{out}: holds catalogue parts but no {RUN_FILE}; pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, fingerprint)
    for stale in out.glob(".part-*.tmp"):  # leftovers of a run killed mid-write
        stale.unlink(missing_ok=True)


def classify(store: Path | Sequence[Path], out: Path, *, model: str | Path | None = None,
             batch_size: int | None = None, overwrite: bool = False,
             progress: bool = True) -> RunSummary:
    """Classify every cutout in ``store`` (one store, or several as one) into the catalogue ``out``.

    Parameters
    ----------
    store : Path or sequence of Path
        Cutout store(s) written by ``skysieve ingest`` or ``import-images``.  Several
        stores (a release ingested per night or tract) make one catalogue: their chunks
        are numbered in the order given; a part holds whole chunks of one store
        (:func:`chunks_per_part`).
    out : Path
        Catalogue directory (created). A rerun with the same stores (in the same order)
        and model resumes: parts already whole are kept.
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
    stores, out = _stores(store), Path(out)
    datasets = [open_store(s) for s in stores]  # validates the contract; tasks read directly
    groups = [zarr.open_group(str(s), mode="r") for s in stores]
    model_name = str(config.resolve("classify.model", model))
    checkpoint = bundled.resolve(model_name)
    card = load_card(checkpoint)
    for s, ds in zip(stores, datasets):
        check_model_bands(ds.attrs["bands"], in_chans=card.in_chans, model_bands=card.bands,
                          store=str(s), model=model_name)
    load_checkpoint(checkpoint, sha256=card.sha256)  # a bad checkpoint: one error here, not one per part
    batch_size = int(config.resolve("classify.batch-size", batch_size))
    order = int(config.get("classify.healpix-order"))
    row_group_size = int(config.get("classify.row-group-size"))
    per_part = _configured_per_part(groups)

    fingerprint = _fingerprint(stores, groups, card, order, per_part)
    with run_lock.exclusive(out):
        _prepare_out(out, fingerprint, overwrite)
        paths = [str(s.resolve()) for s in stores]
        metadata = {
            "classes": list(card.classes), "model": model_name, "model_arch": card.arch,
            "model_sha256": card.sha256, "skysieve_version": __version__,
            "healpix_order": healpix_order_doc(order), "store": paths[0],
            **({"stores": paths} if len(paths) > 1 else {}),
            "ood": ({"threshold": card.ood_threshold, "sha256": card.ood["sha256"],
                     "flag": FLAG_OOD} if card.ood else None),
            "run_config": {"batch_size": batch_size, "model": model_name,
                           "store": str(stores[0]) if len(stores) == 1 else [str(s) for s in stores],
                           "overwrite": overwrite},
        }
        reference = _reference_fwhm(groups)
        jobs = [(path, bounds) for path, group in zip(paths, groups)
                for bounds in _part_bounds(group, per_part)]
        todo = [Job(part_path(out, i), path, start, stop, step)
                for i, (path, (start, stop, step)) in enumerate(jobs)]
        skipped = sum(job.part.exists() for job in todo)
        todo = [job for job in todo if not job.part.exists()]

        def make_task(job: Job) -> Any:
            """One chunk's task under a fresh key (a resubmitted task gets a new one)."""
            return dask.delayed(classify_chunk, pure=False)(
                job.store, job.start, job.stop, str(job.part), checkpoint=str(checkpoint),
                sha256=card.sha256, batch_size=batch_size, reference_fwhm=reference,
                healpix_order=order, row_group_size=row_group_size, metadata=metadata,
                step=job.step, dask_key_name=f"classify-{job.part.stem}-{uuid.uuid4().hex[:8]}")

        model_plugin = {"path": str(checkpoint), "sha256": card.sha256, "batch_size": batch_size}
        results, failed = run_tasks(todo, make_task, out=out, progress=progress,
                                    preload=model_plugin)
        for stale in out.glob(".part-*.tmp"):  # written by a task whose worker died
            stale.unlink(missing_ok=True)
        _copy_rejects(datasets, out)
        footers = _part_footers(out)
        rows = sum(n for n, _ in footers)
        ood_fraction, ood_flagged = _ood_fraction(footers, has_stats=bool(card.ood))
        summary = RunSummary(
            catalogue=str(out), rows=rows, parts=len(jobs), parts_written=len(results),
            parts_skipped=skipped,
            rejects=sum(len(ds.attrs.get("rejects", [])) for ds in datasets),
            seconds=time.perf_counter() - t0, model=model_name, model_sha256=card.sha256,
            failed=failed, rows_this_run=sum(r["rows"] for r in results),
            ood_fraction=ood_fraction, ood_flagged=ood_flagged,
            ood_threshold=card.ood_threshold)
        write_json(out / SUMMARY_FILE, summary.to_dict())
    return summary


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


def _copy_rejects(datasets: list, out: Path) -> None:
    """The inputs every store rejected at ingest, as ``out/_rejects.parquet``."""
    rejects = [r for ds in datasets for r in ds.attrs.get("rejects", [])]
    table = pa.table({
        "file": pa.array([str(r.get("file", "")) for r in rejects], pa.string()),
        "hdu": pa.array([str(r.get("hdu", "")) for r in rejects], pa.string()),
        "reason": pa.array([str(r.get("reason", "")) for r in rejects], pa.string()),
    })
    part_files.write_table(table, out / REJECTS_FILE)
