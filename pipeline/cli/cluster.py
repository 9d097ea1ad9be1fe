"""Click commands for batch-system clusters: ``skysieve cluster job-script`` and ``skysieve submit``.

Registered in ``pipeline/cli/__init__.py`` with ``cli.add_command(cluster_group)`` and
``cli.add_command(submit)``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from pipeline.cli.base import CONTEXT, one_line_errors

if TYPE_CHECKING:
    from cluster.jobqueue import MissingSettings

__all__ = ["cluster_group", "submit", "BATCH_KINDS", "OPTION_OF"]

BATCH_KINDS = ("slurm", "pbs", "lsf")  # == cluster.jobqueue.KINDS (not imported: CLI start-up)
_PROFILE = click.Path(exists=True, dir_okay=False, path_type=Path)

OPTION_OF = {
    "cores": "--cores", "memory": "--memory", "processes": "--processes", "gpus": "--gpus",
    "walltime": "--walltime", "queue": "--queue", "account": "--account",
    "job-extra-directives": "--job-extra", "log-directory": "--log-directory",
    "local-directory": "--local-directory", "interface": "--interface",
}
"""The ``cluster job-script`` option of each profile key it can override."""

_user_errors = one_line_errors()


@click.group("cluster", context_settings=CONTEXT)
def cluster_group() -> None:
    """Batch-system clusters (SLURM, PBS, LSF): see what would be submitted."""


def _command_line(words: Sequence[str], settings: dict[str, Any]) -> str:
    """``words`` then each setting as its ``cluster job-script`` option, quoted for a shell."""
    argv = list(words)
    for key, value in settings.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            argv += [OPTION_OF[key], str(item)]
    return shlex.join(argv)


def _snippet(values: dict[str, Any]) -> str:
    return "\n".join(f"  {key}: {value}" for key, value in values.items())


def _job_script_fix(exc: MissingSettings, *, kind: str, profile: Path | None, given: dict[str, Any]) -> str:
    """The message for missing settings: a profile to write and the corrected command lines."""
    words = ["skysieve", "cluster", "job-script", "--cluster", kind]
    missing = {k: exc.fix[k] for k in exc.missing}
    head = f"{' and '.join(exc.missing)} per job must be set for --cluster {kind}."
    them = "them" if len(exc.missing) > 1 else "it"
    if profile is not None:
        with_profile = [*words, "--profile", str(profile)]
        return (f"{profile}: {head} Add to the profile:\n{_snippet(missing)}\n"
                f"or give {them} as options: {_command_line(with_profile, {**given, **missing})}")
    example = f"{kind}.yaml"
    return (f"{head} Give {them} as options: {_command_line(words, {**given, **missing})}\n"
            f"or write a profile, e.g. {example}:\n{_snippet(exc.fix)}\n"
            f"and run: {_command_line([*words, '--profile', example], given)}")


@cluster_group.command("job-script")
@click.option("--cluster", "kind", type=click.Choice(BATCH_KINDS), default="slurm",
              show_default=True, help="Batch system.")
@click.option("--profile", type=_PROFILE, default=None,
              help="YAML cluster profile (keys: cluster/profiles.yaml); the options below "
                   "override it.")
@click.option("--cores", type=int, default=None, help="Cores per job (required, here or in the profile).")
@click.option("--memory", default=None,
              help="Memory per job, e.g. 24GB (required, here or in the profile).")
@click.option("--processes", type=int, default=None,
              help="Worker processes per job [default: one per two cores].")
@click.option("--gpus", type=int, default=None, help="GPUs per job.")
@click.option("--walltime", default=None, help="Walltime per job, [D-]HH:MM[:SS] [default: 01:00:00].")
@click.option("--queue", "--partition", "queue", default=None, help="Queue (SLURM: partition).")
@click.option("--account", default=None, help="Account / project charged.")
@click.option("--job-extra", "job_extra", multiple=True,
              help="Extra directive argument, e.g. --job-extra=--constraint=haswell (repeatable; "
                   "replaces the profile's job-extra-directives).")
@click.option("--log-directory", default=None, help="Folder of the job logs.")
@click.option("--local-directory", default=None, help="Node-local scratch for spilling.")
@click.option("--interface", default=None, help="Network interface of the workers (e.g. ib0).")
@_user_errors
def job_script(kind: str, profile: Path | None, cores: int | None, memory: str | None,
               processes: int | None, gpus: int | None, walltime: str | None, queue: str | None,
               account: str | None, job_extra: tuple[str, ...], log_directory: str | None,
               local_directory: str | None, interface: str | None) -> None:
    """Print the exact script each worker job is submitted with.

    Settings: shipped defaults (cluster/profiles.yaml) < --profile < these options,
    e.g. `skysieve cluster job-script --cluster slurm --cores 8 --memory 32GB`.
    """
    from cluster import ClusterError
    from cluster.jobqueue import MissingSettings
    from cluster.jobqueue import job_script as render

    values = {"cores": cores, "memory": memory, "processes": processes, "gpus": gpus,
              "walltime": walltime, "queue": queue, "account": account,
              "job-extra-directives": list(job_extra) or None, "log-directory": log_directory,
              "local-directory": local_directory, "interface": interface}
    given = {k: v for k, v in values.items() if v is not None}
    try:
        text = render(kind, profile=profile, **given)
    except MissingSettings as exc:
        raise ClusterError(_job_script_fix(exc, kind=kind, profile=profile, given=given)) from exc
    click.echo(text, nl=False)


def _takes_cluster(args: tuple[str, ...]) -> bool:
    """Whether the skysieve sub-command in ``args`` has a ``--cluster`` option."""
    if not args or args[0].startswith("-"):
        return False
    ctx = click.get_current_context()
    root = ctx.find_root().command
    if not isinstance(root, click.Group):
        raise click.UsageError(f"cannot look up the skysieve command {args[0]!r} outside the "
                               "skysieve group; run it as `skysieve submit ... -- "
                               f"{shlex.join(args)}`")
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
    from cluster import ClusterError
    from cluster.jobqueue import MissingSettings

    from pipeline.hpc.submit import submit as run_submit

    try:
        result = run_submit(list(args), profile=profile, kind=kind,
                            add_cluster_options=_takes_cluster(args), dry_run=dry_run)
    except MissingSettings as exc:
        again = ["skysieve", "submit", "--profile", str(profile), "--cluster", kind,
                 *(["--dry-run"] if dry_run else []), "--", *args]
        raise ClusterError(f"{profile}: {' and '.join(exc.missing)} per job must be set for "
                           f"--cluster {kind}. Add to the profile:\n{_snippet(exc.fix)}\n"
                           f"then run again: {shlex.join(again)}") from exc
    if dry_run:
        click.echo(result.text, nl=False)
    click.echo(result.describe())
