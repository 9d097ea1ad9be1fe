"""SLURM: worker jobs through dask-jobqueue's ``SLURMCluster``, directives built here, quoted."""

from __future__ import annotations

import re
from typing import Any

from dask_jobqueue.slurm import SLURMCluster, SLURMJob, slurm_format_bytes_ceil

from cluster.errors import ClusterError
from cluster.jobqueue import JobMixin, directive, walltime_seconds

__all__ = ["Job", "Cluster", "header", "job_id", "walltime", "PREFIX", "SUBMIT", "SUBMIT_STDIN"]

PREFIX = "#SBATCH"
SUBMIT = ("sbatch", "--parsable")
SUBMIT_STDIN = False


def walltime(value: str | int) -> str:
    """SLURM's ``[D-]HH:MM:SS`` for a walltime (see :func:`cluster.jobqueue.walltime_seconds`)."""
    s = walltime_seconds(value)
    d, s = divmod(s, 86400)
    text = f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{d}-{text}" if d else text


def header(s: dict[str, Any], *, name: str, cores: int, memory: int, gpus: int | None) -> list[str]:
    """``#SBATCH`` lines of one job; ``memory`` in bytes. Logs: ``log-directory/NAME-%j.out``."""
    lines = [directive(PREFIX, "-J", name)]
    if s["log-directory"] is not None:
        lines.append(directive(PREFIX, "-o", f"{s['log-directory']}/{name}-%j.out"))
        lines.append(directive(PREFIX, "-e", f"{s['log-directory']}/{name}-%j.err"))
    if s["queue"] is not None:
        lines.append(directive(PREFIX, "-p", s["queue"]))
    if s["account"] is not None:
        lines.append(directive(PREFIX, "-A", s["account"]))
    lines.append(directive(PREFIX, "-n", "1"))
    lines.append(directive(PREFIX, f"--cpus-per-task={int(cores)}"))
    lines.append(directive(PREFIX, f"--mem={slurm_format_bytes_ceil(memory)}"))
    lines.append(directive(PREFIX, "-t", walltime(s["walltime"])))
    if gpus:
        lines.append(directive(PREFIX, f"--gres=gpu:{int(gpus)}"))
    return lines


def job_id(out: str) -> str:
    """The job id in ``sbatch --parsable`` output (``123`` or ``123;cluster``)."""
    m = re.search(r"(\d+)", out)
    if m is None:
        raise ClusterError(f"no job id in sbatch output {out!r}")
    return m.group(1)


class Job(JobMixin, SLURMJob):
    """One SLURM job running skysieve workers."""

    kind = "slurm"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *,
                 skysieve: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(scheduler=scheduler, name=name, **kwargs)
        self._render(skysieve)


class Cluster(SLURMCluster):
    """dask-jobqueue's ``SLURMCluster`` with skysieve's quoted job scripts."""

    job_cls = Job
