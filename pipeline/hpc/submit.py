"""``skysieve submit``: write a batch script that runs a whole ``skysieve`` command, and submit it.

The batch job (the *driver*) runs the scheduler and the client: ``python -m
pipeline.cli ARGS --cluster KIND --profile PROFILE``, which in turn submits the
worker jobs through dask-jobqueue. Every argument is quoted with
:func:`shlex.quote`; the submit command is an argument list (no shell).
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipeline.files import atomic_write

__all__ = ["Submission", "driver_command", "driver_script", "submit"]

_JOB_NAME = "skysieve-night"


@dataclass(frozen=True)
class Submission:
    """A submitted driver job (``job_id=None``: a dry run, nothing written or submitted)."""

    job_id: str | None
    script: Path
    log: Path
    command: tuple[str, ...]
    text: str

    def describe(self) -> str:
        """Lines for the terminal: the job id, where its log and script are."""
        head = (f"submitted job {self.job_id}" if self.job_id is not None
                else "dry run: nothing submitted")
        return f"{head}\nlog: {self.log}\nscript: {self.script}\nruns: {shlex.join(self.command)}"


def driver_command(args: Sequence[str], *, kind: str, profile: Path,
                   add_cluster_options: bool = True) -> list[str]:
    """The command the driver job runs: this interpreter, ``-m pipeline.cli``, then ``args``.

    Parameters
    ----------
    args : sequence of str
        A ``skysieve`` command line without the program name, e.g. ``["run", "a.fits", "--out", "night"]``.
    kind : {"slurm", "pbs", "lsf"}
        The batch system the workers are started on.
    profile : Path
        The cluster profile, passed on as an absolute path.
    add_cluster_options : bool, default: True
        Append ``--cluster KIND --profile PROFILE`` (for commands that take them,
        unless ``args`` already has ``--cluster``).
    """
    argv = [sys.executable, "-m", "pipeline.cli", *[str(a) for a in args]]
    given = any(a == "--cluster" or str(a).startswith("--cluster=") for a in args)
    if add_cluster_options and not given:
        argv += ["--cluster", kind, "--profile", str(Path(profile).absolute())]
    return argv


def _log_dir(settings: dict) -> Path:
    return Path(settings["log-directory"] or Path.cwd() / "skysieve-logs").absolute()


def _log_path(kind: str, log_dir: Path, job_id: str | None) -> Path:
    jid = job_id or "JOBID"
    if kind == "pbs":  # PBS names the output NAME.oNUMBER inside the -o directory
        return log_dir / f"{_JOB_NAME}.o{jid.split('.')[0]}"
    return log_dir / f"{_JOB_NAME}-{jid}.out"


def driver_script(args: Sequence[str], *, profile: Path, kind: str = "slurm",
                  add_cluster_options: bool = True, cwd: Path | None = None) -> tuple[str, dict]:
    """Render the driver job's batch script.

    Returns
    -------
    (str, dict)
        The script and the resolved cluster settings (``log-directory`` filled in).
    """
    from cluster import jobqueue

    settings = dict(jobqueue.settings(kind, profile=profile))
    settings["log-directory"] = str(_log_dir(settings))
    if settings["driver-walltime"] is not None:
        settings["walltime"] = settings["driver-walltime"]
    cwd = Path(cwd or Path.cwd()).absolute()
    command = driver_command(args, kind=kind, profile=profile,
                             add_cluster_options=add_cluster_options)
    script = jobqueue.batch_script(kind, command, settings=settings, name=_JOB_NAME,
                                   cores=settings["driver-cores"],
                                   memory=settings["driver-memory"],
                                   extra_prologue=[f"cd {shlex.quote(str(cwd))}"])
    return script, settings


def submit(args: Sequence[str], *, profile: Path, kind: str = "slurm",
           add_cluster_options: bool = True, dry_run: bool = False) -> Submission:
    """Write the driver job's script into the log directory and submit it.

    Parameters
    ----------
    args : sequence of str
        The ``skysieve`` command line to run in the job, e.g. ``["run", "*.fits", "--out", "night"]``
        (no shell: a glob stays a literal argument).
    profile : Path
        YAML cluster profile (``cluster/profiles.yaml`` lists the keys); ``driver-cores``,
        ``driver-memory`` and ``driver-walltime`` size this job.
    kind : {"slurm", "pbs", "lsf"}, default: "slurm"
    add_cluster_options : bool, default: True
        Append ``--cluster KIND --profile PROFILE`` to ``args``.
    dry_run : bool, default: False
        Render the script only: write and submit nothing.

    Returns
    -------
    Submission
        Job id, script and log paths.

    Raises
    ------
    cluster.ClusterError
        No ``args``, a bad profile, or the submit command failed (its stderr is in the message).
    """
    from cluster import ClusterError, jobqueue

    if not args:
        raise ClusterError("nothing to submit: give the skysieve command after --, "
                         "e.g. skysieve submit --profile p.yaml -- run a.fits --out night")
    script_text, settings = driver_script(args, profile=profile, kind=kind,
                                          add_cluster_options=add_cluster_options)
    log_dir = Path(settings["log-directory"])
    script = log_dir / f"{_JOB_NAME}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.sh"
    command = tuple(driver_command(args, kind=kind, profile=profile,
                                   add_cluster_options=add_cluster_options))
    job_id = None
    if not dry_run:
        log_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(script, script_text)
        job_id = jobqueue.submit_script(kind, script)
    return Submission(job_id=job_id, script=script, log=_log_path(kind, log_dir, job_id),
                      command=command, text=script_text)
