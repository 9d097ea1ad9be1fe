"""Rendered SLURM / PBS / LSF job scripts, profiles and `skysieve submit --dry-run`: no batch system.

Hostile values (spaces, `$()`, `;`, quotes) are proved inert by `bash -n` and by
`shlex.split` round trips; nothing from a rendered script is ever executed.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import dask.config
import pytest
from click.testing import CliRunner

from cluster import ClusterError
from cluster import jobqueue

from _job_scripts import bash_n, profile_file  # tests/cluster is on sys.path

HOSTILE = "/tmp/sky sieve $(touch /tmp/pwned); echo 'x' \"y\" `id`"
PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS", "lsf": "#BSUB"}


@pytest.mark.parametrize("kind", jobqueue.KINDS)
def test_hostile_values_are_quoted(kind: str, tmp_path: Path) -> None:
    profile = profile_file(tmp_path, cores=4, memory="8GB", queue="night; rm -rf ~",
                       account="it's $(me)", **{"log-directory": HOSTILE, "local-directory": HOSTILE,
                                               "env": {"SKY_NOTE": HOSTILE},
                                               "worker-extra-args": ["--name-suffix", HOSTILE]})
    script = jobqueue.job_script(kind, profile=profile, scheduler="tcp://10.0.0.1:8786")
    bash_n(script, tmp_path)
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    directives = [line for line in lines if line.startswith(PREFIX[kind])]
    commands = [line for line in lines[1:] if line and not line.startswith("#")]
    # every directive splits back into the values it was given
    values = [arg for line in directives for arg in shlex.split(line)[1:]]
    assert "night; rm -rf ~" in values
    assert "it's $(me)" in values
    assert any(v.startswith(HOSTILE + "/") for v in values), directives
    # the worker command is the last line and round-trips to the exact argument list
    s = jobqueue.settings(kind, profile=profile)
    expected = jobqueue.worker_argv(s, scheduler="tcp://10.0.0.1:8786", name="skysieve-worker-0")
    assert shlex.split(commands[-1]) == expected
    assert expected[expected.index("--local-directory") + 1] == HOSTILE
    assert expected[0] == sys.executable
    assert f"export SKY_NOTE={shlex.quote(HOSTILE)}" in commands
    assert shlex.split(commands[commands.index(f"export SKY_NOTE={shlex.quote(HOSTILE)}")]) == [
        "export", f"SKY_NOTE={HOSTILE}"]


@pytest.mark.parametrize("kind", jobqueue.KINDS)
def test_malloc_trim_unset_and_lifetime_below_walltime(kind: str, tmp_path: Path) -> None:
    script = jobqueue.job_script(kind, cores=2, memory="4GB", walltime="02:00:00")
    assert "unset MALLOC_TRIM_THRESHOLD_" in script.splitlines()
    export = next(line for line in script.splitlines()
                  if line.startswith("export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="))
    value = shlex.split(export)[1].split("=", 1)[1]
    # dask reads this variable with ast.literal_eval: the key survives with its case
    import ast

    assert ast.literal_eval(value) == {"MALLOC_TRIM_THRESHOLD_": None}
    argv = shlex.split(script.splitlines()[-1])
    assert argv[argv.index("--lifetime") + 1] == f"{2 * 3600 - 5 * 60}s"
    assert argv[argv.index("--lifetime-stagger") + 1] == "240s"


def test_directives_per_scheduler(tmp_path: Path) -> None:
    common = dict(cores=8, memory="24GB", processes=2, gpus=2, walltime="1-02:30:00",
                  queue="gpu", account="survey")
    slurm = jobqueue.job_script("slurm", **common)
    for line in ["#SBATCH -J skysieve-worker", "#SBATCH -p gpu", "#SBATCH -A survey",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=23G", "#SBATCH -t 1-02:30:00",
                 "#SBATCH --gres=gpu:2"]:
        assert line in slurm.splitlines(), line
    pbs = jobqueue.job_script("pbs", **common)
    assert "#PBS -l select=1:ncpus=8:mem=23GB:ngpus=2" in pbs.splitlines()
    assert "#PBS -l walltime=26:30:00" in pbs.splitlines()
    lsf = jobqueue.job_script("lsf", **common, lsf_units="mb")
    for line in ["#BSUB -n 8", "#BSUB -R 'span[hosts=1]'", "#BSUB -M 24000", "#BSUB -W 26:30",
                 "#BSUB -gpu num=2", "#BSUB -P survey", "#BSUB -q gpu"]:
        assert line in lsf.splitlines(), line
    argv = shlex.split(slurm.splitlines()[-1])
    assert argv[argv.index("--nworkers") + 1] == "2"
    assert argv[argv.index("--nthreads") + 1] == "4"
    assert argv[argv.index("--resources") + 1] == "GPU=2"


def test_extra_and_skipped_directives(tmp_path: Path) -> None:
    script = jobqueue.job_script("slurm", cores=2, memory="4GB",
                                 job_extra_directives=["--constraint=haswell"],
                                 job_directives_skip=["--mem"])
    lines = script.splitlines()
    assert "#SBATCH --constraint=haswell" in lines
    assert not any(line.startswith("#SBATCH --mem") for line in lines)


def test_shipped_defaults_and_dask_config_override() -> None:
    assert dask.config.get("skysieve.cluster.slurm.walltime") == "01:00:00"
    assert dask.config.get("skysieve.cluster.pbs.lifetime-margin") == "5 minutes"
    with dask.config.set({"skysieve.cluster.slurm.queue": "night"}):
        assert "#SBATCH -p night" in jobqueue.job_script("slurm", cores=1, memory="1GB").splitlines()
    assert "#SBATCH -p night" not in jobqueue.job_script("slurm", cores=1, memory="1GB")


def test_missing_cores_shows_the_fix(tmp_path: Path) -> None:
    profile = profile_file(tmp_path, memory="16GB")
    with pytest.raises(ClusterError, match=r"cores per job must be set") as info:
        jobqueue.settings("slurm", profile=profile)
    assert "  cores: 8\n  memory: 16GB" in str(info.value)
    assert str(profile) in str(info.value)
    with pytest.raises(ClusterError, match=r"cores and memory"):
        jobqueue.settings("pbs")


def test_profile_refuses_python_tags(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"cores: !!python/object/apply:os.system ['touch {marker}']\nmemory: 1GB\n")
    with pytest.raises(ClusterError, match="refused YAML tag"):
        jobqueue.load_profile(path)
    assert not marker.exists()


def test_profile_unknown_keys_named_with_valid_ones(tmp_path: Path) -> None:
    profile = profile_file(tmp_path, coress=4, memory="1GB", walltme="01:00:00")
    with pytest.raises(ClusterError) as info:
        jobqueue.load_profile(profile)
    message = str(info.value)
    assert "'coress' (did you mean 'cores'?)" in message
    assert "'walltme' (did you mean 'walltime'?)" in message
    assert "valid keys:" in message and "job-script-prologue" in message


def test_profile_underscores_and_bad_values(tmp_path: Path) -> None:
    s = jobqueue.settings("slurm", profile=profile_file(tmp_path, cores=2, memory="2GB", min_jobs=2,
                                                    max_jobs=3))
    assert (s["min-jobs"], s["max-jobs"]) == (2, 3)
    bad = [({"queue": "a\nrm -rf ~"}, "newline"),
           ({"walltime": "soon"}, "not \\[D-\\]HH:MM"),
           ({"walltime": "00:08:00"}, "leaves no time to work"),
           ({"memory": "lots"}, "not an amount of memory"),
           ({"cores": "8"}, "whole number"),
           ({"min-jobs": 5, "max-jobs": 2}, "above max-jobs"),
           ({"env": {"1BAD": "x"}}, "not a valid variable name"),
           ({"job-extra-directives": "--exclusive"}, "list of strings")]
    for values, match in bad:
        profile = profile_file(tmp_path, **{"cores": 2, "memory": "2GB", **values})
        with pytest.raises(ClusterError, match=match):
            jobqueue.settings("slurm", profile=profile)
    (tmp_path / "list.yaml").write_text("- cores\n")
    with pytest.raises(ClusterError, match="YAML mapping"):
        jobqueue.load_profile(tmp_path / "list.yaml")


def test_walltime_formats() -> None:
    from cluster import lsf, pbs, slurm

    assert jobqueue.walltime_seconds("1-00:00:01") == 86401
    assert jobqueue.walltime_seconds("2:30") == 9000
    assert (slurm.walltime("25:00:00"), pbs.walltime("25:00:00"), lsf.walltime("00:30:30")) == (
        "1-01:00:00", "25:00:00", "00:31")


def test_job_ids_from_submit_output() -> None:
    from cluster import lsf, pbs, slurm

    assert slurm.job_id("1234;cluster\n") == "1234"
    assert pbs.job_id("5678.pbs01.example.org\n") == "5678.pbs01.example.org"
    assert lsf.job_id("Job <91011> is submitted to queue <normal>.\n") == "91011"
    for backend in (slurm, pbs, lsf):
        with pytest.raises(ClusterError, match="no job id"):
            backend.job_id("error: Batch job submission failed")


def test_submit_without_the_scheduler_command(tmp_path: Path) -> None:
    if shutil.which("bsub") is not None:
        pytest.skip("bsub is installed here")
    script = tmp_path / "job.sh"
    script.write_text("#!/usr/bin/env bash\ntrue\n")
    with pytest.raises(ClusterError, match="bsub not found"):
        jobqueue.submit_script("lsf", script)


def test_cli_job_script_matches_library(tmp_path: Path) -> None:
    from pipeline.cli.cluster import BATCH_KINDS, cluster_group

    assert BATCH_KINDS == jobqueue.KINDS
    profile = profile_file(tmp_path, cores=2, memory="4GB", queue="short")
    result = CliRunner().invoke(cluster_group, ["job-script", "--cluster", "pbs",
                                                "--profile", str(profile)])
    assert result.exit_code == 0, result.output
    assert result.output == jobqueue.job_script("pbs", profile=profile)
    assert "#PBS -q short" in result.output
    bad = profile_file(tmp_path, memory="4GB")
    result = CliRunner().invoke(cluster_group, ["job-script", "--profile", str(bad)])
    assert result.exit_code == 1
    assert result.output.startswith("skysieve: error: ") and "cores: 8" in result.output


def test_submit_dry_run_quotes_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import cli
    from pipeline.cli.cluster import submit

    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    profile = profile_file(tmp_path, cores=2, memory="4GB", **{"log-directory": str(logs),
                                                           "driver-walltime": "10:00:00"})
    args = ["run", "a b.fits", "$(touch x).fits", "--out", "night;1"]
    result = CliRunner().invoke(cli, ["submit", "--profile", str(profile), "--dry-run", "--", *args])
    assert result.exit_code == 0, result.output
    script = result.output.split("dry run: nothing submitted")[0]
    bash_n(script, tmp_path)
    lines = script.splitlines()
    assert "#SBATCH -J skysieve-night" in lines and "#SBATCH -t 10:00:00" in lines
    assert shlex.split(lines[-1]) == [sys.executable, "-m", "pipeline.cli", *args, "--cluster",
                                      "slurm", "--profile", str(profile.absolute())]
    assert f"cd {shlex.quote(str(tmp_path))}" in lines
    assert not logs.exists() and not (tmp_path / "x").exists()
    # a command without --cluster (here --version) runs as given
    result = CliRunner().invoke(submit, ["--profile", str(profile), "--dry-run", "--", "--version"])
    assert result.exit_code == 0, result.output
    assert shlex.split(result.output.split("dry run:")[0].splitlines()[-1])[3:] == ["--version"]
    result = CliRunner().invoke(cli, ["submit", "--profile", str(profile), "--", "no-such-command"])
    assert result.exit_code != 0 and "unknown skysieve command 'no-such-command'" in result.output
    # `submit` alone (not under the skysieve group) cannot look a command up: it says so
    result = CliRunner().invoke(submit, ["--profile", str(profile), "--dry-run", "--", *args])
    assert result.exit_code == 2 and "run it as `skysieve submit" in result.output
