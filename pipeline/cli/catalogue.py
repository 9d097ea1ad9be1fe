"""Click commands for analysts: ``skysieve catalogue to-hats|to-fits`` and ``skysieve report``.

Registered in ``pipeline/cli/__init__.py`` with ``cli.add_command(catalogue_group)`` and
``cli.add_command(report)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.base import CONTEXT, one_line_errors

__all__ = ["catalogue_group", "report", "to_hats_command", "to_fits_command"]

_CATALOGUE = click.Path(exists=True, file_okay=False, path_type=Path)
_NEW = click.Path(path_type=Path)


@click.group("catalogue", context_settings=CONTEXT)
def catalogue_group() -> None:
    """Catalogue formats for analysts: HATS (for LSDB), FITS and VOTable (for TOPCAT)."""


@catalogue_group.command("to-hats")
@click.argument("catalogue", type=_CATALOGUE)
@click.argument("out", type=_NEW)
@click.option("--pixel-threshold", default=1_000_000, show_default=True,
              help="Most rows in one HEALPix partition.")
@click.option("--highest-order", default=7, show_default=True,
              help="Finest HEALPix order of a partition (0-19).")
@click.option("--overwrite", is_flag=True, help="Replace an existing HATS catalogue at OUT.")
@click.option("--cluster", "cluster_kind", default=None,
              help="Where the conversion runs: local | tcp://host:port | scheduler.json | "
                   "slurm | pbs | lsf (default: threads in this process).")
@click.option("--workers", "n_workers", type=int, default=None, help="Worker processes.")
@one_line_errors()
def to_hats_command(catalogue: Path, out: Path, pixel_threshold: int, highest_order: int,
                    overwrite: bool, cluster_kind: str | None, n_workers: int | None) -> None:
    """Write CATALOGUE as a HATS catalogue at OUT (open it with lsdb.open_catalog(OUT))."""
    from pipeline.catalogue.hats import to_hats

    kwargs = {"pixel_threshold": pixel_threshold, "highest_order": highest_order,
              "overwrite": overwrite}
    if cluster_kind is None:
        summary = to_hats(catalogue, out, **kwargs)
    else:
        from cluster import connect

        with connect(cluster_kind, n_workers=n_workers) as client:
            summary = to_hats(catalogue, out, client=client, **kwargs)
    click.echo(summary.describe())


@catalogue_group.command("to-fits")
@click.argument("catalogue", type=_CATALOGUE)
@click.argument("out", type=_NEW)
@click.option("--where", default=None, metavar="SQL",
              help="Keep only the rows this DuckDB condition selects, e.g. "
                   "\"label = 'star' AND confidence > 0.9\".")
@click.option("--overwrite", is_flag=True, help="Replace an existing file at OUT.")
@one_line_errors()
def to_fits_command(catalogue: Path, out: Path, where: str | None, overwrite: bool) -> None:
    """Write CATALOGUE as one FITS table or VOTable at OUT, for TOPCAT.

    OUT's suffix picks the format: .fits, .fit or .fts for a FITS binary table,
    .vot, .xml or .votable for a VOTable.
    """
    from pipeline.catalogue.export import to_table_file

    summary = to_table_file(catalogue, out, where=where, overwrite=overwrite)
    click.echo(summary.describe())


@click.command("report", context_settings=CONTEXT)
@click.argument("catalogue", type=_CATALOGUE)
@click.option("--out", required=True, type=_NEW, help="Folder for index.html and its PNG plots.")
@click.option("--store", type=click.Path(exists=True, path_type=Path), default=None,
              help="Cutout store for the gallery (default: the store recorded in the catalogue, "
                   "if it still exists).")
@click.option("--per-class", default=8, show_default=True, help="Cutouts per class in the gallery.")
@one_line_errors()
def report(catalogue: Path, out: Path, store: Path | None, per_class: int) -> None:
    """Write a static HTML report on CATALOGUE: plots, cutouts, provenance."""
    from pipeline.catalogue.report import write_report

    index = write_report(catalogue, out, store=store, per_class=per_class)
    click.echo(f"wrote {index}")
