"""Shared logic of the batch-system clusters (SLURM, PBS, LSF) built on dask-jobqueue.

Settings come from ``cluster/profiles.yaml`` (shipped defaults, loaded into
``dask.config`` under ``skysieve.cluster.<kind>``), then a user profile
(``--profile FILE``: a flat YAML mapping of the same keys), then call arguments.

dask-jobqueue joins the worker command and the directives without quoting;
here every value from a profile or a file name is quoted with :func:`shlex.quote`
(or refused when it holds a newline, which would end a ``#SBATCH`` comment line
and start a shell command). Each scheduler module (``slurm.py``, ``pbs.py``,
``lsf.py``) only builds its directives.

Workers retire ``lifetime-margin`` (give or take ``lifetime-stagger``) before
the walltime, so a job ending never kills a task half done; adaptive scaling
then submits a fresh job. Workers run without ``MALLOC_TRIM_THRESHOLD_``
(docs/architecture.md: it made small torch models 2-3x slower).
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Sequence

import dask.config
import yaml
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from cluster.errors import ClusterError

__all__ = [
    "KINDS", "REQUIRED", "MissingSettings", "load_profile", "settings", "walltime_seconds",
    "lifetime", "worker_argv", "prologue", "directive", "job_script", "batch_script",
    "submit_script", "start", "JobMixin",
]

KINDS = ("slurm", "pbs", "lsf")
REQUIRED = ("cores", "memory")

_DEFAULTS = Path(__file__).with_name("profiles.yaml")
dask.config.update_defaults(yaml.safe_load(_DEFAULTS.read_text()))

_EXAMPLE = {"cores": 8, "memory": "24GB"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WALLTIME = re.compile(r"(?:(?P<d>\d+)-)?(?P<h>\d+):(?P<m>[0-5]?\d)(?::(?P<s>[0-5]?\d))?\Z")
_INTS = ("cores", "processes", "gpus", "min-jobs", "max-jobs", "driver-cores")
_LISTS = ("job-extra-directives", "job-directives-skip", "job-script-prologue", "worker-extra-args")
_STRINGS = ("name", "queue", "account", "interface", "scheduler-host", "dashboard-address",
            "local-directory", "log-directory", "python", "shebang", "lsf-units")


def _backend(kind: str) -> ModuleType:
    if kind not in KINDS:
        raise ClusterError(f"unknown batch system {kind!r}; use one of {', '.join(KINDS)}")
    return importlib.import_module(f"cluster.{kind}")


def _defaults(kind: str) -> dict[str, Any]:
    _backend(kind)
    return dict(dask.config.get(f"skysieve.cluster.{kind}"))


def _snippet(kind: str, values: dict[str, Any]) -> str:
    return "\n".join(f"  {k}: {v}" for k, v in values.items())


def load_profile(path: Path | str, *, kind: str = "slurm") -> dict[str, Any]:
    """Read a cluster profile: a flat YAML mapping of the keys in ``cluster/profiles.yaml``.

    Parameters
    ----------
    path : Path or str
        The YAML file, read with :func:`yaml.safe_load` (tags such as
        ``!!python/object`` are refused).
    kind : {"slurm", "pbs", "lsf"}, default: "slurm"
        The batch system whose keys are valid.

    Returns
    -------
    dict
        The profile's settings, keys spelled with hyphens (``min_jobs`` is read as ``min-jobs``).

    Raises
    ------
    ClusterError
        Unreadable YAML, a refused tag, not a mapping, or unknown keys (named,
        with the valid ones listed).
    """
    path = Path(path)
    valid = _defaults(kind)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClusterError(f"{path}: cannot read the cluster profile ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        raise ClusterError(f"{path}: refused YAML tag in the cluster profile ({exc.problem}); "
                           "profiles are plain YAML mappings read with yaml.safe_load") from exc
    except yaml.YAMLError as exc:
        raise ClusterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: a cluster profile is a YAML mapping of settings, got "
                           f"{type(data).__name__}; e.g.\n{_snippet(kind, _EXAMPLE)}")
    out = {str(k).replace("_", "-"): v for k, v in data.items()}
    unknown = sorted(set(out) - set(valid))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ClusterError(f"{path}: unknown key(s) {', '.join(hints)} in the {kind} profile; "
                           f"valid keys: {', '.join(sorted(valid))}")
    return out


def walltime_seconds(value: str | int) -> int:
    """Seconds in a walltime ``"[D-]HH:MM[:SS]"`` (or an int of seconds)."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        m = _WALLTIME.match(str(value).strip())
        if m is None:
            raise ClusterError(f"walltime {value!r} is not [D-]HH:MM[:SS]; e.g. walltime: \"04:00:00\"")
        d, h, mi, s = (int(m.group(g) or 0) for g in "dhms")
        seconds = ((d * 24 + h) * 60 + mi) * 60 + s
    if seconds <= 0:
        raise ClusterError(f"walltime {value!r} must be positive; e.g. walltime: \"04:00:00\"")
    return seconds


