"""LSF: worker jobs through dask-jobqueue's ``LSFCluster``, quoted, submitted as ``bsub < script``."""

from __future__ import annotations

import math
import re
from typing import Any

from dask_jobqueue.lsf import LSFCluster, LSFJob, lsf_detect_units, lsf_format_bytes_ceil

from cluster.errors import ClusterError
from cluster.jobqueue import JobMixin, directive, walltime_seconds

__all__ = ["Job", "Cluster", "header", "job_id", "walltime", "PREFIX", "SUBMIT", "SUBMIT_STDIN"]

PREFIX = "#BSUB"
SUBMIT = ("bsub",)
SUBMIT_STDIN = True  # LSF reads #BSUB directives only from a script on stdin


def walltime(value: str | int) -> str:
    """LSF's ``HH:MM`` (rounded up to the minute) for a walltime."""
    minutes = math.ceil(walltime_seconds(value) / 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def header(s: dict[str, Any], *, name: str, cores: int, memory: int, gpus: int | None) -> list[str]:
    """``#BSUB`` lines of one job; ``memory`` in bytes. Logs: ``log-directory/NAME-%J.out``."""
    lines = [directive(PREFIX, "-J", name)]
    if s["log-directory"] is not None:
        lines.append(directive(PREFIX, "-o", f"{s['log-directory']}/{name}-%J.out"))
        lines.append(directive(PREFIX, "-e", f"{s['log-directory']}/{name}-%J.err"))
    if s["queue"] is not None:
        lines.append(directive(PREFIX, "-q", s["queue"]))
    if s["account"] is not None:
        lines.append(directive(PREFIX, "-P", s["account"]))
    lines.append(directive(PREFIX, "-n", str(int(cores))))
    if cores > 1:
        lines.append(directive(PREFIX, "-R", "span[hosts=1]"))
    units = s["lsf-units"] or lsf_detect_units()
    lines.append(directive(PREFIX, "-M", lsf_format_bytes_ceil(memory, lsf_units=units)))
    lines.append(directive(PREFIX, "-W", walltime(s["walltime"])))
    if gpus:
        lines.append(directive(PREFIX, "-gpu", f"num={int(gpus)}"))
    return lines


def job_id(out: str) -> str:
    """The job id in ``bsub`` output (``Job <123> is submitted to queue <normal>.``)."""
    m = re.search(r"<(\d+)>", out)
    if m is None:
        raise ClusterError(f"no job id in bsub output {out!r}")
    return m.group(1)


class Job(JobMixin, LSFJob):
    """One LSF job running skysieve workers."""

    kind = "lsf"

    def __init__(self, scheduler: str | None = None, name: str | None = None, *,
                 skysieve: dict[str, Any], **kwargs: Any) -> None:
        units = skysieve["lsf-units"] or lsf_detect_units()
        super().__init__(scheduler=scheduler, name=name, lsf_units=units, use_stdin=True,
                         **kwargs)
        self._render(skysieve)

    async def _submit_job(self, script_filename: str) -> str:
        # dask-jobqueue pipes through a shell (`bsub< FILE`); pass the file as stdin instead.
        with open(script_filename) as stdin:
            return await self._call(["bsub"], stdin=stdin)


class Cluster(LSFCluster):
    """dask-jobqueue's ``LSFCluster`` with skysieve's quoted job scripts."""

    job_cls = Job
