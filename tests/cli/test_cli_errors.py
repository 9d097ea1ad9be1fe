"""one_line_errors: skysieve's own errors and OSError become one line and exit 1; anything else
is a bug and keeps its traceback."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from cluster import ClusterError
from pipeline.cli.base import one_line_errors
from pipeline.errors import ConfigError, PlanError, SkysieveError, StoreError
from workers.checkpoint import CheckpointError


def _command(exc: BaseException) -> click.Command:
    @click.command()
    @one_line_errors()
    def boom() -> None:
        raise exc

    return boom


@pytest.mark.parametrize("exc", [
    SkysieveError("base error"), StoreError("bad store"), PlanError("sources must be positive"),
    ConfigError("bad config"), ClusterError("bad profile"), CheckpointError("bad checkpoint"),
    FileNotFoundError(2, "No such file or directory"), PermissionError("read-only"),
])
def test_project_errors_and_oserror_are_one_line(exc: BaseException) -> None:
    result = CliRunner().invoke(_command(exc), [])
    assert result.exit_code == 1
    assert result.output == f"skysieve: error: {exc}\n"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), ValueError("plain bug"),
                                 KeyError("missing"), TypeError("wrong type")])
def test_other_exceptions_propagate(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as info:
        CliRunner().invoke(_command(exc), [], catch_exceptions=False)
    assert info.value is exc
    result = CliRunner().invoke(_command(exc), [])
    assert result.exit_code == 1 and result.exception is exc
    assert "skysieve: error:" not in result.output


def test_no_extra_exception_types_can_be_added() -> None:
    with pytest.raises(TypeError):
        one_line_errors(ValueError)  # type: ignore[call-arg]


def test_a_bug_prints_its_traceback_in_a_real_process() -> None:
    code = """
import click
from pipeline.cli.base import one_line_errors

@click.command()
@one_line_errors()
def boom():
    1 / 0

@click.command()
@one_line_errors()
def user():
    from pipeline.errors import StoreError
    raise StoreError("store.zarr: not a cutout store")

import sys
(boom if sys.argv[1] == "bug" else user)(sys.argv[2:])
"""
    bug = subprocess.run([sys.executable, "-c", code, "bug"], capture_output=True, text=True,
                         timeout=120)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr
    assert "ZeroDivisionError: division by zero" in bug.stderr
    user = subprocess.run([sys.executable, "-c", code, "user"], capture_output=True, text=True,
                          timeout=120)
    assert user.returncode == 1
    assert user.stderr == "skysieve: error: store.zarr: not a cutout store\n"