class MissingSettings(ClusterError):
    """Required settings (``cores``, ``memory``) that neither the defaults nor the profile set.

    Attributes
    ----------
    kind : str
        The batch system.
    origin : str
        The profile's path, or ``"the KIND cluster settings"`` without one.
    missing : tuple of str
        The unset keys, in :data:`REQUIRED` order.
    fix : dict
        Every required key with its value, or an example value where it is missing.
    """

    def __init__(self, kind: str, origin: str, missing: Sequence[str], fix: dict[str, Any]) -> None:
        self.kind, self.origin, self.missing, self.fix = kind, origin, tuple(missing), dict(fix)
        super().__init__(
            f"{origin}: {' and '.join(missing)} per job must be set for --cluster {kind}. "
            f"Add to the profile:\n{_snippet(kind, fix)}\n"
            f"or call cluster.connect({kind!r}, profile=PROFILE) with them in PROFILE")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.kind, self.origin, self.missing, self.fix)


def _check(kind: str, s: dict[str, Any], origin: str) -> None:
    missing = [k for k in REQUIRED if s.get(k) is None]
    if missing:
        fix = {k: s.get(k) if s.get(k) is not None else _EXAMPLE[k] for k in REQUIRED}
        raise MissingSettings(kind, origin, missing, fix)
    for key in _INTS:
        v = s.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ClusterError(f"{origin}: {key} must be a whole number >= 0, got {v!r}")
    if s["cores"] < 1:
        raise ClusterError(f"{origin}: cores must be at least 1, got {s['cores']!r}")
    if s.get("processes") is not None and not 1 <= s["processes"] <= s["cores"]:
        raise ClusterError(f"{origin}: processes must be between 1 and cores ({s['cores']}), "
                           f"got {s['processes']!r}")
    if s["min-jobs"] > s["max-jobs"]:
        raise ClusterError(f"{origin}: min-jobs ({s['min-jobs']}) is above max-jobs "
                           f"({s['max-jobs']}); e.g. min-jobs: 1, max-jobs: 4")
    for key in ("memory", "driver-memory"):
        try:
            parse_bytes(str(s[key]))
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"{origin}: {key} {s[key]!r} is not an amount of memory; "
                               "e.g. memory: 24GB") from exc
    for key in _STRINGS:
        v = s.get(key)
        if v is not None and not isinstance(v, (str, int, float)):
            raise ClusterError(f"{origin}: {key} must be a string, got {type(v).__name__}")
    for key in _LISTS:
        v = s.get(key)
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
            raise ClusterError(f"{origin}: {key} must be a list of strings, got {v!r}")
    env = s.get("env")
    if not isinstance(env, dict):
        raise ClusterError(f"{origin}: env must be a mapping NAME: value, got {env!r}")
    for name in env:
        if not _ENV_NAME.match(str(name)):
            raise ClusterError(f"{origin}: env name {name!r} is not a valid variable name")
    for key, v in s.items():
        for item in (v if isinstance(v, list) else v.values() if isinstance(v, dict) else [v]):
            if isinstance(item, str) and _CONTROL.search(item):
                raise ClusterError(f"{origin}: {key} holds a newline or control character "
                                   f"({item!r}); write it on one line")
    walltime_seconds(s["walltime"])
    if s.get("driver-walltime") is not None:
        walltime_seconds(s["driver-walltime"])
    lifetime(s)


def settings(kind: str, *, profile: Path | str | None = None, **overrides: Any) -> dict[str, Any]:
    """Resolve the settings of a batch-system cluster: shipped defaults < profile < ``overrides``.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
    profile : Path or str, optional
        A YAML profile (see :func:`load_profile`).
    **overrides
        Settings by name (``min_jobs=2`` or ``**{"min-jobs": 2}``); ``None`` keeps the profile's.

    Returns
    -------
    dict
        Every key of ``cluster/profiles.yaml``, validated; ``python`` filled in
        with :data:`sys.executable`, ``log-directory`` made absolute.

    Raises
    ------
    MissingSettings
        A missing ``cores``/``memory`` (the message shows the profile lines to add).
    ClusterError
        A bad value, an unknown key.
    """
    s = _defaults(kind)
    origin = str(profile) if profile is not None else f"the {kind} cluster settings"
    if profile is not None:
        s.update(load_profile(profile, kind=kind))
    extra = {k.replace("_", "-"): v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(extra) - set(s))
    if unknown:
        raise ClusterError(f"unknown {kind} setting(s) {unknown}; valid: {', '.join(sorted(s))}")
    s.update(extra)
    _check(kind, s, origin)
    if s["python"] is None:
        s["python"] = sys.executable
    if s["log-directory"] is not None:
        s["log-directory"] = str(Path(str(s["log-directory"])).expanduser().absolute())
    if s["processes"] is None:
        from cluster.local import default_shape

        s["processes"] = default_shape(s["cores"])[0]
    return s


