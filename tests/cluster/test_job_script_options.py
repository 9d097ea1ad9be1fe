"""`skysieve cluster job-script` options over the profile, and the fix shown when a setting is
missing: a YAML profile snippet and a corrected command line that both work. No batch system."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster import ClusterError, jobqueue
from pipeline.cli import cli

from _job_scripts import bash_n, profile_file  # tests/cluster is on sys.path


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _job_script(*args: str):
    return _invoke("cluster", "job-script", *args)


def test_cores_and_memory_as_options_without_a_profile(tmp_path: Path) -> None:
    result = _job_script("--cluster", "slurm", "--cores", "8", "--memory", "32GB")
    assert result.exit_code == 0, result.output
    assert result.output == jobqueue.job_script("slurm", cores=8, memory="32GB")
    lines = result.output.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "#SBATCH --cpus-per-task=8" in lines and "#SBATCH -t 01:00:00" in lines
    assert any(line.startswith("#SBATCH --mem=") for line in lines)
    assert "--nworkers 4" in lines[-1] and "--nthreads 2" in lines[-1]
    bash_n(result.output, tmp_path)


def test_options_override_the_profile(tmp_path: Path) -> None:
    profile = profile_file(tmp_path, cores=2, memory="4GB", queue="short", account="old",
                       **{"job-extra-directives": ["--qos=low"]})
    result = _job_script("--profile", str(profile), "--cores", "16", "--partition", "gpu",
                         "--walltime", "02:00:00", "--account", "survey", "--gpus", "1",
                         "--processes", "4", "--job-extra=--constraint=haswell",
                         "--job-extra=--exclusive", "--log-directory", str(tmp_path / "logs"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line in ("#SBATCH --cpus-per-task=16", "#SBATCH -p gpu", "#SBATCH -A survey",
                 "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --constraint=haswell",
                 "#SBATCH --exclusive", f"#SBATCH -o {tmp_path / 'logs'}/skysieve-worker-%j.out"):
        assert line in lines, line
    assert "#SBATCH -p short" not in lines and "#SBATCH -A old" not in lines
    assert "#SBATCH --qos=low" not in lines  # --job-extra replaces the profile's list
    assert "--nworkers 4" in lines[-1] and "--nthreads 4" in lines[-1]
    assert "--resources GPU=1" in lines[-1]
    # the profile's memory still applies
    assert any(line.startswith("#SBATCH --mem=4") for line in lines)


@pytest.mark.parametrize("kind, expect", [
    ("pbs", ["#PBS -q night", "#PBS -l walltime=03:00:00"]),
    ("lsf", ["#BSUB -q night", "#BSUB -n 4", "#BSUB -W 03:00"]),
])
def test_options_for_pbs_and_lsf(kind: str, expect: list[str], tmp_path: Path) -> None:
    result = _job_script("--cluster", kind, "--cores", "4", "--memory", "8GB", "--queue", "night",
                         "--walltime", "03:00:00")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for line in expect:
        assert line in lines, line
    bash_n(result.output, tmp_path)


def test_hostile_option_values_are_quoted(tmp_path: Path) -> None:
    result = _job_script("--cores", "2", "--memory", "2GB", "--queue", "night; rm -rf ~",
                         "--account", "$(id)")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "#SBATCH -p 'night; rm -rf ~'" in lines and "#SBATCH -A '$(id)'" in lines
    bash_n(result.output, tmp_path)
    bad = _job_script("--cores", "2", "--memory", "2GB", "--queue", "a\nrm -rf ~")
    assert bad.exit_code == 1 and "newline" in bad.output


def _fix(output: str) -> tuple[str, list[str], list[list[str]]]:
    """The error's YAML snippet and its suggested command lines (without `skysieve`)."""
    assert output.startswith("skysieve: error: ")
    snippet = "\n".join(line for line in output.splitlines() if line.startswith("  "))
    commands = [shlex.split(line.split("skysieve ", 1)[1]) for line in output.splitlines()
                if "skysieve cluster job-script" in line]
    return snippet, output.splitlines(), commands


