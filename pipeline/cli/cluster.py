"""Click commands for batch-system clusters: ``skysieve cluster job-script`` and ``skysieve submit``.

Registered in ``pipeline/cli/__init__.py`` with ``cli.add_command(cluster_group)`` and
``cli.add_command(submit)``.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.cli.base import CONTEXT, one_line_errors

__all__ = ["cluster_group", "submit", "BATCH_KINDS"]

BATCH_KINDS = ("slurm", "pbs", "lsf")  # == cluster.jobqueue.KINDS (not imported: CLI start-up)
_PROFILE = click.Path(exists=True, dir_okay=False, path_type=Path)


_user_errors = one_line_errors(ValueError)


@click.group("cluster", context_settings=CONTEXT)
def cluster_group() -> None:
    """Batch-system clusters (SLURM, PBS, LSF): see what would be submitted."""


@cluster_group.command("job-script")
@click.option("--cluster", "kind", type=click.Choice(BATCH_KINDS), default="slurm",
              show_default=True, help="Batch system.")
@click.option("--profile", type=_PROFILE, default=None,
              help="YAML cluster profile (keys: cluster/profiles.yaml).")
@_user_errors
def job_script(kind: str, profile: Path | None) -> None:
    """Print the exact script each worker job is submitted with."""
    from cluster.jobqueue import job_script as render

    click.echo(render(kind, profile=profile), nl=False)


def _takes_cluster(args: tuple[str, ...]) -> bool:
    """Whether the skysieve sub-command in ``args`` has a ``--cluster`` option."""
    if not args or args[0].startswith("-"):
        return False
    ctx = click.get_current_context()
    root = ctx.find_root().command
    if not isinstance(root, click.Group):
        from pipeline.cli import cli as root
    command = root.get_command(ctx, args[0])
    if command is None:
        raise click.UsageError(f"unknown skysieve command {args[0]!r} after --; "
                               f"choose from {', '.join(sorted(root.list_commands(ctx)))}")
    return any("--cluster" in p.opts for p in command.params if isinstance(p, click.Option))


@click.command("submit", context_settings={**CONTEXT, "ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
@click.option("--profile", required=True, type=_PROFILE,
              help="YAML cluster profile (keys: cluster/profiles.yaml).")
@click.option("--cluster", "kind", type=click.Choice(BATCH_KINDS), default="slurm",
              show_default=True, help="Batch system.")
@click.option("--dry-run", is_flag=True, help="Print the batch script; write and submit nothing.")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@_user_errors
def submit(profile: Path, kind: str, dry_run: bool, args: tuple[str, ...]) -> None:
    """Submit a batch job that runs `skysieve ARGS` (e.g. `-- run EXPOSURES... --out DIR`).

    The job runs the scheduler and the client; commands that take --cluster get
    `--cluster KIND --profile PROFILE` appended, so the workers are jobs too.
    Prints the job id and where its log goes.
    """
    from pipeline.hpc.submit import submit as run_submit

    result = run_submit(list(args), profile=profile, kind=kind,
                        add_cluster_options=_takes_cluster(args), dry_run=dry_run)
    if dry_run:
        click.echo(result.text, nl=False)
    click.echo(result.describe())