def lifetime(s: dict[str, Any]) -> tuple[int, int]:
    """``(lifetime, stagger)`` of the workers in seconds: walltime - margin, and the stagger.

    A worker retires after ``lifetime ± stagger``; the margin must exceed the
    stagger, and the walltime the margin plus the stagger.
    """
    wall = walltime_seconds(s["walltime"])
    try:
        margin = int(parse_timedelta(s["lifetime-margin"], default="s"))
        stagger = int(parse_timedelta(s["lifetime-stagger"], default="s"))
    except (ValueError, TypeError, KeyError) as exc:
        raise ClusterError(f"lifetime-margin {s['lifetime-margin']!r} / lifetime-stagger "
                           f"{s['lifetime-stagger']!r}: not durations; e.g. 5 minutes") from exc
    if stagger >= margin:
        raise ClusterError(f"lifetime-stagger ({stagger} s) must be below lifetime-margin "
                           f"({margin} s), or workers could outlive the walltime")
    if wall <= margin + stagger:
        need = math.ceil((margin + stagger + 60) / 60)
        raise ClusterError(f"walltime {s['walltime']!r} leaves no time to work: workers retire "
                           f"{margin} s (+- {stagger} s) before it ends; ask for at least "
                           f"walltime: \"{need // 60:02d}:{need % 60:02d}:00\" or lower "
                           "lifetime-margin / lifetime-stagger")
    return wall - margin, stagger