def test_missing_settings_without_a_profile_show_a_profile_and_the_command(tmp_path: Path) -> None:
    result = _job_script("--cluster", "slurm", "--queue", "short")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "cores and memory per job must be set for --cluster slurm" in result.output
    snippet, _, commands = _fix(result.output)
    assert snippet == "  cores: 8\n  memory: 24GB"
    assert ("Give them as options: skysieve cluster job-script --cluster slurm --queue short "
            "--cores 8 --memory 24GB") in result.output
    assert "skysieve cluster job-script --cluster slurm --profile slurm.yaml --queue short" \
        in result.output
    # both fixes work: the options as given, and the snippet written as the profile
    options, with_profile = commands
    fixed = _invoke(*options)
    assert fixed.exit_code == 0, fixed.output
    assert "#SBATCH -p short" in fixed.output.splitlines()
    (tmp_path / "slurm.yaml").write_text(snippet + "\n")
    with_profile[with_profile.index("--profile") + 1] = str(tmp_path / "slurm.yaml")
    assert _invoke(*with_profile).output == fixed.output


def test_one_missing_setting_keeps_the_given_one() -> None:
    result = _job_script("--cluster", "pbs", "--cores", "4")
    assert result.exit_code == 1
    assert "memory per job must be set for --cluster pbs. Give it as options:" in result.output
    snippet, _, commands = _fix(result.output)
    assert snippet == "  cores: 4\n  memory: 24GB"
    assert commands[0] == ["cluster", "job-script", "--cluster", "pbs", "--cores", "4",
                           "--memory", "24GB"]
    assert _invoke(*commands[0]).exit_code == 0


def test_missing_settings_with_a_profile_name_it(tmp_path: Path) -> None:
    profile = profile_file(tmp_path, queue="short", cores=2)
    result = _job_script("--cluster", "lsf", "--profile", str(profile))
    assert result.exit_code == 1
    assert result.output.startswith(f"skysieve: error: {profile}: memory per job must be set "
                                    "for --cluster lsf. Add to the profile:\n  memory: 24GB\n")
    _, _, commands = _fix(result.output)
    assert commands == [["cluster", "job-script", "--cluster", "lsf", "--profile", str(profile),
                         "--memory", "24GB"]]
    fixed = _invoke(*commands[0])
    assert fixed.exit_code == 0, fixed.output
    assert "#BSUB -q short" in fixed.output.splitlines()


@pytest.mark.parametrize("args, match", [
    (["--cores", "0", "--memory", "1GB"], "cores must be at least 1"),
    (["--cores", "2", "--memory", "lots"], "not an amount of memory"),
    (["--cores", "2", "--memory", "1GB", "--walltime", "soon"], r"is not [D-]HH:MM[:SS]"),
    (["--cores", "2", "--memory", "1GB", "--processes", "3"], "processes must be between 1 and"),
])
def test_bad_option_values_are_one_line_errors(args: list[str], match: str) -> None:
    result = _job_script(*args)
    assert result.exit_code == 1
    assert result.output.startswith("skysieve: error: ") and match in result.output
    assert "Traceback" not in result.output


def test_missing_settings_library_error_keeps_its_fields(tmp_path: Path) -> None:
    with pytest.raises(jobqueue.MissingSettings) as info:
        jobqueue.settings("slurm", cores=2)
    assert isinstance(info.value, ClusterError)
    assert (info.value.kind, info.value.missing) == ("slurm", ("memory",))
    assert info.value.fix == {"cores": 2, "memory": "24GB"}
    import pickle

    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.missing == ("memory",)


def test_submit_with_missing_settings_shows_the_profile_lines(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    profile = profile_file(tmp_path, queue="short")
    result = _invoke("submit", "--profile", str(profile), "--dry-run", "--", "info", "a b.zarr")
    assert result.exit_code == 1
    assert result.output.startswith(f"skysieve: error: {profile}: cores and memory per job must "
                                    "be set for --cluster slurm. Add to the profile:\n"
                                    "  cores: 8\n  memory: 24GB\n")
    assert (f"then run again: skysieve submit --profile {shlex.quote(str(profile))} --cluster "
            "slurm --dry-run -- info 'a b.zarr'") in result.output
