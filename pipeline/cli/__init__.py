"""The ``skysieve`` command line: the click group and the registration of every command.

Commands live in one module per family, each importing only :mod:`pipeline.cli.base`:

- :mod:`pipeline.cli.stages`: ``synth``, ``ingest``, ``import-images``, ``info``,
  ``classify``, ``run``, ``demo``, ``query``, ``plan``;
- :mod:`pipeline.cli.models`: ``train``, ``evaluate``, ``compare``, ``ood-fit``;
- :mod:`pipeline.cli.catalogue`: ``catalogue to-hats``, ``report``;
- :mod:`pipeline.cli.cluster`: ``cluster job-script``, ``submit``.
"""

from __future__ import annotations

import click

from pipeline import __version__
from pipeline.cli.base import CONTEXT
from pipeline.cli.catalogue import catalogue_group, report
from pipeline.cli.cluster import cluster_group, submit
from pipeline.cli.models import compare, evaluate, ood_fit, train
from pipeline.cli.stages import COMMANDS as STAGE_COMMANDS

__all__ = ["cli", "main"]


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="skysieve")
def cli() -> None:
    """skysieve: FITS exposures -> Zarr cutouts -> Dask + batched model -> Parquet catalogue."""


for _command in (*STAGE_COMMANDS, train, evaluate, compare, ood_fit, catalogue_group, report,
                 cluster_group, submit):
    cli.add_command(_command)
del _command


def main() -> None:
    """Entry point of the ``skysieve`` console script."""
    cli()