def worker_argv(s: dict[str, Any], *, scheduler: str, name: str) -> list[str]:
    """The ``dask worker`` command of one job, as an argument list (quote with :func:`shlex.join`)."""
    life, stagger = lifetime(s)
    memory = parse_bytes(str(s["memory"]))
    argv = [str(s["python"]), "-m", "distributed.cli.dask_worker", scheduler,
            "--name", str(name),
            "--nthreads", str(max(1, s["cores"] // s["processes"])),
            "--memory-limit", format_bytes(memory / s["processes"]).replace(" ", "")]
    if s["processes"] > 1:
        argv += ["--nworkers", str(s["processes"])]
    argv += ["--nanny", "--death-timeout", str(s["death-timeout"]),
             "--lifetime", f"{life}s", "--lifetime-stagger", f"{stagger}s"]
    if s["local-directory"] is not None:
        argv += ["--local-directory", str(s["local-directory"])]
    if s["interface"] is not None:
        argv += ["--interface", str(s["interface"])]
    if s["gpus"]:
        argv += ["--resources", f"GPU={s['gpus']}"]
    argv += [str(a) for a in s["worker-extra-args"]]
    return argv


def prologue(s: dict[str, Any]) -> list[str]:
    """Shell lines run before the worker: MALLOC_TRIM_THRESHOLD_ unset, ``env``, the profile's lines."""
    lines = [
        "unset MALLOC_TRIM_THRESHOLD_",
        "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="
        + shlex.quote('{"MALLOC_TRIM_THRESHOLD_": None}'),
    ]
    lines += [f"export {name}={shlex.quote(str(value))}" for name, value in s["env"].items()]
    lines += [str(line) for line in s["job-script-prologue"]]
    return lines


def directive(prefix: str, *args: str) -> str:
    """One directive line, ``prefix`` then each argument quoted: ``#SBATCH -J 'my job'``."""
    for arg in args:
        if _CONTROL.search(str(arg)):
            raise ClusterError(f"{prefix} directive argument {arg!r} holds a newline or control "
                               "character; write it on one line")
    return " ".join([prefix, *(shlex.quote(str(a)) for a in args)])


def _header(backend: ModuleType, s: dict[str, Any], *, name: str, cores: int, memory: str,
            gpus: int | None) -> str:
    lines = backend.header(s, name=name, cores=cores, memory=parse_bytes(str(memory)), gpus=gpus)
    skip = [str(x) for x in s["job-directives-skip"]]
    lines = [line for line in lines if not any(x in line for x in skip)]
    for extra in s["job-extra-directives"]:
        if _CONTROL.search(str(extra)):
            raise ClusterError(f"job-extra-directives entry {extra!r} holds a newline; "
                               "one directive per entry")
        lines.append(f"{backend.PREFIX} {extra}")
    return "\n".join(lines)


def batch_script(kind: str, command: Sequence[str], *, settings: dict[str, Any], name: str,
                 cores: int, memory: str, gpus: int | None = None,
                 extra_prologue: Sequence[str] = ()) -> str:
    """A complete batch script: shebang, directives, prologue, then ``command`` quoted.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
    command : sequence of str
        The program and its arguments; each is quoted with :func:`shlex.quote`.
    settings : dict
        Resolved settings (:func:`settings`).
    name : str
        Job name.
    cores, memory, gpus
        Resources of this job.
    extra_prologue : sequence of str
        Shell lines appended to the prologue (already quoted by the caller).
    """
    backend = _backend(kind)
    header = _header(backend, settings, name=name, cores=cores, memory=memory, gpus=gpus)
    body = [*prologue(settings), *extra_prologue, shlex.join([str(c) for c in command])]
    return "\n".join([str(settings["shebang"]), "", header, *body]) + "\n"


class JobMixin:
    """Re-renders a dask-jobqueue job's directives and worker command from skysieve settings.

    A scheduler module combines it with dask-jobqueue's job class
    (``class SlurmJob(JobMixin, SLURMJob)``) and sets ``kind``.
    """

    kind: str = ""

    def _render(self, s: dict[str, Any]) -> None:
        backend = _backend(self.kind)
        self.skysieve_settings = s
        self.job_header = _header(backend, s, name=self.job_name, cores=s["cores"],
                                  memory=s["memory"], gpus=s["gpus"])
        self._job_script_prologue = prologue(s)
        self._command_template = shlex.join(
            worker_argv(s, scheduler=str(self.scheduler), name=str(self.name)))

    def job_script(self) -> str:
        """The script submitted for this job."""
        return "\n".join([self.shebang, "", self.job_header, *self._job_script_prologue,
                          self._command_template]) + "\n"


def _job_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    return {"cores": s["cores"], "memory": str(s["memory"]), "processes": s["processes"],
            "python": s["python"], "job_name": s["name"], "shebang": s["shebang"],
            "death_timeout": s["death-timeout"], "skysieve": s}


def job_script(kind: str, *, profile: Path | str | None = None,
               scheduler: str = "tcp://SCHEDULER-ADDRESS:8786", **overrides: Any) -> str:
    """The exact script one worker job would be submitted with (no scheduler is started).

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
    profile : Path or str, optional
        YAML profile (see :func:`load_profile`).
    scheduler : str
        Scheduler address written into the worker command (known once it runs).
    **overrides
        Settings by name, over the profile.
    """
    s = settings(kind, profile=profile, **overrides)
    backend = _backend(kind)
    job = backend.Job(scheduler, name="skysieve-worker-0", **_job_kwargs(s))
    return job.job_script()


def submit_script(kind: str, script: Path, *, cwd: Path | None = None) -> str:
    """Submit a batch script with ``sbatch`` / ``qsub`` / ``bsub`` and return the job id.

    The command is an argument list (no shell); ``bsub`` reads the script on stdin.
    """
    backend = _backend(kind)
    argv = [*backend.SUBMIT, *([] if backend.SUBMIT_STDIN else [str(script)])]
    try:
        with open(script, "rb") as stdin:
            proc = subprocess.run(argv, stdin=stdin if backend.SUBMIT_STDIN else subprocess.DEVNULL,
                                  capture_output=True, text=True, cwd=cwd, timeout=120)
    except FileNotFoundError as exc:
        raise ClusterError(f"{argv[0]} not found: submit from a {kind} login node, or choose "
                           "another --cluster") from exc
    if proc.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    return backend.job_id(proc.stdout)


@contextmanager
def start(kind: str, *, profile: Path | str | None = None, n_workers: int | None = None,
          **overrides: Any) -> Iterator[Any]:
    """Start a dask-jobqueue cluster that scales between ``min-jobs`` and ``max-jobs``; close it on exit.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
    profile : Path or str, optional
        YAML profile (see :func:`load_profile`).
    n_workers : int, optional
        A fixed number of worker processes instead of adaptive scaling.
    **overrides
        Settings by name, over the profile.

    Yields
    ------
    dask_jobqueue.JobQueueCluster
        Closing it cancels its jobs.
    """
    s = settings(kind, profile=profile, **overrides)
    backend = _backend(kind)
    if s["log-directory"] is not None:
        Path(s["log-directory"]).mkdir(parents=True, exist_ok=True)
    scheduler_options: dict[str, Any] = {"dashboard_address": s["dashboard-address"]}
    if s["scheduler-host"] is not None:
        scheduler_options["host"] = s["scheduler-host"]
    jc = backend.Cluster(interface=s["interface"], scheduler_options=scheduler_options,
                         **_job_kwargs(s))
    try:
        if n_workers is not None:
            jc.scale(n=n_workers)
        else:
            jc.adapt(minimum_jobs=s["min-jobs"], maximum_jobs=s["max-jobs"])
        yield jc
    finally:
        jc.close()
