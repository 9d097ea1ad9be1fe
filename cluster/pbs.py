"""PBS (PBS Pro / OpenPBS / Torque): worker jobs through dask-jobqueue's ``PBSCluster``, quoted."""

from __future__ import annotations

import re
from typing import Any

from dask_jobqueue.pbs import PBSCluster, PBSJob, pbs_format_bytes_ceil

from cluster.errors import ClusterError
from cluster.jobqueue import JobMixin, directive, walltime_seconds

__all__ = ["Job", "Cluster", "header", "job_id", "walltime", "PREFIX", "SUBMIT", "SUBMIT_STDIN"]

PREFIX = "#PBS"
SUBMIT = ("qsub",)
SUBMIT_STDIN = False


def walltime(value: str | int) -> str:
    """PBS's ``HH:MM:SS`` (hours may exceed 24) for a walltime."""
    s = walltime_seconds(value)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def header(s: dict[str, Any], *, name: str, cores: int, memory: int, gpus: int | None) -> list[str]:
    """``#PBS`` lines of one job; ``memory`` in bytes. Logs go to ``log-directory/``."""
    lines = [directive(PREFIX, "-N", name)]
    if s["queue"] is not None:
        lines.append(directive(PREFIX, "-q", s["queue"]))
    if s["account"] is not None:
        lines.append(directive(PREFIX, "-A", s["account"]))
    select = f"select=1:ncpus={int(cores)}:mem={pbs_format_bytes_ceil(memory)}"
    if gpus:
        select += f":ngpus={int(gpus)}"
    lines.append(directive(PREFIX, "-l", select))
    lines.append(directive(PREFIX, "-l", f"walltime={walltime(s['walltime'])}"))
    if s["log-directory"] is not None:
        lines.append(directive(PREFIX, "-o", f"{s['log-directory']}/"))
        lines.append(directive(PREFIX, "-e", f"{s['log-directory']}/"))
    return lines


def job_id(out: str) -> str:
    """The job id printed by ``qsub`` (``123.server``)."""
    m = re.search(r"(\d+(?:\.[\w.-]+)?)", out)
    if m is None:
        raise ClusterError(f"no job id in qsub output {out!r}")
    return m.group(1)


class Job(JobMixin, PBSJob):
    """One PBS job running skysieve workers."""

    kind = "pbs"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *,
                 skysieve: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(scheduler=scheduler, name=name, **kwargs)
        self._render(skysieve)


class Cluster(PBSCluster):
    """dask-jobqueue's ``PBSCluster`` with skysieve's quoted job scripts."""

    job_cls = Job
