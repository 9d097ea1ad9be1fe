"""Click commands for the stages of a night: ``skysieve synth``, ``ingest``, ``import-images``,
``info``, ``classify``, ``run``, ``demo``, ``query`` and ``plan``.

Registered in ``pipeline/cli/__init__.py``; each command parses its options and calls one
plain function of the stage's package (``pipeline.simulation``, ``pipeline.ingest``,
``pipeline.store``, ``pipeline.classify``, ``pipeline.catalogue``, ``pipeline.hpc``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd

from pipeline.cli.base import CONTEXT, EXISTING, NEW, cluster_options, connect_cluster, one_line_errors

__all__ = ["COMMANDS", "synth", "ingest", "import_images", "info", "classify", "run", "demo",
           "query", "plan"]

_user_errors = one_line_errors()


def _truth(paths: tuple[Path, ...]) -> Path | pd.DataFrame | None:
    """The truth given to ingest: none, one table as its path, or several joined."""
    if len(paths) <= 1:
        return paths[0] if paths else None
    from pipeline.ingest.source_table import join_truth_tables

    return join_truth_tables(paths)


@click.command(context_settings=CONTEXT)
@click.argument("out_dir", type=NEW)
@click.option("--exposures", default=4, show_default=True, help="Number of exposures.")
@click.option("--size", default=2048, show_default=True, help="Exposure side in pixels.")
@click.option("--sources", default=None, type=int, help="Sources per exposure (default: from the size).")
@click.option("--ccds", default=1, show_default=True, help="CCDs (image extensions) per exposure.")
@click.option("--seed", default=0, show_default=True, help="Random seed; the survey is deterministic for it.")
@click.option("--pointed", is_flag=True,
              help="Pointed exposures: one large target (galaxy or nebula/star cluster) per "
                   "exposure, for whole-exposure classification.")
@click.option("--domain", type=click.Choice(["survey", "wide", "preview"]), default="survey",
              show_default=True,
              help="survey: the one synthetic telescope; wide: each exposure draws its own "
                   "pixel scale, PSF, response (CCD, plate, JPEG) and depth, to train for "
                   "real skies; preview: the same, every exposure an 8-bit preview JPEG "
                   "(lifted sky noise, bright cores clipped flat).")
@click.option("--prefix", default="", show_default=False,
              help="Start of every exposure's file name and truth name (PREFIXexp_0000), so "
                   "that several runs can be ingested into one store.")
@_user_errors
def synth(out_dir: Path, exposures: int, size: int, sources: int | None, ccds: int, seed: int,
          pointed: bool, domain: str, prefix: str) -> None:
    """Render a synthetic survey (GalSim FITS exposures + truth.parquet) into OUT_DIR."""
    from pipeline.simulation.pointed import synthesize_pointed
    from pipeline.simulation.survey import synthesize

    if pointed and domain != "survey":
        raise click.UsageError("--pointed renders the survey's instrument only; "
                               f"drop --domain {domain} or --pointed")
    if pointed:
        summary = synthesize_pointed(out_dir, exposures=exposures, size=size, seed=seed,
                                     prefix=prefix)
    else:
        summary = synthesize(out_dir, exposures=exposures, size=size, sources=sources,
                             ccds=ccds, seed=seed, domain=domain, prefix=prefix)
    click.echo(summary.describe())


@click.command(context_settings=CONTEXT)
@click.argument("exposures", nargs=-1, required=True, type=EXISTING)
@click.option("--out", required=True, type=NEW, help="Cutout store to write (STORE.zarr).")
@click.option("--sources", "source_table", type=EXISTING, default=None,
              help="Source table (Parquet, CSV or FITS; ra/dec or x/y) for forced cutouts.")
@click.option("--truth", type=EXISTING, multiple=True,
              help="Truth table; labels matched by position (repeatable: tables of different "
                   "exposures, e.g. synth runs with their own --prefix).")
@click.option("--stamp", type=int, default=None, help="Cutout side in pixels (default: config, 64).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--whole-exposure", is_flag=True,
              help="Store each exposure/CCD whole (one item per image) instead of cutouts.")
@click.option("--downsample", default=1, show_default=True,
              help="With --whole-exposure: block-average by this factor.")
@cluster_options
@_user_errors
def ingest(exposures: tuple[Path, ...], out: Path, source_table: Path | None,
           truth: tuple[Path, ...],
           stamp: int | None, overwrite: bool, whole_exposure: bool, downsample: int,
           cluster_kind: str | None, profile: Path | None, n_workers: int | None,
           threads_per_worker: int | None) -> None:
    """Detect sources in EXPOSURES (FITS) and write their cutouts to a Zarr store."""
    from pipeline.ingest.exposures import ingest as run_ingest

    if whole_exposure and (source_table is not None or stamp is not None):
        raise click.UsageError("--whole-exposure stores whole images: drop --sources/--stamp")
    if downsample != 1 and not whole_exposure:
        raise click.UsageError("--downsample applies to --whole-exposure only")
    labels = _truth(truth)  # tables checked before a cluster starts
    with connect_cluster(cluster_kind, profile, n_workers, threads_per_worker):
        if whole_exposure:
            from pipeline.ingest.whole_exposure import ingest_whole

            summary = ingest_whole(list(exposures), out, downsample=downsample, truth=labels,
                                   overwrite=overwrite)
        else:
            summary = run_ingest(list(exposures), out, sources=source_table, truth=labels,
                                 stamp=stamp, overwrite=overwrite)
    click.echo(summary.describe())
    if summary.n_sources == 0:
        sys.exit(1)


@click.command("import-images", context_settings=CONTEXT)
@click.argument("directory", type=EXISTING)
@click.option("--labels", required=True, type=EXISTING, help="CSV with path,label[,frame,x,y].")
@click.option("--out", required=True, type=NEW, help="Cutout store to write (STORE.zarr).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store.")
@click.option("--bands", default=None,
              help="Store bands, comma-separated: one name (e.g. grey) = the mean of the "
                   "channels; three = the R,G,B channels in that order (SDSS gri composites: "
                   "i,r,g); or NAME:CHANNEL pairs (g:B,r:G,i:R). Default: R,G,B for colour "
                   "images, grey for greyscale ones.")
@click.option("--stamp", type=int, default=None,
              help="Stamp side in pixels (default: the images' own size when all are equal).")
@click.option("--resize", type=int, default=None,
              help="Downscale each whole image to this side (antialiased) instead of cropping "
                   "it: for cutouts already scaled to their source, such as Galaxy Zoo's.")
@_user_errors
def import_images(directory: Path, labels: Path, out: Path, overwrite: bool, bands: str | None,
                  stamp: int | None, resize: int | None) -> None:
    """Turn a labelled folder of PNG/JPEG cutouts into a cutout store.

    DIRECTORY is the folder the CSV's path column is relative to. Chunks hold
    ingest.chunk-bytes of pixels (config; ingest.chunk-sources overrides).
    """
    from pipeline.ingest.images import import_images as run_import

    summary = run_import(directory, labels, out, overwrite=overwrite, bands=bands, stamp=stamp,
                         resize=resize)
    click.echo(summary.describe())
    if summary.store is None:
        sys.exit(1)


@click.command(context_settings=CONTEXT)
@click.argument("store", type=EXISTING)
@_user_errors
def info(store: Path) -> None:
    """Print a summary of a cutout STORE: sources, chunks, classes, provenance."""
    from pipeline.store import describe

    click.echo(describe(store))


@click.command(context_settings=CONTEXT)
@click.argument("stores", nargs=-1, required=True, type=EXISTING)
@click.option("--out", required=True, type=NEW, help="Catalogue directory to write.")
@click.option("--model", default=None, help="Bundled model name or checkpoint path (default: 'default').")
@click.option("--batch-size", type=int, default=None, help="Images per forward pass (default: config).")
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming.")
@cluster_options
@_user_errors
def classify(stores: tuple[Path, ...], out: Path, model: str | None, batch_size: int | None,
             overwrite: bool, cluster_kind: str | None, profile: Path | None,
             n_workers: int | None, threads_per_worker: int | None) -> None:
    """Classify every cutout in STORES (one or several, as one) into one Parquet catalogue (resumable)."""
    from pipeline.classify.graph import classify as run_classify

    with connect_cluster(cluster_kind, profile, n_workers, threads_per_worker) as client:
        click.echo(f"dashboard: {client.dashboard_link}", err=True)
        summary = run_classify(list(stores), out, model=model, batch_size=batch_size,
                               overwrite=overwrite)
    click.echo(summary.describe())
    if summary.failed:
        sys.exit(1)


@click.command(context_settings=CONTEXT)
@click.argument("exposures", nargs=-1, required=True, type=EXISTING)
@click.option("--out", required=True, type=NEW, help="Output directory (cutouts.zarr, catalogue/).")
@click.option("--truth", type=EXISTING, multiple=True,
              help="Truth table; labels matched by position (repeatable: tables of different "
                   "exposures, e.g. synth runs with their own --prefix).")
@click.option("--sources", "source_table", type=EXISTING, default=None,
              help="Source table for forced cutouts instead of detection.")
@click.option("--model", default=None, help="Bundled model name or checkpoint path.")
@click.option("--batch-size", type=int, default=None, help="Images per forward pass.")
@click.option("--overwrite", is_flag=True, help="Redo the ingest and the classification.")
@cluster_options
@_user_errors
def run(exposures: tuple[Path, ...], out: Path, truth: tuple[Path, ...], source_table: Path | None,
        model: str | None, batch_size: int | None, overwrite: bool, cluster_kind: str | None,
        profile: Path | None, n_workers: int | None, threads_per_worker: int | None) -> None:
    """The whole night: ingest EXPOSURES, then classify them, into OUT."""
    from pipeline.classify.night import run_night

    labels = _truth(truth)  # tables checked before a cluster starts
    with connect_cluster(cluster_kind, profile, n_workers, threads_per_worker) as client:
        click.echo(f"dashboard: {client.dashboard_link}", err=True)
        result = run_night(list(exposures), out, truth=labels, sources=source_table, model=model,
                           batch_size=batch_size, overwrite=overwrite)
    click.echo(result.describe())
    if result.classify.failed:
        sys.exit(1)


@click.command(context_settings=CONTEXT)
@click.option("--out", default="demo-out", show_default=True, type=NEW, help="Output directory.")
@click.option("--exposures", default=4, show_default=True, help="Synthetic exposures.")
@click.option("--size", default=2048, show_default=True, help="Exposure side in pixels.")
@click.option("--seed", default=2026, show_default=True, help="Survey seed.")
@click.option("--model", default=None, help="Bundled model name or checkpoint path.")
@cluster_options
@_user_errors
def demo(out: Path, exposures: int, size: int, seed: int, model: str | None,
         cluster_kind: str | None, profile: Path | None, n_workers: int | None,
         threads_per_worker: int | None) -> None:
    """Synthesise a survey, run the whole night on a local cluster, and score it against truth."""
    from pipeline.classify.night import run_demo

    with connect_cluster(cluster_kind, profile, n_workers, threads_per_worker) as client:
        click.echo(f"dashboard: {client.dashboard_link}", err=True)
        report = run_demo(out, exposures=exposures, size=size, seed=seed, model=model)
    click.echo(report)


@click.command(context_settings=CONTEXT)
@click.argument("catalogue", type=EXISTING)
@click.argument("sql")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@_user_errors
def query(catalogue: Path, sql: str, as_csv: bool) -> None:
    """Run DuckDB SQL over CATALOGUE, exposed as the table `catalogue`."""
    import duckdb

    from pipeline.catalogue import query as run_query

    try:
        df = run_query(catalogue, sql)
    except duckdb.Error as exc:
        raise click.ClickException(f"query failed: {exc}") from exc
    click.echo(df.to_csv(index=False) if as_csv else df.to_string(index=False))


@click.command(context_settings=CONTEXT)
@click.option("--sources", required=True, type=float, help="Sources in the release (e.g. 1e9).")
@click.option("--model", default="default", show_default=True, help="Model whose throughput counts.")
@click.option("--gpus-per-node", default=0, show_default=True, help="GPUs per node (0: CPU nodes).")
@click.option("--cores-per-node", type=int, default=None, help="CPU cores per node (default: this machine's).")
@click.option("--hours", default=8.0, show_default=True, help="Length of the night.")
@click.option("--measurements", type=EXISTING, default=None,
              help="Benchmark results directory (default: benchmarks/results of this installation).")
@_user_errors
def plan(sources: float, model: str, gpus_per_node: int, cores_per_node: int | None, hours: float,
         measurements: Path | None) -> None:
    """Estimate the nodes and node-hours a whole release needs, from measured throughputs."""
    from pipeline.hpc.plan import plan as run_plan

    result = run_plan(sources=sources, model=model, gpus_per_node=gpus_per_node,
                      cores_per_node=cores_per_node, hours=hours, measurements=measurements)
    click.echo(result.get("markdown", result))


COMMANDS = (synth, ingest, import_images, info, classify, run, demo, query, plan)
